-- flowd: after-functions
-- The outbox's writers (their functions are in sql/webhooks.sql, so this file is applied after the
-- function files): messages are written by these triggers in the transaction that makes the
-- change they report, whichever function made it (finishing, failing or cancelling runs, failing
-- steps, provider webhooks updating a send's delivery), so no committed change is missed and none
-- is reported by a rolled-back one. The WHEN clauses keep every other update free of any call.
CREATE TRIGGER runs_webhook AFTER UPDATE OF state ON runs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION flowd_webhook_run_ended();

CREATE TRIGGER steps_webhook AFTER UPDATE OF state ON steps
    FOR EACH ROW
    WHEN (NEW.state = 'failed' AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION flowd_webhook_step_failed();

CREATE TRIGGER sends_webhook AFTER UPDATE OF delivery ON sends
    FOR EACH ROW
    WHEN (NEW.delivery IN ('delivered', 'bounced') AND OLD.delivery IS DISTINCT FROM NEW.delivery)
    EXECUTE FUNCTION flowd_webhook_send_outcome();
