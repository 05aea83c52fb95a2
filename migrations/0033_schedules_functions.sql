-- Functions of schedules and delayed starts (tables in 0032).

-- As in 0012, with three per-input arrays (NULL: none): each run's idempotency key, its start
-- time (its first steps wait until then; earlier than now means now) and the schedule making it.
CREATE FUNCTION flowd_create_runs(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                                  p_priority integer, p_batch bigint, p_parent_step bigint,
                                  p_parent_indexes integer[], p_idempotency_key text,
                                  p_keys text[], p_start_at timestamptz[], p_schedules bigint[])
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
                          parent_step_id, parent_index, idempotency_key, created_at, start_at,
                          schedule_id)
        SELECT p_tenant, p_workflow, p_priority, jsonb_array_length(v_def->'steps'), i.value,
               p_batch, p_parent_step, p_parent_indexes[i.n],
               coalesce(p_keys[i.n], p_idempotency_key), v_now,
               CASE WHEN p_start_at[i.n] > v_now THEN p_start_at[i.n] END, p_schedules[i.n]
          FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS i(value, n)
         ORDER BY i.n
        RETURNING id, input, coalesce(start_at, v_now) AS start),
    st AS (
        INSERT INTO steps (run_id, tenant_id, idx, priority, max_attempts, nneeds, needs_left,
                           dependents, delay_ms, send_window, state, key, kind, phase, ckey, run_at,
                           ready_at, scheduled)
        SELECT ins.id, p_tenant, sd.idx, p_priority, sd.max_attempts, sd.nneeds, sd.nneeds,
               sd.dependents, sd.delay_ms, w.win,
               CASE WHEN sd.nneeds = 0 THEN 'ready' ELSE 'pending' END,
               sd.key, sd.kind, sd.phase, flowd_render_key(sd.ckey, ins.input, ins.id),
               coalesce(t.at, ins.start + sd.delay_ms * interval '1 millisecond'),
               CASE WHEN sd.nneeds = 0 THEN ins.start END,
               t.at IS NOT NULL
          FROM ins CROSS JOIN sd
          CROSS JOIN LATERAL (SELECT CASE WHEN sd.windowed IS NOT NULL
                                          THEN flowd_step_window(sd.windowed, ins.input, ins.id)
                                     END AS win) w
          CROSS JOIN LATERAL (SELECT CASE WHEN w.win IS NOT NULL AND sd.nneeds = 0
                                          THEN flowd_window_next(ins.start + sd.delay_ms
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

-- The previous signature, for callers that need none of the arrays.
CREATE OR REPLACE FUNCTION flowd_create_runs(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                                             p_priority integer, p_batch bigint,
                                             p_parent_step bigint, p_parent_indexes integer[],
                                             p_idempotency_key text)
RETURNS bigint[]
LANGUAGE sql AS $$
    SELECT flowd_create_runs(p_tenant, p_workflow, p_inputs, p_priority, p_batch, p_parent_step,
                             p_parent_indexes, p_idempotency_key, NULL::text[],
                             NULL::timestamptz[], NULL::bigint[])
$$;

-- As in 0030, with the runs' start time (NULL: now).
CREATE FUNCTION flowd_enqueue(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                              p_priority integer, p_idempotency_key text, p_batch bigint,
                              p_start_at timestamptz)
RETURNS TABLE (run_id bigint, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_limit integer;
BEGIN
    IF coalesce(p_priority, 0) <> 0 THEN
        SELECT t.priority_limit INTO v_limit FROM tenants t WHERE t.id = p_tenant;
        IF abs(p_priority) > coalesce(v_limit, 0) THEN
            RAISE EXCEPTION 'priority % is outside this tenant''s range, -% to %',
                            p_priority, v_limit, v_limit
                  USING ERRCODE = '22023', COLUMN = 'priority';
        END IF;
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        IF jsonb_array_length(p_inputs) <> 1 THEN
            RAISE EXCEPTION 'an idempotency key needs exactly one input' USING ERRCODE = 'P0001';
        END IF;
        -- serialize same-key callers so that exactly one creates the run
        PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext(p_idempotency_key));
        SELECT r.id INTO run_id FROM runs r
         WHERE r.tenant_id = p_tenant AND r.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            created := false;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    SELECT x.id, true
      FROM unnest(flowd_create_runs(p_tenant, p_workflow, p_inputs, p_priority, p_batch, NULL, NULL,
                                    p_idempotency_key, NULL,
                                    CASE WHEN p_start_at IS NOT NULL
                                         THEN array_fill(p_start_at,
                                                         ARRAY[jsonb_array_length(p_inputs)])
                                    END, NULL)) AS x(id);
END $$;

CREATE OR REPLACE FUNCTION flowd_enqueue(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                                         p_priority integer, p_idempotency_key text,
                                         p_batch bigint)
RETURNS TABLE (run_id bigint, created boolean)
LANGUAGE sql AS $$
    SELECT e.run_id, e.created
      FROM flowd_enqueue(p_tenant, p_workflow, p_inputs, p_priority, p_idempotency_key, p_batch,
                         NULL::timestamptz) e
$$;

-- When a delayed start begins: at p_start_at, or p_start_in_ms after now on the engine clock.
CREATE FUNCTION flowd_start_time(p_start_at timestamptz, p_start_in_ms bigint)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_start_at, flowd_now() + p_start_in_ms * interval '1 millisecond')
$$;

-- As in 0027, starting the run at p_start_at or p_start_in_ms from now (both NULL: now). The
-- start is not part of the idempotency digest: a retry of `start_in` computes another instant.
CREATE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                p_input jsonb, p_priority integer, p_idempotency_key text,
                                p_checked_version integer, p_start_at timestamptz,
                                p_start_in_ms bigint,
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
        v_digest := flowd_request_digest(jsonb_build_object(
            'workflow', p_workflow, 'version', p_version, 'input', p_input,
            'priority', coalesce(p_priority, 0)));
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
                         p_idempotency_key, NULL, flowd_start_time(p_start_at, p_start_in_ms)) e;
    IF created AND v_digest IS NOT NULL THEN
        UPDATE runs SET idempotency_digest = v_digest WHERE id = v_run;
    END IF;
    run := flowd_run_json(p_tenant, v_run);
END $$;

CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                           p_input jsonb, p_priority integer,
                                           p_idempotency_key text, p_checked_version integer,
                                           OUT created boolean, OUT run jsonb)
