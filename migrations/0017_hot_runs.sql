-- Runs updated in place. While a run is worked its row is written when it starts and when it
-- finishes (for a one-step run, in back-to-back transactions). An update is HOT, and adds no entry
-- to any of the runs' indexes, only when no indexed column changes and the new version fits on the
-- row's page. runs_finished indexed finished_at, so every finish added an entry to each of the
-- runs' indexes, and with pages 80% full most starts found no room and did the same. Measured on
-- one-step runs (bench/run floor's flowd_step, and instruction counts of the server process under
-- callgrind): the two changes below cut the server's work per step by about 8%.
--
-- Retention, which found finished runs through runs_finished, now walks the primary key: runs are
-- numbered in creation order and none finishes before it was created, so the runs that finished
-- before a cutoff lie below the first run created after it.

ALTER TABLE runs SET (fillfactor = 50);  -- pages filled from now on keep room for both updates
DROP INDEX runs_finished;

-- The id of the first run created at or after p_at, or one past the last run: a bisection over
-- the primary key. Ids follow creation closely but not exactly (enqueues that commit together
-- interleave by milliseconds), which only moves a run by so much across the bound.
CREATE FUNCTION flowd_runs_created_bound(p_at timestamptz) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_lo  bigint;  -- every run below was created before p_at
    v_hi  bigint;  -- every run from here on was created at or after p_at
    v_mid bigint;
    v_id  bigint;
    v_at  timestamptz;
BEGIN
    SELECT min(id), max(id) + 1 INTO v_lo, v_hi FROM runs;
    IF v_lo IS NULL THEN
        RETURN 0;
    END IF;
    WHILE v_lo < v_hi LOOP
        v_mid := v_lo + (v_hi - v_lo) / 2;
        SELECT id, created_at INTO v_id, v_at FROM runs WHERE id >= v_mid ORDER BY id LIMIT 1;
        IF v_at < p_at THEN
            v_lo := v_id + 1;
        ELSE
            v_hi := v_mid;
        END IF;
    END LOOP;
    RETURN v_lo;
END $$;

-- As in 0015, but the runs to delete are found below flowd_runs_created_bound(p_before), oldest
-- first, instead of through an index on finished_at.
CREATE OR REPLACE FUNCTION flowd_prune(p_before timestamptz, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_bound   bigint := flowd_runs_created_bound(p_before);
    v_runs    bigint[];
    v_batches bigint[];
BEGIN
    SELECT array_agg(r.id) INTO v_runs FROM (
        SELECT id FROM runs
         WHERE id < v_bound
           AND finished_at < p_before AND batch_id IS NULL
           AND state IN ('succeeded', 'failed', 'cancelled')
         ORDER BY id LIMIT p_limit
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
