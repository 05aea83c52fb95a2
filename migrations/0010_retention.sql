-- Retention: finished runs older than a cutoff are deleted with everything that hangs off them
-- (steps, their event log, recorded LLM answers, sandbox outbox rows), so the tables the engine
-- works on do not grow without end. A batch goes as a whole, once all its runs are past the
-- cutoff. Outside events past the cutoff go too (a wait only looks at events since its run began).
-- The send ledger and the suppression list are kept: they guard against duplicate sends and
-- sends to people who opted out, whatever the age of the run.

CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL AND batch_id IS NULL;
CREATE INDEX events_received ON events (received_at);
CREATE INDEX outbox_by_run ON outbox (run_id) WHERE run_id IS NOT NULL;  -- outbox_run leads with the tenant

-- Deletes up to about p_limit runs finished before p_before (and their batches when whole);
-- returns how many runs went. Safe to run from many processes at once (SKIP LOCKED).
CREATE FUNCTION flowd_prune(p_before timestamptz, p_limit integer) RETURNS integer
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
    DELETE FROM runs WHERE id = ANY (v_runs);  -- steps, maps, llm records, cancel_on cascade
    IF v_batches IS NOT NULL THEN
        DELETE FROM batches WHERE id = ANY (v_batches);
    END IF;
    RETURN cardinality(v_runs);
END $$;
