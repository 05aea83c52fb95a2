-- Functions of run metadata (0032): computed when runs are created, filtered by GET /v1/runs,
-- shown in run JSON.

-- A run's metadata from its workflow's "search" ({"name": "{{input.a.b}}"}, checked when the
-- workflow was registered: plain input paths only) and its input; a path the input lacks leaves
-- its name out; NULL when none is present. Values are text, so ?meta.lead=30012 matches a lead
-- id given as a number or as a string.
CREATE OR REPLACE FUNCTION flowd_run_meta(p_search jsonb, p_input jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_object_agg(e.key, v.value)
      FROM jsonb_each_text(p_search) AS e
     CROSS JOIN LATERAL (SELECT flowd_render_key(e.value, p_input, 0) AS value) v
     WHERE v.value IS NOT NULL
$$;

-- As in 0012, storing each run's metadata (flowd_run_meta).
CREATE OR REPLACE FUNCTION flowd_create_runs(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                                             p_priority integer, p_batch bigint, p_parent_step bigint,
                                             p_parent_indexes integer[], p_idempotency_key text)
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_def jsonb;
    v_now timestamptz := flowd_now();
    v_ids bigint[];
BEGIN
    SELECT w.def INTO v_def FROM workflows w WHERE w.id = p_workflow AND w.tenant_id = p_tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow USING ERRCODE = 'P0002';
    END IF;
    WITH sd AS MATERIALIZED (
        SELECT (s->>'idx')::integer AS idx, (s->>'max_attempts')::integer AS max_attempts,
               jsonb_array_length(s->'needs') AS nneeds,
               ARRAY(SELECT jsonb_array_elements_text(s->'dependents')::integer) AS dependents,
               (s->>'delay_ms')::bigint AS delay_ms, s->>'key' AS key, s->>'kind' AS kind,
               s->>'phase' AS phase, s->>'concurrency_key' AS ckey,
               CASE WHEN s->'window' <> 'null'::jsonb THEN s END AS windowed
          FROM jsonb_array_elements(v_def->'steps') AS s),
    ins AS (
        INSERT INTO runs (tenant_id, workflow_id, priority, steps_total, input, batch_id,
                          parent_step_id, parent_index, idempotency_key, created_at, meta)
        SELECT p_tenant, p_workflow, p_priority, jsonb_array_length(v_def->'steps'), i.value,
               p_batch, p_parent_step, p_parent_indexes[i.n], p_idempotency_key, v_now,
               CASE WHEN jsonb_typeof(v_def->'search') = 'object'
                    THEN flowd_run_meta(v_def->'search', i.value) END
          FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS i(value, n)
         ORDER BY i.n
        RETURNING id, input),
    st AS (
        INSERT INTO steps (run_id, tenant_id, idx, priority, max_attempts, nneeds, needs_left,
                           dependents, delay_ms, send_window, state, key, kind, phase, ckey, run_at,
                           ready_at, scheduled)
        SELECT ins.id, p_tenant, sd.idx, p_priority, sd.max_attempts, sd.nneeds, sd.nneeds,
               sd.dependents, sd.delay_ms, w.win,
               CASE WHEN sd.nneeds = 0 THEN 'ready' ELSE 'pending' END,
               sd.key, sd.kind, sd.phase, flowd_render_key(sd.ckey, ins.input, ins.id),
               coalesce(t.at, v_now + sd.delay_ms * interval '1 millisecond'),
               CASE WHEN sd.nneeds = 0 THEN v_now END,
               t.at IS NOT NULL
          FROM ins CROSS JOIN sd
          CROSS JOIN LATERAL (SELECT CASE WHEN sd.windowed IS NOT NULL
                                          THEN flowd_step_window(sd.windowed, ins.input, ins.id)
                                     END AS win) w
          CROSS JOIN LATERAL (SELECT CASE WHEN w.win IS NOT NULL AND sd.nneeds = 0
                                          THEN flowd_window_next(v_now + sd.delay_ms
                                                                 * interval '1 millisecond', w.win)
                                     END AS at) t
         ORDER BY sd.idx, ins.id  -- as 0002 numbered them: a step of every run, then the next
        RETURNING run_id, idx, key, run_at, delay_ms, scheduled, send_window),
    co AS (
        INSERT INTO run_cancel_on (run_id, tenant_id, event, key)
        SELECT ins.id, p_tenant, c->>'event', k.key
          FROM ins CROSS JOIN jsonb_array_elements(coalesce(v_def->'cancel_on', '[]')) AS c
         CROSS JOIN LATERAL (SELECT flowd_render_key(c->>'key', ins.input, ins.id) AS key) k
         WHERE k.key IS NOT NULL
        ON CONFLICT DO NOTHING),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT x.run_id, p_tenant, v_now, x.type, x.step_key, x.data
          FROM (SELECT 0 AS part, st.run_id, st.idx, 'step.scheduled' AS type, st.key AS step_key,
                       jsonb_build_object('run_at', flowd_ms(st.run_at),
                                          'tz', st.send_window->>'tz') AS data
                  FROM st
                 WHERE st.scheduled
                   AND st.run_at > v_now + st.delay_ms * interval '1 millisecond'
                UNION ALL
                SELECT 1, ins.id, 0, 'run.created', NULL, NULL FROM ins) x
         ORDER BY x.part, x.run_id, x.idx)
    SELECT array_agg(ins.id ORDER BY ins.id) INTO v_ids FROM ins;
    IF v_ids IS NULL THEN
        RETURN '{}';
    END IF;
    -- Wake idle workers; see 0002 for why only one of the enqueues committing at once notifies.
    IF pg_try_advisory_xact_lock(hashtext('flowd_notify_ready')) THEN
        PERFORM pg_notify('flowd_ready', '');
    END IF;
    RETURN v_ids;
