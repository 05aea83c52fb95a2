-- Reading runs back, and the first tenant. The JSON shapes built here are what `flowd status`
-- prints and what the HTTP API returns, so both read one definition.

CREATE FUNCTION flowd_ms(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- The run as a client sees it; NULL when the tenant cannot see it. PL/pgSQL rather than SQL so
-- that its plan is cached: an SQL function with a FROM clause is planned again on every call.
CREATE FUNCTION flowd_run_json(p_tenant bigint, p_run bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
        'id', r.id,
        'workflow', w.name,
        'version', w.version,
        'state', r.state,
        'priority', r.priority,
        'batch', r.batch_id,
        'progress', jsonb_build_object(
            'done', r.steps_done, 'total', r.steps_total,
            'percent', CASE WHEN r.steps_total = 0 THEN 100
                            ELSE floor(100.0 * r.steps_done / r.steps_total)::integer END),
        'phase', st.phase,
        'current_steps', st.current,
        'input', r.input,
        'output', r.output,
        'error', r.error,
        'created_at', flowd_ms(r.created_at),
        'started_at', flowd_ms(r.started_at),
        'finished_at', flowd_ms(r.finished_at),
        'steps', st.list)
      FROM runs r JOIN workflows w ON w.id = r.workflow_id
      -- one pass over the run's steps for the list, the steps running now and the current phase
      CROSS JOIN LATERAL (
          SELECT jsonb_agg(jsonb_build_object(
                     'key', s.key, 'kind', s.kind, 'state', s.state, 'phase', s.phase,
                     'attempts', s.attempts, 'max_attempts', s.max_attempts,
                     'run_at', CASE WHEN s.state IN ('ready', 'pending') THEN flowd_ms(s.run_at) END,
                     'started_at', flowd_ms(s.started_at),
                     'finished_at', flowd_ms(s.finished_at),
                     'output', s.output, 'error', s.error)
                     -- fan-out progress of a map step: its children by state
                     || CASE WHEN s.kind = 'map' THEN jsonb_build_object('items', (
                            SELECT jsonb_build_object(
                                'total', count(*),
                                'done', count(*) FILTER (WHERE mi.state IN
                                        ('succeeded', 'failed', 'cancelled')),
                                'succeeded', count(*) FILTER (WHERE mi.state = 'succeeded'),
                                'failed', count(*) FILTER (WHERE mi.state IN
                                          ('failed', 'cancelled')),
                                'running', count(*) FILTER (WHERE mi.state = 'running'))
                              FROM map_items mi WHERE mi.step_id = s.id))
                        ELSE '{}'::jsonb END ORDER BY s.idx) AS list,
                 coalesce(jsonb_agg(s.key ORDER BY s.idx) FILTER (WHERE s.state = 'running'),
                          '[]') AS current,
                 (array_agg(s.phase ORDER BY s.idx)
                      FILTER (WHERE s.state IN ('ready', 'running', 'waiting')
                                AND s.phase IS NOT NULL))[1] AS phase
            FROM steps s WHERE s.run_id = r.id) st
     WHERE r.id = p_run AND r.tenant_id = p_tenant);
END $$;

-- Creates the default tenant with an admin key on first start. Returns false when it exists.
CREATE FUNCTION flowd_bootstrap(p_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_tenant bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('flowd_bootstrap'));
    IF EXISTS (SELECT 1 FROM tenants WHERE name = 'default') THEN
        RETURN false;
    END IF;
    INSERT INTO tenants (name) VALUES ('default') RETURNING id INTO v_tenant;
    INSERT INTO api_keys (tenant_id, key_hash, prefix, role)
    VALUES (v_tenant, sha256(convert_to(p_key, 'UTF8')), left(p_key, 8), 'admin');
    RETURN true;
END $$;
