-- Entry points of the HTTP API, part two: batches, run listings, the run event log, tenants and keys.
-- As in 0005, the caller's tenant comes first and anything it cannot see reads as NULL (404).

-- A batch is many runs of one workflow version created in one request and one transaction.
CREATE TABLE batches (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants(id),
    workflow_id     bigint NOT NULL REFERENCES workflows(id),
    total           integer NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT flowd_now()
);
CREATE UNIQUE INDEX batches_idempotency ON batches (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Result exports and filtered listings walk a batch's runs in id order, page by page; with the
-- id in the index each page is a range scan instead of a sort of the whole batch.
DROP INDEX runs_batch;
CREATE INDEX runs_batch ON runs (batch_id, id) WHERE batch_id IS NOT NULL;

-- The tenant whose admin keys created this one: those keys may manage its keys too.
ALTER TABLE tenants ADD COLUMN parent_id bigint REFERENCES tenants(id);

-- Creates the batch and all its runs; with a key already used by the tenant, returns that batch.
CREATE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                   p_inputs jsonb, p_idempotency_key text,
                                   OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf bigint;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        -- serialize same-key callers so that exactly one creates the batch
        PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext('batch:' || p_idempotency_key));
        SELECT b.id, b.total INTO id, total FROM batches b
         WHERE b.tenant_id = p_tenant AND b.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            created := false;
            RETURN;
        END IF;
    END IF;
    SELECT w.id INTO v_wf FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow || coalesce(' version ' || p_version, '')
            USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO batches (tenant_id, workflow_id, total, idempotency_key)
    VALUES (p_tenant, v_wf, jsonb_array_length(p_inputs), p_idempotency_key)
    RETURNING batches.id, batches.total INTO id, total;
    PERFORM flowd_create_runs(p_tenant, v_wf, p_inputs, 0, id, NULL, NULL, NULL);
    created := true;
END $$;

-- The batch with its runs counted by state; NULL when the tenant cannot see it.
CREATE FUNCTION flowd_batch_json(p_tenant bigint, p_batch bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', b.id, 'workflow', w.name, 'version', w.version,
        'state', CASE WHEN c.queued + c.running > 0 THEN 'running'
                      WHEN c.succeeded = b.total THEN 'succeeded'
                      ELSE 'failed' END,
        'total', b.total, 'queued', c.queued, 'running', c.running, 'succeeded', c.succeeded,
        'failed', c.failed, 'cancelled', c.cancelled,
        'done', b.total - c.queued - c.running,
        'percent', CASE WHEN b.total = 0 THEN 100
                        ELSE floor(100.0 * (b.total - c.queued - c.running) / b.total)::integer END,
        'idempotency_key', b.idempotency_key,
        'created_at', flowd_ms(b.created_at))
      FROM batches b
      JOIN workflows w ON w.id = b.workflow_id
     CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.state = 'queued') AS queued,
               count(*) FILTER (WHERE r.state = 'running') AS running,
               count(*) FILTER (WHERE r.state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE r.state = 'failed') AS failed,
               count(*) FILTER (WHERE r.state = 'cancelled') AS cancelled
          FROM runs r WHERE r.batch_id = b.id AND r.tenant_id = p_tenant) c
     WHERE b.id = p_batch AND b.tenant_id = p_tenant
$$;

-- One page of a batch's results in run order, after run id p_after. Values are JSON text.
CREATE FUNCTION flowd_batch_results(p_tenant bigint, p_batch bigint, p_after bigint,
                                    p_limit integer)
RETURNS TABLE (id bigint, state text, input text, output text, error text)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.state, r.input::text, r.output::text, r.error::text
      FROM runs r
     WHERE r.batch_id = p_batch AND r.tenant_id = p_tenant AND r.id > p_after
     ORDER BY r.id
     LIMIT p_limit
$$;

