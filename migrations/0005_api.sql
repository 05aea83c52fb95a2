-- Entry points of the HTTP API: each route is one call of one of these (tenant first, so a key of
-- one tenant can never reach another tenant's rows).

-- Starts a run of the named workflow (latest version unless one is given). Idempotent with a key.
CREATE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                p_input jsonb, p_priority integer, p_idempotency_key text,
                                OUT created boolean, OUT run jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf  bigint;
    v_run bigint;
BEGIN
    SELECT w.id INTO v_wf FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow || coalesce(' version ' || p_version, '')
            USING ERRCODE = 'P0002';
    END IF;
    SELECT e.run_id, e.created INTO v_run, created
      FROM flowd_enqueue(p_tenant, v_wf, jsonb_build_array(p_input), p_priority,
                         p_idempotency_key, NULL) e;
    run := flowd_run_json(p_tenant, v_run);
END $$;

CREATE FUNCTION flowd_workflow_json(p_tenant bigint, p_name text, p_version integer)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('name', w.name, 'version', w.version,
                              'created_at', flowd_ms(w.created_at), 'definition', w.source)
      FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_name
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1
$$;

CREATE FUNCTION flowd_workflows_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('workflows', coalesce(jsonb_agg(x ORDER BY x->>'name'), '[]'))
      FROM (SELECT jsonb_build_object('name', w.name, 'version', max(w.version),
                                      'versions', count(*),
                                      'updated_at', flowd_ms(max(w.created_at))) AS x
              FROM workflows w
             WHERE w.tenant_id = p_tenant AND w.name NOT LIKE 'inline.%'
             GROUP BY w.name) s
$$;

-- Cancels one run of the tenant: its JSON afterwards; NULL when not visible; 55000 when finished.
CREATE FUNCTION flowd_cancel_run(p_tenant bigint, p_run bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM runs WHERE id = p_run AND tenant_id = p_tenant;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_state NOT IN ('queued', 'running') THEN
        RAISE EXCEPTION 'run % is already %', p_run, v_state USING ERRCODE = '55000';
    END IF;
    PERFORM flowd_cancel_runs(ARRAY[p_run], jsonb_build_object('code', 'cancelled',
                              'message', 'cancelled on request'));
    RETURN flowd_run_json(p_tenant, p_run);
END $$;
