-- A run's routine transitions are read from the rows they change instead of being logged as rows of
-- run_events: a one-step run wrote four event rows (run.started, step.started, step.succeeded,
-- run.succeeded) besides its step and run updates, and the rows with their index were about a sixth
-- of the server's instructions per step (bench/run instructions).
--
-- Each such transition takes its position in the log from run_events' own sequence, so logged and
-- derived events share one order, and a cursor (?after, Last-Event-ID) means what it meant:
--   steps.start_seq, start_attempt  the latest attempt's step.started (at started_at)
--   steps.finish_seq                step.succeeded / step.skipped of an outcome a worker reported
--                                   (at finished_at; a skip's data is its output)
--   runs.start_seq, finish_seq      run.started (at started_at), run.succeeded (at finished_at)
-- A position is NULL where the log holds the event as a row (written by an older release, or a
-- transition that is logged, such as a wait's success or a skip that propagated). A step claimed
-- again moves its previous start into run_events under the same position before its row forgets
-- it. None of these columns is indexed: the updates that set them stay HOT.
ALTER TABLE steps ADD COLUMN start_seq bigint, ADD COLUMN start_attempt integer,
                  ADD COLUMN finish_seq bigint;
ALTER TABLE runs ADD COLUMN start_seq bigint, ADD COLUMN finish_seq bigint;

-- The whole log of every run, logged and derived, one row per event: what readers read
-- (flowd_run_events_json) instead of run_events. A run's steps and the run are each read once.
CREATE VIEW run_log AS
SELECT e.id, e.run_id, e.tenant_id, e.at, e.type, e.step_key, e.data
  FROM run_events e
UNION ALL
SELECT d.id, s.run_id, s.tenant_id, d.at, d.type, s.key, d.data
  FROM steps s CROSS JOIN LATERAL (VALUES
       (s.start_seq, s.started_at, 'step.started', jsonb_build_object('attempt', s.start_attempt)),
       (s.finish_seq, s.finished_at, 'step.' || s.state,
        CASE WHEN s.state = 'skipped' THEN s.output END)) AS d(id, at, type, data)
 WHERE d.id IS NOT NULL
UNION ALL
SELECT d.id, r.id, r.tenant_id, d.at, d.type, NULL::text, NULL::jsonb
  FROM runs r CROSS JOIN LATERAL (VALUES
       (r.start_seq, r.started_at, 'run.started'),
       (r.finish_seq, r.finished_at, 'run.succeeded')) AS d(id, at, type)
 WHERE d.id IS NOT NULL;
