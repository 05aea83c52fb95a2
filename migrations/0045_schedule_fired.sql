-- flowd: after-functions
-- schedule.fired (sql/webhooks.sql, so this file is applied after the function files): written by
-- this trigger in the transaction that fires the schedule, whichever function fires it (a tick's
-- pass, or POST /v1/schedules/{name}/trigger), as 0039's triggers do for runs, steps and sends.
-- Only a fire that made runs raises `fires`; ticks skipped (overlap, duplicates) are no event.
CREATE TRIGGER schedules_webhook AFTER UPDATE OF fires ON schedules
    FOR EACH ROW
    WHEN (NEW.fires > OLD.fires)
    EXECUTE FUNCTION flowd_webhook_schedule_fired();
