-- sql/compat.sql: What only the previous release's processes call during a rolling upgrade: old
-- signatures kept as thin wrappers and the previous worker answer. A numbered migration drops each
-- one a release after its replacement shipped (migrations/README.md).
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- The previous release's claim (flowd_claimed rows), for its workers during a rolling upgrade.
CREATE OR REPLACE FUNCTION flowd_claim(p_owner text, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_claimed
LANGUAGE sql AS $$
    SELECT o.* FROM flowd_claim_work(p_owner, p_want, p_lease_ms) c, flowd_claimed_of(c) o
$$;

-- The previous release's worker round trip (flowd_claimed rows), for its workers during a rolling
-- upgrade.
CREATE OR REPLACE FUNCTION flowd_cycle(p_owner text, p_results jsonb, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_claimed
LANGUAGE sql AS $$
    SELECT o.* FROM flowd_work(p_owner, p_results, p_want, p_lease_ms) c, flowd_claimed_of(c) o
$$;

-- The previous release's worker round trip and claim (flowd_work_item rows; they never ask for
-- pure steps), for its workers during a rolling upgrade.
CREATE OR REPLACE FUNCTION flowd_work(p_owner text, p_results jsonb, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_work_item
LANGUAGE sql AS $$
    SELECT * FROM flowd_work(p_owner, p_results, p_want, p_lease_ms, NULL::text[])
$$;

CREATE OR REPLACE FUNCTION flowd_claim_work(p_owner text, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_work_item
LANGUAGE sql AS $$
    SELECT * FROM flowd_claim_work(p_owner, p_want, p_lease_ms, NULL::text[])
$$;

-- The previous version's renewal, for its processes during a rolling upgrade: it renews their
-- worker's lease too, so that the reaper leaves their steps alone.
CREATE OR REPLACE FUNCTION flowd_heartbeat(p_owner text, p_lease_ms integer, p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_worker_renew(p_owner, p_lease_ms);
    RETURN (SELECT count(*) FROM steps
             WHERE id = ANY (p_ids) AND state = 'running' AND lease_owner = p_owner);
END $$;

-- The previous signature of flowd_start_run (0027), starting the run now.
CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                           p_input jsonb, p_priority integer,
                                           p_idempotency_key text, p_checked_version integer,
                                           OUT created boolean, OUT run jsonb)
LANGUAGE sql AS $$
    SELECT s.created, s.run
      FROM flowd_start_run(p_tenant, p_workflow, p_version, p_input, p_priority,
                           p_idempotency_key, p_checked_version, NULL::timestamptz,
                           NULL::bigint, NULL::jsonb) s
$$;


-- The previous signature of flowd_create_batch (0027), starting the runs now.
CREATE OR REPLACE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                              p_inputs jsonb, p_idempotency_key text,
                                              p_checked_version integer,
                                              OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE sql AS $$
    SELECT b.created, b.id, b.total
      FROM flowd_create_batch(p_tenant, p_workflow, p_version, p_inputs, p_idempotency_key,
                              p_checked_version, NULL::timestamptz, NULL::bigint) b
$$;


-- The previous signature of flowd_start_run, for callers that check nothing.
CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                           p_input jsonb, p_priority integer,
                                           p_idempotency_key text,
                                           OUT created boolean, OUT run jsonb)
LANGUAGE sql AS $$
    SELECT s.created, s.run
      FROM flowd_start_run(p_tenant, p_workflow, p_version, p_input, p_priority,
                           p_idempotency_key, NULL::integer) s
$$;

-- The previous signature of flowd_create_batch, for callers that check nothing.
CREATE OR REPLACE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                              p_inputs jsonb, p_idempotency_key text,
                                              OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE sql AS $$
    SELECT b.created, b.id, b.total
      FROM flowd_create_batch(p_tenant, p_workflow, p_version, p_inputs, p_idempotency_key,
                              NULL::integer) b
$$;

-- The previous signature of flowd_create_tenant: creates a tenant under the caller's tenant.
-- 23505 (409) when the name is taken.
CREATE OR REPLACE FUNCTION flowd_create_tenant(p_parent bigint, p_name text, p_max_running integer)
RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO tenants (name, max_running, parent_id) VALUES (p_name, p_max_running, p_parent)
    RETURNING jsonb_build_object('id', id, 'name', name, 'max_running', max_running,
                                 'created_at', flowd_ms(created_at))
$$;

-- The previous signature of the worker's renewal (attempts to hand back named without the claim's
-- time), for workers of the previous release.
CREATE OR REPLACE FUNCTION flowd_worker_leases(p_owner text, p_lease_ms integer, p_ids bigint[],
                                    p_release bigint[], p_release_attempts integer[],
                                    p_fresh_pid integer)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_conn_start timestamptz;
    v_unseen     bigint[] := '{}';
BEGIN
    PERFORM flowd_worker_renew(p_owner, p_lease_ms);
    IF p_fresh_pid = pg_backend_pid() THEN
        -- a claim set lease_expires_at to its now() plus the worker's lease, and nothing moves it
        SELECT a.backend_start INTO v_conn_start FROM pg_stat_activity a
         WHERE a.pid = pg_backend_pid();
        v_unseen := ARRAY(
            SELECT s.id FROM steps s
             WHERE s.lease_owner = p_owner AND s.state = 'running' AND s.id <> ALL (p_ids)
               AND s.lease_expires_at - p_lease_ms * interval '1 millisecond' < v_conn_start);
    END IF;
    PERFORM flowd_reap_steps(v_unseen || ARRAY(
        SELECT s.id FROM unnest(p_release, p_release_attempts) AS r(id, attempt)
          JOIN steps s ON s.id = r.id AND s.attempts = r.attempt
         WHERE s.state = 'running' AND s.lease_owner = p_owner));
    RETURN QUERY
    SELECT x.id FROM unnest(p_ids) AS x(id)
     WHERE NOT EXISTS (SELECT 1 FROM steps s
                        WHERE s.id = x.id AND s.state = 'running' AND s.lease_owner = p_owner);
END $$;

-- A claim as the previous release's workers read it (flowd_claimed).
CREATE OR REPLACE FUNCTION flowd_claimed_of(c flowd_work_item) RETURNS flowd_claimed
LANGUAGE sql STABLE AS $$
    SELECT c.id, c.run_id, c.tenant_id, c.key, c.kind, c.attempts, c.ready_at_ms, c.now_ms,
           c.scheduled, w.def->'steps'->c.idx,
           jsonb_build_object('input', c.input,
                              'run', jsonb_build_object('id', c.run_id, 'workflow', c.workflow),
                              'steps', coalesce(c.steps, '{}'))
      FROM workflows w WHERE w.id = c.workflow_id
$$;

-- The previous signature of flowd_runs_page (0036 took the filters as one object).
CREATE OR REPLACE FUNCTION flowd_runs_page(p_tenant bigint, p_workflow text, p_state text, p_batch bigint,
                                           p_cursor bigint, p_limit integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT flowd_runs_page(p_tenant, jsonb_strip_nulls(jsonb_build_object(
               'workflow', p_workflow, 'state', p_state, 'batch', p_batch)), p_cursor, p_limit)
$$;

-- The previous release's recording of llm answers (flowd_llm_record_costs without the costs), for
-- its workers during a rolling upgrade.
CREATE OR REPLACE FUNCTION flowd_llm_record_many(p_rows jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM flowd_llm_record_costs(p_rows);
END $$;
