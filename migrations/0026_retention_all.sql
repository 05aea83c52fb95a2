-- Retention covers every table that grows with traffic. Besides what 0017's flowd_prune deletes:
--   sends               the ledger rows of the runs it deletes: a send key names its run, and a
--                       deleted run is never attempted again, so no later send can collide
--   webhook_deliveries  the dedup keys of provider posts received before the cutoff: providers
--                       retry a post for hours to days, never past a retention worth setting
-- Suppressions stay (an opt-out has no age). worker_leases holds a row per live worker, and
-- rate_buckets one per named limit and tenant: both are bounded by configuration, not traffic.

CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- As in 0017, plus the two tables above.
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
    DELETE FROM webhook_deliveries d USING (
        SELECT tenant_id, provider, dedup_key FROM webhook_deliveries
         WHERE received_at < p_before ORDER BY received_at LIMIT p_limit) old
     WHERE (d.tenant_id, d.provider, d.dedup_key) = (old.tenant_id, old.provider, old.dedup_key);
    IF v_runs IS NULL OR cardinality(v_runs) = 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM run_events WHERE run_id = ANY (v_runs);
    DELETE FROM outbox WHERE run_id = ANY (v_runs);
    DELETE FROM llm_records WHERE run_id = ANY (v_runs);
    DELETE FROM sends WHERE run_id = ANY (v_runs);
    DELETE FROM steps WHERE run_id = ANY (v_runs);  -- maps and their items cascade
    DELETE FROM runs WHERE id = ANY (v_runs);  -- cancel_on rows cascade
    IF v_batches IS NOT NULL THEN
        DELETE FROM batches WHERE id = ANY (v_batches);
    END IF;
    RETURN cardinality(v_runs);
END $$;
