-- Enqueue in one statement, and run JSON without re-parsing its timestamp helper.
--
-- flowd_create_runs: same semantics as flowd_create_runs in 0002 (see there for the why of
-- each part); what changed is how PostgreSQL gets there:
-- - The steps are fed from the runs INSERT's RETURNING instead of re-reading the new runs by id
--   (r.id = ANY (v_ids)): no table is looked up, so the plan does not depend on the parameters and
--   PL/pgSQL's cached generic plan is as good for one input as for 10,000 (0002's statements were
--   planned again on every call, ~0.5 ms of a single enqueue, and their generic plans were bad for
--   big batches).
-- - The step definitions are decoded from the workflow's JSON once per call (sd), not once per run.
-- - The event log rows of the call go in with one INSERT, in 0002's order: the step.scheduled rows
--   (by run, then step), then the run.created rows (by run).
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
                          parent_step_id, parent_index, idempotency_key, created_at)
        SELECT p_tenant, p_workflow, p_priority, jsonb_array_length(v_def->'steps'), i.value,
               p_batch, p_parent_step, p_parent_indexes[i.n], p_idempotency_key, v_now
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

-- Timestamps in the JSON the API answers (a run's JSON has 3 + 3 per step). Declared IMMUTABLE in
-- 0003, flowd_ms could not be inlined (to_char is STABLE), so every call site ran it as a SQL
-- function, parsed and planned again on every execution: half of flowd_run_json's time, which
-- every POST /v1/runs pays. As STABLE it is inlined into the caller's cached plan.
CREATE OR REPLACE FUNCTION flowd_ms(t timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;