LANGUAGE sql AS $$
    SELECT s.created, s.run
      FROM flowd_start_run(p_tenant, p_workflow, p_version, p_input, p_priority,
                           p_idempotency_key, p_checked_version, NULL::timestamptz,
                           NULL::bigint) s
$$;

-- As in 0027, every run of the batch starting at p_start_at or p_start_in_ms from now.
CREATE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                   p_inputs jsonb, p_idempotency_key text,
                                   p_checked_version integer, p_start_at timestamptz,
                                   p_start_in_ms bigint,
                                   OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf      bigint;
    v_version integer;
    v_digest  text;
    v_prev    text;
    v_start   timestamptz := flowd_start_time(p_start_at, p_start_in_ms);
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        v_digest := flowd_request_digest(jsonb_build_object(
            'workflow', p_workflow, 'version', p_version, 'inputs', p_inputs));
        -- serialize same-key callers so that exactly one creates the batch
        PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext('batch:' || p_idempotency_key));
        SELECT b.id, b.total, b.idempotency_digest INTO id, total, v_prev FROM batches b
         WHERE b.tenant_id = p_tenant AND b.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_prev IS DISTINCT FROM v_digest AND v_prev IS NOT NULL THEN
                RAISE EXCEPTION 'idempotency key already used by batch % for a different request',
                    id USING ERRCODE = 'FL409';
            END IF;
            created := false;
            RETURN;
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
    INSERT INTO batches (tenant_id, workflow_id, total, idempotency_key, idempotency_digest)
    VALUES (p_tenant, v_wf, jsonb_array_length(p_inputs), p_idempotency_key, v_digest)
    RETURNING batches.id, batches.total INTO id, total;
    PERFORM flowd_create_runs(p_tenant, v_wf, p_inputs, 0, id, NULL, NULL, NULL, NULL,
                              CASE WHEN v_start IS NOT NULL
                                   THEN array_fill(v_start, ARRAY[jsonb_array_length(p_inputs)])
                              END, NULL);
    created := true;