-- The tenant's runs, newest first, after the cursor (a run id) with optional filters:
-- {"runs": [...], "next_cursor": "<id>" | null}.
CREATE FUNCTION flowd_runs_page(p_tenant bigint, p_workflow text, p_state text, p_batch bigint,
                                p_cursor bigint, p_limit integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT r.*, w.name AS wf_name, w.version AS wf_version
          FROM runs r JOIN workflows w ON w.id = r.workflow_id
         WHERE r.tenant_id = p_tenant
           AND (p_cursor IS NULL OR r.id < p_cursor)
           AND (p_workflow IS NULL OR w.name = p_workflow)
           AND (p_state IS NULL OR r.state = p_state)
           AND (p_batch IS NULL OR r.batch_id = p_batch)
         ORDER BY r.id DESC
         LIMIT p_limit + 1),
    shown AS (SELECT * FROM page ORDER BY id DESC LIMIT p_limit)
    SELECT jsonb_build_object(
        'runs', coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'id', s.id, 'workflow', s.wf_name, 'version', s.wf_version, 'state', s.state,
                    'priority', s.priority, 'batch', s.batch_id,
                    'progress', jsonb_build_object(
                        'done', s.steps_done, 'total', s.steps_total,
                        'percent', CASE WHEN s.steps_total = 0 THEN 100
                                        ELSE floor(100.0 * s.steps_done / s.steps_total)::integer END),
                    'created_at', flowd_ms(s.created_at), 'started_at', flowd_ms(s.started_at),
                    'finished_at', flowd_ms(s.finished_at)) ORDER BY s.id DESC)
                  FROM shown s), '[]'),
        'next_cursor', CASE WHEN (SELECT count(*) FROM page) > p_limit
                            THEN (SELECT min(id) FROM shown)::text END)
$$;

-- The run's event log after sequence p_after (at most p_limit events) and whether the run has
-- finished, read in one snapshot: a stream that saw "finished" with no events left is complete.
-- NULL when the tenant cannot see the run.
CREATE FUNCTION flowd_run_events_json(p_tenant bigint, p_run bigint, p_after bigint,
                                      p_limit integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'finished', r.state IN ('succeeded', 'failed', 'cancelled'),
        'events', coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'seq', e.id, 'at', flowd_ms(e.at), 'type', e.type, 'step', e.step_key,
                        'data', e.data) ORDER BY e.id)
                      FROM (SELECT * FROM run_events x
                             WHERE x.run_id = r.id AND x.id > p_after
                             ORDER BY x.id LIMIT p_limit) e), '[]'))
      FROM runs r
     WHERE r.id = p_run AND r.tenant_id = p_tenant
$$;

-- Creates a tenant under the caller's tenant. 23505 (409) when the name is taken.
CREATE FUNCTION flowd_create_tenant(p_parent bigint, p_name text, p_max_running integer)
RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO tenants (name, max_running, parent_id) VALUES (p_name, p_max_running, p_parent)
    RETURNING jsonb_build_object('id', id, 'name', name, 'max_running', max_running,
                                 'created_at', flowd_ms(created_at))
$$;

-- The tenants whose keys p_tenant's admin keys manage: itself and the tenants it created.
CREATE FUNCTION flowd_managed_tenant(p_tenant bigint, p_id bigint, p_name text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT t.id FROM tenants t
     WHERE (t.id = p_id OR (p_id IS NULL AND t.name = p_name))
       AND (t.id = p_tenant OR t.parent_id = p_tenant)
$$;

-- Stores a new key (given in clear, stored hashed) for a managed tenant: NULL when the target
-- tenant is not visible to the caller.
CREATE FUNCTION flowd_create_key(p_tenant bigint, p_target_id bigint, p_target_name text,
                                 p_role text, p_key text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_target bigint := p_tenant;
    v_out    jsonb;
BEGIN
    IF p_target_id IS NOT NULL OR p_target_name IS NOT NULL THEN
        v_target := flowd_managed_tenant(p_tenant, p_target_id, p_target_name);
        IF v_target IS NULL THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO api_keys (tenant_id, key_hash, prefix, role)
    VALUES (v_target, sha256(convert_to(p_key, 'UTF8')), left(p_key, 8), p_role)
    RETURNING jsonb_build_object('id', api_keys.id, 'key', p_key, 'prefix', prefix,
                                 'tenant', (SELECT t.name FROM tenants t WHERE t.id = v_target),
                                 'tenant_id', v_target, 'role', role,
                                 'created_at', flowd_ms(created_at))
      INTO v_out;
    RETURN v_out;
END $$;

-- Revokes a key of a managed tenant: false when the caller cannot see it. Revoking twice is fine.
CREATE FUNCTION flowd_revoke_key(p_tenant bigint, p_key bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH k AS (
        UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
         WHERE k.id = p_key
           AND k.tenant_id IN (SELECT t.id FROM tenants t
                                WHERE t.id = p_tenant OR t.parent_id = p_tenant)
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM k)
$$;