END $$;

-- As in 0027, with the client's tags (an object of strings, checked by the API, or NULL), kept in
-- the run's metadata under the workflow's own search values, which win on a shared name. The tags
-- are part of the request an idempotency key stands for.
CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                           p_input jsonb, p_priority integer,
                                           p_idempotency_key text, p_checked_version integer,
                                           p_tags jsonb,
                                           OUT created boolean, OUT run jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf      bigint;
    v_version integer;
    v_run     bigint;
    v_digest  text;
    v_prev    text;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        -- without tags the digest is the one 0023 recorded, so keys used before still match
        v_digest := flowd_request_digest(jsonb_build_object(
            'workflow', p_workflow, 'version', p_version, 'input', p_input,
            'priority', coalesce(p_priority, 0))
            || CASE WHEN p_tags IS NOT NULL THEN jsonb_build_object('tags', p_tags)
                    ELSE '{}' END);
        -- the same lock flowd_enqueue takes: same-key callers are serialized
        PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext(p_idempotency_key));
        SELECT r.id, r.idempotency_digest INTO v_run, v_prev FROM runs r
         WHERE r.tenant_id = p_tenant AND r.idempotency_key = p_idempotency_key;
        IF FOUND AND v_prev IS DISTINCT FROM v_digest AND v_prev IS NOT NULL THEN
            RAISE EXCEPTION 'idempotency key already used by run % for a different request', v_run
                USING ERRCODE = 'FL409';
        END IF;
    END IF;
    SELECT w.id, w.version INTO v_wf, v_version FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow || coalesce(' version ' || p_version, '')
            USING ERRCODE = 'P0002';
    END IF;
    IF p_checked_version IS NOT NULL AND v_version <> p_checked_version THEN
        RAISE EXCEPTION 'workflow % changed while the request was checked: send it again',
            p_workflow USING ERRCODE = '40001';
    END IF;
    SELECT e.run_id, e.created INTO v_run, created
      FROM flowd_enqueue(p_tenant, v_wf, jsonb_build_array(p_input), p_priority,
                         p_idempotency_key, NULL) e;
    IF created AND (v_digest IS NOT NULL OR p_tags IS NOT NULL) THEN
        UPDATE runs SET idempotency_digest = v_digest,
                        meta = CASE WHEN p_tags IS NULL THEN meta ELSE p_tags || coalesce(meta, '{}') END
         WHERE id = v_run;
    END IF;
    run := flowd_run_json(p_tenant, v_run);
END $$;

-- The previous signature, for callers without tags.
CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                           p_input jsonb, p_priority integer,
                                           p_idempotency_key text, p_checked_version integer,
                                           OUT created boolean, OUT run jsonb)
LANGUAGE sql AS $$
    SELECT s.created, s.run
      FROM flowd_start_run(p_tenant, p_workflow, p_version, p_input, p_priority,
                           p_idempotency_key, p_checked_version, NULL::jsonb) s
$$;

