-- sql/retention.sql: Deleting finished runs past their retention.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Deletes up to about p_limit runs finished before p_before (and their batches when whole), and
-- up to p_limit outbound webhook messages created before it whose deliveries all ended (with their
-- deliveries and attempts); returns the larger of the two counts, so a caller goes on at once
-- while either has a backlog. Safe to run from many processes at once (SKIP LOCKED). The runs to
-- delete are found below flowd_runs_created_bound(p_before), oldest first, instead of through an
-- index on finished_at; the tables without a run (webhook dedup keys, the answer cache) are pruned
-- too.
CREATE OR REPLACE FUNCTION flowd_prune(p_before timestamptz, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_bound   bigint := flowd_runs_created_bound(p_before);
    v_runs    bigint[];
    v_batches bigint[];
    v_msgs    integer;
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
    DELETE FROM webhook_deliveries d USING (
        SELECT tenant_id, provider, dedup_key FROM webhook_deliveries
         WHERE received_at < p_before ORDER BY received_at LIMIT p_limit) old
     WHERE (d.tenant_id, d.provider, d.dedup_key) = (old.tenant_id, old.provider, old.dedup_key);
    -- a message still pending for some endpoint (a paused one, say) stays until it is delivered
    -- or given up; one whose endpoints were all deleted has no delivery left and goes
    DELETE FROM webhook_messages m WHERE m.id IN (
        SELECT x.id FROM webhook_messages x
         WHERE x.created_at < p_before
           AND NOT EXISTS (SELECT 1 FROM webhook_sends s
                            WHERE s.message_id = x.id AND s.state = 'pending')
         ORDER BY x.created_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_msgs = ROW_COUNT;
    IF v_runs IS NULL OR cardinality(v_runs) = 0 THEN
        RETURN v_msgs;
    END IF;
    -- run_search and step_inputs have no foreign key (0054): their rows go here, with those of
    -- the runs that map steps started (deleted below through the cascade from their parent step)
    WITH RECURSIVE tree(id) AS (
        SELECT unnest(v_runs)
        UNION
        SELECT r.id FROM tree t JOIN steps s ON s.run_id = t.id AND s.kind = 'map'
          JOIN runs r ON r.parent_step_id = s.id),
    si AS (DELETE FROM step_inputs
            WHERE step_id IN (SELECT s.id FROM steps s WHERE s.run_id IN (SELECT id FROM tree)))
    DELETE FROM run_search WHERE run_id IN (SELECT id FROM tree);
    DELETE FROM run_events WHERE run_id = ANY (v_runs);
    DELETE FROM outbox WHERE run_id = ANY (v_runs);
    DELETE FROM llm_records WHERE run_id = ANY (v_runs);
    DELETE FROM sends WHERE run_id = ANY (v_runs);
    DELETE FROM ckey_queue WHERE run_id = ANY (v_runs);
    DELETE FROM steps WHERE run_id = ANY (v_runs);  -- maps and their items cascade
    DELETE FROM runs WHERE id = ANY (v_runs);  -- cancel_on rows cascade
    IF v_batches IS NOT NULL THEN
        DELETE FROM webhook_batches_done WHERE batch_id = ANY (v_batches);
        DELETE FROM batches WHERE id = ANY (v_batches);  -- their callbacks cascade
    END IF;
    RETURN greatest(cardinality(v_runs), v_msgs);
END $$;

-- The id of the first run created at or after p_at, or one past the last run: a bisection over
-- the primary key. Ids follow creation closely but not exactly (enqueues that commit together
-- interleave by milliseconds), which only moves a run by so much across the bound.
CREATE OR REPLACE FUNCTION flowd_runs_created_bound(p_at timestamptz) RETURNS bigint
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
