-- flowd: after-functions
-- What the step path writes, cut back to what 0035 and 0039 need (PostgreSQL instructions per
-- one-step run, bench/run instructions: 592,900 before this file).
--
-- runs_active keyed the runs' state, so starting a run (queued -> running) and finishing it were
-- both non-HOT updates, each adding an entry to every index of runs. Keyed by id and limited to
-- unfinished runs (every finished run has finished_at, and a retried run gets it back to NULL),
-- it still lets /metrics read the unfinished runs only, while starting a run changes no indexed
-- column and stays HOT; only finishing it leaves the index.
DROP INDEX runs_active;
CREATE INDEX runs_active ON runs (id) WHERE finished_at IS NULL;

-- The run webhook trigger fired once per run finishing, and each call asked twice whether anyone
-- listens: now once per statement, reading the statement's transition tables (sql/webhooks.sql).
DROP TRIGGER runs_webhook ON runs;
CREATE TRIGGER runs_webhook AFTER UPDATE ON runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION flowd_webhook_run_ended();
