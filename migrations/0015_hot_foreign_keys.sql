-- Foreign keys off the hot rows. A step, a run and a recorded LLM answer are only ever written by
-- the engine's own functions, which create a run's steps in the statement that creates the run and
-- read a workflow before they start a run of it (workflows are never deleted). The checks these
-- keys made cost a lookup and a row lock per inserted run, step and LLM record, and PostgreSQL
-- checks a key again on every later update of a row inserted or updated in the same transaction
-- (a dependent readied and claimed in one worker round trip): about half of a big batch's insert
-- time. run_events has gone without one from the start for the same reason. Retention, which
-- relied on the cascade from runs, now deletes steps and LLM records itself.

ALTER TABLE steps DROP CONSTRAINT steps_run_id_fkey;
ALTER TABLE runs DROP CONSTRAINT runs_workflow_id_fkey;
ALTER TABLE llm_records DROP CONSTRAINT llm_records_run_id_fkey;

-- Deletes up to about p_limit runs finished before p_before (and their batches when whole);
-- returns how many runs went. Safe to run from many processes at once (SKIP LOCKED).
CREATE OR REPLACE FUNCTION flowd_prune(p_before timestamptz, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_runs    bigint[];
    v_batches bigint[];
BEGIN
    SELECT array_agg(r.id) INTO v_runs FROM (
        SELECT id FROM runs
         WHERE finished_at < p_before AND batch_id IS NULL
           AND state IN ('succeeded', 'failed', 'cancelled')
         ORDER BY finished_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED) r;

    -- batches whose every run finished before the cutoff
    SELECT array_agg(b.id) INTO v_batches FROM (
        SELECT b.id FROM batches b
         WHERE b.created_at < p_before
           AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.batch_id = b.id
                             AND (r.finished_at IS NULL OR r.finished_at >= p_before))
         ORDER BY b.id LIMIT greatest(1, p_limit / 1000)
           FOR UPDATE SKIP LOCKED) b;
    IF v_batches IS NOT NULL THEN
        v_runs := coalesce(v_runs, '{}') || ARRAY(SELECT r.id FROM runs r
                                                  WHERE r.batch_id = ANY (v_batches));
    END IF;

    DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < p_before
                                     ORDER BY received_at LIMIT p_limit);
    IF v_runs IS NULL OR cardinality(v_runs) = 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM run_events WHERE run_id = ANY (v_runs);
    DELETE FROM outbox WHERE run_id = ANY (v_runs);
    DELETE FROM llm_records WHERE run_id = ANY (v_runs);
    DELETE FROM steps WHERE run_id = ANY (v_runs);  -- maps and their items cascade
    DELETE FROM runs WHERE id = ANY (v_runs);  -- cancel_on rows cascade
    IF v_batches IS NOT NULL THEN
        DELETE FROM batches WHERE id = ANY (v_batches);
    END IF;
    RETURN cardinality(v_runs);
END $$;