-- The WHERE clause of GET /v1/runs for the filters present in p_filter (an object the API
-- checked: workflow, version, state, batch, parent, meta, failed_step, created_after,
-- created_before, finished_after, finished_before). Only filters given are in the statement, so
-- each query is planned for what it asks (the metadata GIN index, the recent-runs index) instead
-- of one generic plan with every filter optional. The values stay parameters: the statement
-- reads them from $2 (the filter) and $1 (the tenant).
CREATE OR REPLACE FUNCTION flowd_runs_where(p_filter jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'r.tenant_id = $1'
        || CASE WHEN p_filter ? 'workflow' THEN ' AND w.name = $2->>''workflow''' ELSE '' END
        || CASE WHEN p_filter ? 'version'
                THEN ' AND w.version = ($2->>''version'')::integer' ELSE '' END
        || CASE WHEN p_filter ? 'state' THEN ' AND r.state = $2->>''state''' ELSE '' END
        || CASE WHEN p_filter ? 'batch' THEN ' AND r.batch_id = ($2->>''batch'')::bigint' ELSE '' END
        || CASE WHEN p_filter ? 'parent'
                THEN ' AND r.parent_step_id IN (SELECT ps.id FROM steps ps'
                     ' WHERE ps.run_id = ($2->>''parent'')::bigint AND ps.tenant_id = $1)'
                ELSE '' END
        || CASE WHEN p_filter ? 'meta' THEN ' AND r.meta @> ($2->''meta'')' ELSE '' END
        || CASE WHEN p_filter ? 'failed_step'
                THEN ' AND EXISTS (SELECT 1 FROM steps fs WHERE fs.run_id = r.id'
                     ' AND fs.key = $2->>''failed_step'' AND fs.state = ''failed'')'
                ELSE '' END
        || CASE WHEN p_filter ? 'created_after'
                THEN ' AND r.created_at >= ($2->>''created_after'')::timestamptz' ELSE '' END
        || CASE WHEN p_filter ? 'created_before'
                THEN ' AND r.created_at < ($2->>''created_before'')::timestamptz' ELSE '' END
        || CASE WHEN p_filter ? 'finished_after'
                THEN ' AND r.finished_at >= ($2->>''finished_after'')::timestamptz' ELSE '' END
        || CASE WHEN p_filter ? 'finished_before'
                THEN ' AND r.finished_at < ($2->>''finished_before'')::timestamptz' ELSE '' END
$$;

-- A page of the tenant's runs matching p_filter (flowd_runs_where), newest first, after the
-- cursor (the smallest id of the previous page). Each row carries its metadata, its parent run
-- (a map's item) and a summary of its error.
CREATE OR REPLACE FUNCTION flowd_runs_page(p_tenant bigint, p_filter jsonb, p_cursor bigint,
                                           p_limit integer) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ids bigint[];
BEGIN
    EXECUTE 'SELECT array_agg(x.id ORDER BY x.id DESC) FROM ('
         || 'SELECT r.id FROM runs r JOIN workflows w ON w.id = r.workflow_id WHERE '
         || flowd_runs_where(p_filter) || ' AND ($3::bigint IS NULL OR r.id < $3)'
         || ' ORDER BY r.id DESC LIMIT $4) x'
       INTO v_ids USING p_tenant, p_filter, p_cursor, p_limit + 1;
    RETURN jsonb_build_object(
        'runs', coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'id', r.id, 'workflow', w.name, 'version', w.version, 'state', r.state,
                    'priority', r.priority, 'batch', r.batch_id,
                    'progress', jsonb_build_object(
                        'done', r.steps_done, 'total', r.steps_total,
                        'percent', CASE WHEN r.steps_total = 0 THEN 100
                                        ELSE floor(100.0 * r.steps_done / r.steps_total)::integer END),
                    'meta', coalesce(r.meta, '{}'),
                    'parent', (SELECT ps.run_id FROM steps ps WHERE ps.id = r.parent_step_id),
                    'error', CASE WHEN r.error IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
                                 'code', r.error->'code', 'step', r.error->'step',
                                 'message', left(r.error->>'message', 300))) END,
                    'created_at', flowd_ms(r.created_at), 'started_at', flowd_ms(r.started_at),
                    'finished_at', flowd_ms(r.finished_at)) ORDER BY r.id DESC)
                  FROM runs r JOIN workflows w ON w.id = r.workflow_id
                 WHERE r.id = ANY (v_ids[1:p_limit])), '[]'),
        'next_cursor', CASE WHEN cardinality(v_ids) > p_limit THEN v_ids[p_limit]::text END);
END $$;

-- How many of the tenant's runs matching p_filter are in each state, counting the newest
-- p_cap + 1 at most (a busy tenant's totals would cost a scan of all its runs on every refresh
-- of a console): 'capped' says the counts stopped there.
CREATE OR REPLACE FUNCTION flowd_runs_counts(p_tenant bigint, p_filter jsonb, p_cap integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb;
BEGIN
    EXECUTE 'SELECT jsonb_build_object('
         || '''queued'', count(*) FILTER (WHERE x.state = ''queued''),'
         || '''running'', count(*) FILTER (WHERE x.state = ''running''),'
         || '''succeeded'', count(*) FILTER (WHERE x.state = ''succeeded''),'
         || '''failed'', count(*) FILTER (WHERE x.state = ''failed''),'
         || '''cancelled'', count(*) FILTER (WHERE x.state = ''cancelled''),'
         || '''capped'', count(*) > $3)'
         || ' FROM (SELECT r.state FROM runs r JOIN workflows w ON w.id = r.workflow_id WHERE '
         || flowd_runs_where(p_filter) || ' ORDER BY r.id DESC LIMIT $3 + 1) x'
       INTO v USING p_tenant, p_filter, p_cap;
    RETURN v;
END $$;

-- As in 0024, with the run's metadata and its parent run (a map's item).
CREATE OR REPLACE FUNCTION flowd_run_json(p_tenant bigint, p_run bigint) RETURNS jsonb
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
        'output', CASE WHEN r.state = 'succeeded' THEN flowd_run_output(r.id) END,
        'error', r.error,
        'meta', coalesce(r.meta, '{}'),
        'parent', (SELECT ps.run_id FROM steps ps WHERE ps.id = r.parent_step_id),
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
                     'interruptions', s.interruptions,
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