END $$;

CREATE OR REPLACE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                              p_inputs jsonb, p_idempotency_key text,
                                              p_checked_version integer,
                                              OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE sql AS $$
    SELECT b.created, b.id, b.total
      FROM flowd_create_batch(p_tenant, p_workflow, p_version, p_inputs, p_idempotency_key,
                              p_checked_version, NULL::timestamptz, NULL::bigint) b
$$;

-- A run the API shows: a queued run whose start time lies ahead is "scheduled".
CREATE FUNCTION flowd_run_state(p_state text, p_start_at timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_state = 'queued' AND p_start_at > flowd_now() THEN 'scheduled'
                ELSE p_state END
$$;

-- As in 0024, with the "scheduled" state, the start time and the schedule that made the run.
CREATE OR REPLACE FUNCTION flowd_run_json(p_tenant bigint, p_run bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
        'id', r.id,
        'workflow', w.name,
        'version', w.version,
        'state', flowd_run_state(r.state, r.start_at),
        'priority', r.priority,
        'batch', r.batch_id,
        'schedule', (SELECT sc.name FROM schedules sc WHERE sc.id = r.schedule_id),
        'start_at', flowd_ms(r.start_at),
        'progress', jsonb_build_object(
            'done', r.steps_done, 'total', r.steps_total,
            'percent', CASE WHEN r.steps_total = 0 THEN 100
                            ELSE floor(100.0 * r.steps_done / r.steps_total)::integer END),
        'phase', st.phase,
        'current_steps', st.current,
        'input', r.input,
        'output', CASE WHEN r.state = 'succeeded' THEN flowd_run_output(r.id) END,
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

-- As in 0006, with the "scheduled" state (also as a filter).
CREATE OR REPLACE FUNCTION flowd_runs_page(p_tenant bigint, p_workflow text, p_state text,
                                           p_batch bigint, p_cursor bigint, p_limit integer)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT r.*, w.name AS wf_name, w.version AS wf_version
          FROM runs r JOIN workflows w ON w.id = r.workflow_id
         WHERE r.tenant_id = p_tenant
           AND (p_cursor IS NULL OR r.id < p_cursor)
           AND (p_workflow IS NULL OR w.name = p_workflow)
           AND (p_state IS NULL OR r.state = CASE WHEN p_state = 'scheduled' THEN 'queued'
                                                  ELSE p_state END)
           AND (p_state IS NULL OR p_state NOT IN ('queued', 'scheduled')
                OR (flowd_run_state(r.state, r.start_at) = p_state))
           AND (p_batch IS NULL OR r.batch_id = p_batch)
         ORDER BY r.id DESC
         LIMIT p_limit + 1),
    shown AS (SELECT * FROM page ORDER BY id DESC LIMIT p_limit)
    SELECT jsonb_build_object(
        'runs', coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'id', s.id, 'workflow', s.wf_name, 'version', s.wf_version,
                    'state', flowd_run_state(s.state, s.start_at),
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

-- As in 0022; the schedulers of every process re-read their next due tick too.
CREATE OR REPLACE FUNCTION flowd_clock_advance(p_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_offset bigint;
BEGIN
    IF p_ms < 0 THEN
        RAISE EXCEPTION 'the clock only moves forward' USING ERRCODE = 'P0001';
    END IF;
    UPDATE flowd_clock SET offset_ms = offset_ms + p_ms WHERE test_mode
    RETURNING offset_ms INTO v_offset;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the engine clock only moves on a database in test mode (served by '
                        '`flowd serve` with FLOWD_TEST_CLOCK=1)'
              USING ERRCODE = '55000';
    END IF;
    PERFORM pg_notify('flowd_ready', 'clock');
    PERFORM pg_notify('flowd_schedules', 'clock');
    RETURN v_offset;
END $$;

CREATE OR REPLACE FUNCTION flowd_clock_reset() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_old bigint;
BEGIN
    SELECT offset_ms INTO v_old FROM flowd_clock FOR UPDATE;
    UPDATE flowd_clock SET offset_ms = 0;
    PERFORM pg_notify('flowd_ready', 'clock');
    PERFORM pg_notify('flowd_schedules', 'clock');
    RETURN v_old;
END $$;

-- As in 0022, a schedule's next tick counting as something due later.
CREATE OR REPLACE FUNCTION flowd_clock_advance_to_next_due() RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := flowd_now();
    v_due timestamptz;
    v_ms  bigint := 0;
BEGIN
    SELECT min(t) INTO v_due
      FROM (SELECT min(run_at) AS t FROM steps WHERE state = 'ready' AND run_at > v_now
            UNION ALL
            SELECT min(run_at) FROM steps
             WHERE state = 'waiting' AND wait_event IS NOT NULL AND run_at > v_now
            UNION ALL
            SELECT min(next_fire) FROM schedules
             WHERE NOT paused AND next_fire IS NOT NULL AND next_fire > v_now) x;
    IF v_due IS NOT NULL THEN
        v_ms := ceil(extract(epoch FROM v_due - v_now) * 1000)::bigint;
    END IF;
    RETURN jsonb_build_object('offset_ms', flowd_clock_advance(v_ms), 'advanced_ms', v_ms,
                              'due_at', flowd_ms(v_due));
END $$;

-- ------------------------------------------------------------------------------ schedules --

CREATE FUNCTION flowd_epoch_ms(p_ms bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT timestamptz 'epoch' + p_ms * interval '1 millisecond'
$$;

CREATE FUNCTION flowd_ms_of(p_t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (extract(epoch FROM p_t) * 1000)::bigint
$$;

-- A schedule as the API shows it. Its definition members are also what engine/schedule.h parses.
CREATE FUNCTION flowd_schedule_json(s schedules) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'name', s.name, 'workflow', s.workflow, 'version', s.version, 'cron', s.cron,
        'every', s.every, 'tz', s.tz, 'input', s.input, 'overlap', s.overlap,
        'catchup', s.catchup, 'catchup_window', s.catchup_window, 'jitter', s.jitter,
        'start_at', flowd_ms(s.start_at), 'end_at', flowd_ms(s.end_at), 'paused', s.paused,
        'next_fire', flowd_ms(s.next_fire), 'last_fire', flowd_ms(s.last_fire),
        'last_run', (SELECT jsonb_build_object('id', r.id,
                                               'state', flowd_run_state(r.state, r.start_at))
                       FROM runs r WHERE r.id = s.last_run_id AND r.tenant_id = s.tenant_id),
        'fires', s.fires, 'skips', s.skips, 'last_skip', s.last_skip,
        'created_at', flowd_ms(s.created_at), 'updated_at', flowd_ms(s.updated_at))
$$;

-- The input check of the version a run of (workflow, version or the latest) would get:
-- (found, version, input_check); found is false when there is no such workflow.
CREATE FUNCTION flowd_schedule_workflow(p_tenant bigint, p_workflow text, p_version integer,
                                        OUT found boolean, OUT version integer,
                                        OUT input_check jsonb)
LANGUAGE sql STABLE AS $$
    SELECT count(c.*) > 0, max(c.version), (array_agg(c.input_check))[1]
      FROM flowd_input_check(p_tenant, p_workflow, p_version) c
$$;

-- What PUT and GET need besides the request: the engine clock, the schedule as stored (NULL when
-- new) with its next tick, and the input check of the workflow (of p_workflow, or the stored
-- schedule's when NULL).
CREATE FUNCTION flowd_schedule_get(p_tenant bigint, p_name text, p_workflow text,
                                   p_version integer,
                                   OUT now_ms bigint, OUT schedule jsonb,
                                   OUT workflow_found boolean, OUT input_check jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s schedules;
BEGIN
    now_ms := flowd_ms_of(flowd_now());
    SELECT * INTO s FROM schedules x WHERE x.tenant_id = p_tenant AND x.name = p_name;
    IF FOUND THEN
        schedule := flowd_schedule_json(s);
    END IF;
    IF p_workflow IS NOT NULL OR s.id IS NOT NULL THEN
        SELECT w.found, w.input_check INTO workflow_found, input_check
          FROM flowd_schedule_workflow(p_tenant, coalesce(p_workflow, s.workflow),
                                       CASE WHEN p_workflow IS NULL THEN s.version
                                            ELSE p_version END) w;
    END IF;
END $$;

-- Creates or replaces the schedule p_name from its definition p_def (checked by the caller). With
-- p_reset its next tick becomes p_next_ms (NULL: none left); without, a stored schedule keeps its
-- next tick. `paused` left out of p_def keeps the stored state. Wakes every process's scheduler.
CREATE FUNCTION flowd_schedule_put(p_tenant bigint, p_name text, p_def jsonb, p_next_ms bigint,
                                   p_reset boolean, OUT created boolean, OUT schedule jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    s schedules;
    v_now timestamptz := flowd_now();
BEGIN
    created := NOT EXISTS (SELECT 1 FROM schedules x WHERE x.tenant_id = p_tenant
                                                        AND x.name = p_name);
    INSERT INTO schedules AS x (tenant_id, name, workflow, version, cron, every, tz, input,
                                overlap, catchup, catchup_window, jitter, start_at, end_at,
                                paused, next_fire, created_at, updated_at)
    VALUES (p_tenant, p_name, p_def->>'workflow', (p_def->>'version')::integer, p_def->>'cron',
            p_def->>'every', coalesce(p_def->>'tz', 'UTC'), coalesce(p_def->'input', '{}'),
            coalesce(p_def->>'overlap', 'allow'), coalesce(p_def->>'catchup', 'none'),
            coalesce(p_def->>'catchup_window', '1d'), coalesce(p_def->>'jitter', '0s'),
            (p_def->>'start_at')::timestamptz, (p_def->>'end_at')::timestamptz,
            coalesce((p_def->>'paused')::boolean, false), flowd_epoch_ms(p_next_ms), v_now, v_now)
    ON CONFLICT (tenant_id, name) DO UPDATE
       SET workflow = EXCLUDED.workflow, version = EXCLUDED.version, cron = EXCLUDED.cron,
           every = EXCLUDED.every, tz = EXCLUDED.tz, input = EXCLUDED.input,
           overlap = EXCLUDED.overlap, catchup = EXCLUDED.catchup,
           catchup_window = EXCLUDED.catchup_window, jitter = EXCLUDED.jitter,
           start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,
           paused = coalesce((p_def->>'paused')::boolean, x.paused),
           next_fire = CASE WHEN p_reset THEN EXCLUDED.next_fire ELSE x.next_fire END,
           updated_at = v_now
    RETURNING * INTO s;
    schedule := flowd_schedule_json(s);
    PERFORM pg_notify('flowd_schedules', 'put');
END $$;

CREATE FUNCTION flowd_schedules_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('schedules', coalesce(jsonb_agg(flowd_schedule_json(s)
                                                              ORDER BY s.name), '[]'))
      FROM schedules s WHERE s.tenant_id = p_tenant
$$;

CREATE FUNCTION flowd_schedule_delete(p_tenant bigint, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM schedules WHERE tenant_id = p_tenant AND name = p_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('flowd_schedules', 'delete');
    RETURN true;
END $$;

-- Pauses or resumes; a resumed schedule catches up on the ticks it missed by its policy. NULL
-- when the tenant has no such schedule.
CREATE FUNCTION flowd_schedule_pause(p_tenant bigint, p_name text, p_paused boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s schedules;
BEGIN
    UPDATE schedules SET paused = p_paused, updated_at = flowd_now()
     WHERE tenant_id = p_tenant AND name = p_name RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('flowd_schedules', 'pause');
    RETURN flowd_schedule_json(s);
END $$;

-- Milliseconds until the earliest tick of a schedule that will fire (0 when due), NULL when none.
CREATE FUNCTION flowd_schedule_next_due_ms() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN min(next_fire) IS NOT NULL  -- (greatest() would turn NULL into 0)
                THEN greatest(0, flowd_ms_of(min(next_fire)) - flowd_ms_of(flowd_now())) END
      FROM schedules WHERE NOT paused AND next_fire IS NOT NULL
$$;

-- The schedules due now, earliest first, with what the engine needs to plan their fires: the
-- definition (engine/schedule.h), the tick of the previous run, and the workflow's input check.
CREATE FUNCTION flowd_schedules_due(p_limit integer)
RETURNS TABLE (id bigint, name text, def jsonb, next_ms bigint, last_ms bigint, now_ms bigint,
               workflow_found boolean, input_check jsonb)
LANGUAGE sql STABLE AS $$
    SELECT s.id, s.name, flowd_schedule_json(s), flowd_ms_of(s.next_fire),
           flowd_ms_of(s.last_fire), flowd_ms_of(flowd_now()), w.found, w.input_check
      FROM schedules s
     CROSS JOIN LATERAL flowd_schedule_workflow(s.tenant_id, s.workflow, s.version) w
     WHERE NOT s.paused AND s.next_fire <= flowd_now()
     ORDER BY s.next_fire
     LIMIT p_limit
$$;

-- Whether a new run of schedule p_id may start by its overlap policy, with the row locked:
-- `skip` says no while one of its runs is unfinished, `cancel_previous` cancels those. Keeps
-- open_from (below it every run of the schedule has finished) so the search stays short.
CREATE FUNCTION flowd_schedule_overlap(p_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s      schedules;
    v_open bigint[];
BEGIN
    SELECT * INTO s FROM schedules WHERE id = p_id;
    IF s.overlap = 'allow' THEN
        RETURN true;
    END IF;
    SELECT array_agg(r.id ORDER BY r.id) INTO v_open FROM runs r
     WHERE r.schedule_id = p_id AND r.id >= s.open_from AND r.state IN ('queued', 'running');
    UPDATE schedules SET open_from = coalesce(v_open[1], coalesce(s.last_run_id, 0) + 1)
     WHERE id = p_id;
    IF v_open IS NULL THEN
        RETURN true;
    END IF;
    IF s.overlap = 'skip' THEN
        RETURN false;
    END IF;
    PERFORM flowd_cancel_runs(v_open, jsonb_build_object(
        'code', 'schedule_overlap', 'message', 'cancelled by a later run of its schedule'));
    RETURN true;
END $$;

-- One fire pass, in one transaction: p_orders is a JSON array of
--   {"id", "expect": ms, "next": ms | null, "fires": [{"at": ms, "input", "start": ms | null}],
--    "missed": n, "error": {"fire_time", "code", "message"} | null}
-- as planned by the engine from what flowd_schedules_due answered. A schedule is fired only if
-- its next tick is still `expect` and no other pass holds it (SKIP LOCKED): then its runs are
-- created (idempotency key "schedule:<id>:<tick ms>", by its overlap policy, grouped into one
-- flowd_create_runs per workflow) and its next tick becomes `next`, all or nothing. Answers per
-- order: outcome "fired", "busy" (another pass holds it: look again shortly) or "moved" (already
-- handled, paused or gone), with the runs made and the ticks skipped by overlap, by an existing
-- run of the same tick, and for want of the workflow.
CREATE FUNCTION flowd_schedules_fire(p_orders jsonb)
RETURNS TABLE (id bigint, outcome text, runs integer, overlap integer, duplicate integer,
               missing integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := flowd_now();
    v_locked  bigint[];
    v_skip    bigint[] := '{}';  -- overlap: every fire of the pass skipped
    v_first   bigint[] := '{}';  -- overlap skip: only the first fire of the pass
    v_last    bigint[] := '{}';  -- overlap cancel_previous: only the last
    v_missing bigint[] := '{}';
    v_sids    bigint[] := '{}';  -- runs made: schedule, tick, run
    v_ats     bigint[] := '{}';
    v_runs    bigint[] := '{}';
    v_wf      bigint;
    v_ids     bigint[];
    r         record;
BEGIN
    SELECT array_agg(x.id) INTO v_locked FROM (
        SELECT s.id FROM schedules s
          JOIN jsonb_to_recordset(p_orders) AS o(id bigint, expect bigint) ON o.id = s.id
         WHERE s.next_fire = flowd_epoch_ms(o.expect) AND NOT s.paused
         ORDER BY s.id
           FOR UPDATE OF s SKIP LOCKED) x;
    v_locked := coalesce(v_locked, '{}');

    FOR r IN SELECT s.id, s.overlap FROM schedules s
               JOIN jsonb_to_recordset(p_orders) AS o(id bigint, fires jsonb) ON o.id = s.id
              WHERE s.id = ANY (v_locked) AND s.overlap <> 'allow'
                AND jsonb_array_length(o.fires) > 0
              ORDER BY s.id LOOP
        IF NOT flowd_schedule_overlap(r.id) THEN
            v_skip := v_skip || r.id;
        ELSIF r.overlap = 'skip' THEN
            v_first := v_first || r.id;
        ELSE
            v_last := v_last || r.id;
        END IF;
    END LOOP;

    FOR r IN
        WITH fx AS (
            SELECT s.id AS sid, s.tenant_id, s.workflow, s.version, f.value, f.ord,
                   (f.value->>'at')::bigint AS at_ms,
                   jsonb_array_length(o.fires) AS n
              FROM jsonb_to_recordset(p_orders) AS o(id bigint, fires jsonb)
              JOIN schedules s ON s.id = o.id
             CROSS JOIN jsonb_array_elements(o.fires) WITH ORDINALITY AS f(value, ord)
             WHERE s.id = ANY (v_locked) AND NOT s.id = ANY (v_skip)
               AND (NOT s.id = ANY (v_first) OR f.ord = 1)
               AND (NOT s.id = ANY (v_last) OR f.ord = jsonb_array_length(o.fires))),
        fresh AS (
            SELECT fx.*, 'schedule:' || fx.sid || ':' || fx.at_ms AS key FROM fx
             WHERE NOT EXISTS (SELECT 1 FROM runs x
                                WHERE x.tenant_id = fx.tenant_id
                                  AND x.idempotency_key = 'schedule:' || fx.sid || ':' || fx.at_ms))
        SELECT f.tenant_id, f.workflow, f.version,
               jsonb_agg(f.value->'input' ORDER BY f.sid, f.at_ms) AS inputs,
               array_agg(f.key ORDER BY f.sid, f.at_ms) AS keys,
               array_agg(flowd_epoch_ms((f.value->>'start')::bigint) ORDER BY f.sid, f.at_ms)
                   AS starts,
               array_agg(f.sid ORDER BY f.sid, f.at_ms) AS sids,
               array_agg(f.at_ms ORDER BY f.sid, f.at_ms) AS ats
          FROM fresh f GROUP BY f.tenant_id, f.workflow, f.version
    LOOP
        SELECT w.id INTO v_wf FROM workflows w
         WHERE w.tenant_id = r.tenant_id AND w.name = r.workflow
           AND (r.version IS NULL OR w.version = r.version)
         ORDER BY w.version DESC LIMIT 1;
        IF NOT FOUND THEN
            v_missing := v_missing || r.sids;
            CONTINUE;
        END IF;
        v_ids := flowd_create_runs(r.tenant_id, v_wf, r.inputs, 0, NULL, NULL, NULL, NULL, r.keys,
                                   r.starts, r.sids);
        v_sids := v_sids || r.sids;
        v_ats := v_ats || r.ats;
        v_runs := v_runs || v_ids;
    END LOOP;

    RETURN QUERY
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(p_orders)
                   AS o(id bigint, expect bigint, next bigint, fires jsonb, missed bigint,
                        error jsonb)),
    made AS (
        SELECT u.sid, count(*)::integer AS n, max(u.at) AS last_at,
               (array_agg(u.run ORDER BY u.at DESC))[1] AS last_run
          FROM unnest(v_sids, v_ats, v_runs) AS u(sid, at, run) GROUP BY u.sid),
    miss AS (
        SELECT m.sid, count(*)::integer AS n FROM unnest(v_missing) AS m(sid) GROUP BY m.sid),
    tally AS (
        SELECT o.*, coalesce(made.n, 0) AS made_n, made.last_at, made.last_run,
               coalesce(miss.n, 0) AS missing_n,
               CASE WHEN o.id = ANY (v_skip) THEN jsonb_array_length(o.fires)
                    WHEN o.id = ANY (v_first) OR o.id = ANY (v_last)
                    THEN jsonb_array_length(o.fires) - 1 ELSE 0 END AS overlap_n
          FROM o LEFT JOIN made ON made.sid = o.id LEFT JOIN miss ON miss.sid = o.id
         WHERE o.id = ANY (v_locked)),
    upd AS (
        UPDATE schedules s
           SET next_fire = flowd_epoch_ms(t.next),
               last_fire = coalesce(flowd_epoch_ms(t.last_at), s.last_fire),
               last_run_id = coalesce(t.last_run, s.last_run_id),
               fires = s.fires + t.made_n,
               skips = s.skips + coalesce(t.missed, 0) + jsonb_array_length(t.fires) - t.made_n
                       + CASE WHEN t.error IS NOT NULL THEN 1 ELSE 0 END,
               last_skip = CASE
                   WHEN t.error IS NOT NULL
                   THEN t.error || jsonb_build_object('at', flowd_ms(v_now))
                   WHEN t.missing_n > 0
                   THEN jsonb_build_object('reason', 'workflow_missing', 'at', flowd_ms(v_now),
                                           'message', 'no workflow ' || s.workflow
                                                      || coalesce(' version ' || s.version, ''))
                   WHEN t.overlap_n > 0
                   THEN jsonb_build_object('reason', 'overlap', 'at', flowd_ms(v_now))
                   WHEN coalesce(t.missed, 0) > 0
                   THEN jsonb_build_object('reason', 'missed', 'at', flowd_ms(v_now),
                                           'ticks', t.missed)
                   WHEN jsonb_array_length(t.fires) - t.made_n > 0
                   THEN jsonb_build_object('reason', 'duplicate', 'at', flowd_ms(v_now))
                   ELSE s.last_skip END,
               updated_at = v_now
          FROM tally t WHERE s.id = t.id
        RETURNING s.id)
    SELECT o.id,
           CASE WHEN o.id = ANY (v_locked) THEN 'fired'
                WHEN EXISTS (SELECT 1 FROM schedules s
                              WHERE s.id = o.id AND NOT s.paused
                                AND s.next_fire = flowd_epoch_ms(o.expect)) THEN 'busy'
                ELSE 'moved' END,
           coalesce(t.made_n, 0), coalesce(t.overlap_n, 0),
           coalesce(jsonb_array_length(t.fires) - t.made_n - t.overlap_n - t.missing_n, 0),
           coalesce(t.missing_n, 0)
      FROM o LEFT JOIN tally t ON t.id = o.id;
END $$;

-- Fires schedule p_name once now (POST .../trigger): the run of tick p_at_ms with p_input
-- (rendered and checked by the caller), by the overlap policy (55000 when `skip` finds a run
-- unfinished), counted as the schedule's latest run. The schedule's next tick stays. NULL when
-- the tenant has no such schedule.
CREATE FUNCTION flowd_schedule_trigger(p_tenant bigint, p_name text, p_at_ms bigint,
                                       p_input jsonb, p_start_ms bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s     schedules;
    v_wf  bigint;
    v_ids bigint[];
    v_key text;
BEGIN
    SELECT * INTO s FROM schedules WHERE tenant_id = p_tenant AND name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_key := 'schedule:' || s.id || ':' || p_at_ms;
    SELECT array_agg(r.id) INTO v_ids FROM runs r
     WHERE r.tenant_id = p_tenant AND r.idempotency_key = v_key;
    IF v_ids IS NOT NULL THEN
        RETURN flowd_run_json(p_tenant, v_ids[1]);
    END IF;
    IF NOT flowd_schedule_overlap(s.id) THEN
        RAISE EXCEPTION 'a run of schedule % has not finished (overlap: skip)', p_name
              USING ERRCODE = '55000';
    END IF;
    SELECT w.id INTO v_wf FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = s.workflow
       AND (s.version IS NULL OR w.version = s.version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', s.workflow || coalesce(' version ' || s.version, '')
            USING ERRCODE = 'P0002';
    END IF;
    v_ids := flowd_create_runs(p_tenant, v_wf, jsonb_build_array(p_input), 0, NULL, NULL, NULL,
                               NULL, ARRAY[v_key], ARRAY[flowd_epoch_ms(p_start_ms)],
                               ARRAY[s.id]);
    UPDATE schedules SET last_fire = flowd_epoch_ms(p_at_ms), last_run_id = v_ids[1],
                         fires = fires + 1, updated_at = flowd_now()
     WHERE id = s.id;
    RETURN flowd_run_json(p_tenant, v_ids[1]);
END $$;
