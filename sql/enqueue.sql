-- sql/enqueue.sql: Registering workflows and creating runs and batches: input checks, idempotency
-- keys, the templates and sending windows SQL evaluates when a run is created.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Registers a definition as the next version of the tenant's workflow p_name, or answers the
-- version already stored with the same digest (created = false). Serialised per name.
CREATE OR REPLACE FUNCTION flowd_register_workflow(p_tenant bigint, p_name text, p_digest text,
                                        p_source jsonb, p_def jsonb,
                                        OUT id bigint, OUT version integer, OUT created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext(p_name));
    SELECT w.id, w.version INTO id, version
      FROM workflows w WHERE w.tenant_id = p_tenant AND w.name = p_name AND w.digest = p_digest;
    IF FOUND THEN
        created := false;
        RETURN;
    END IF;
    SELECT coalesce(max(w.version), 0) + 1 INTO version
      FROM workflows w WHERE w.tenant_id = p_tenant AND w.name = p_name;
    INSERT INTO workflows (tenant_id, name, version, digest, source, def)
    VALUES (p_tenant, p_name, version, p_digest, p_source, p_def)
    RETURNING workflows.id INTO id;
    created := true;
END $$;

-- Renders the few templates that SQL itself evaluates (cancel_on keys, concurrency keys): only
-- {{input.a.b}} and {{run.id}} may appear (the definition compiler enforces it). NULL when a path
-- is missing, so a run without the field gets no key rather than a shared empty one.
CREATE OR REPLACE FUNCTION flowd_render_key(p_tmpl text, p_input jsonb, p_run bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    m   text[];
    v   text;
    out text := p_tmpl;
BEGIN
    FOR m IN SELECT regexp_matches(p_tmpl, '(\{\{\s*([A-Za-z0-9_.]+)\s*\}\})', 'g') LOOP
        IF m[2] = 'run.id' THEN
            v := p_run::text;
        ELSIF m[2] LIKE 'input.%' THEN
            v := p_input #>> string_to_array(substr(m[2], 7), '.');
        ELSE
            v := NULL;
        END IF;
        IF v IS NULL THEN
            RETURN NULL;
        END IF;
        out := replace(out, m[1], v);
    END LOOP;
    RETURN out;
END $$;

-- The first instant at or after p_after inside the sending window p_window {tz, start_min, end_min,
-- days} (0 = Sunday), or NULL when the window never opens. PostgreSQL's zone rules make
-- daylight-saving changes come out right: local times are converted per day.
CREATE OR REPLACE FUNCTION flowd_window_next(p_after timestamptz, p_window jsonb) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_tz    text := p_window->>'tz';
    v_start integer := (p_window->>'start_min')::integer;
    v_end   integer := (p_window->>'end_min')::integer;
    v_local timestamp := p_after AT TIME ZONE v_tz;
    v_day   date;
    v_close timestamptz;
BEGIN
    FOR k IN 0..8 LOOP
        v_day := v_local::date + k;
        IF p_window->'days' @> to_jsonb(extract(dow FROM v_day)::integer) THEN
            v_close := (v_day + v_end * interval '1 minute') AT TIME ZONE v_tz;
            IF p_after < v_close THEN
                RETURN greatest(p_after, (v_day + v_start * interval '1 minute') AT TIME ZONE v_tz);
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- A step's sending window with its time zone rendered from the run input, when SQL can do that
-- (a literal zone or a plain {{input...}} path naming a known zone) and the step has no `at`:
-- such steps are placed in their window the moment they become ready. Others are placed by the
-- worker when claimed. NULL when the step has no window or SQL cannot place it.
CREATE OR REPLACE FUNCTION flowd_step_window(p_def jsonb, p_input jsonb, p_run bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_tz text;
BEGIN
    IF p_def->'window' IS NULL OR jsonb_typeof(p_def->'window') <> 'object'
       OR jsonb_typeof(p_def->'at') = 'string' THEN
        RETURN NULL;
    END IF;
    v_tz := flowd_render_key(p_def->'window'->>'tz', p_input, p_run);
    IF v_tz IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        PERFORM now() AT TIME ZONE v_tz;  -- an unknown zone is left to the worker to report
    EXCEPTION WHEN invalid_parameter_value THEN
        RETURN NULL;
    END;
    RETURN jsonb_set(p_def->'window', '{tz}', to_jsonb(v_tz));
END $$;

-- A run's metadata (0036) from its workflow's "search" ({"name": "{{input.a.b}}"}, checked when the
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

-- A metadata value as free search keeps it (run_search, 0052): lowercased, at most 200 characters
-- (the API takes a search of at most 200 bytes, so no prefix it can ask for is cut).
CREATE OR REPLACE FUNCTION flowd_search_value(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT left(lower(p_value), 200)
$$;

-- Creates one run per element of p_inputs with all its steps; returns their ids in input order.
-- Map children pass their parent step and their items' positions. (0002 wrote it first and says
-- the why of each part; 0012 made it one statement:)
-- - The steps are fed from the runs INSERT's RETURNING instead of re-reading the new runs by id
--   (r.id = ANY (v_ids)): no table is looked up, so the plan does not depend on the parameters and
--   PL/pgSQL's cached generic plan is as good for one input as for 10,000 (0002's statements were
--   planned again on every call, ~0.5 ms of a single enqueue, and their generic plans were bad for
--   big batches).
-- - The step definitions are decoded from the workflow's JSON once per call (sd), not once per run.
-- - The event log rows of the call go in with one INSERT, in 0002's order: the step.scheduled rows
--   (by run, then step), then the run.created rows (by run).
-- Three per-input arrays (NULL: none; 0034): each run's idempotency key, its start time (its first
-- steps wait until then; earlier than now means now) and the schedule making it.
-- Each run keeps its metadata from the workflow's search (flowd_run_meta, 0036), and its values
-- for free search (run_search, 0052).
CREATE OR REPLACE FUNCTION flowd_create_runs(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                                  p_priority integer, p_batch bigint, p_parent_step bigint,
                                  p_parent_indexes integer[], p_idempotency_key text,
                                  p_keys text[], p_start_at timestamptz[], p_schedules bigint[])
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_def jsonb;
    v_now timestamptz := flowd_now();
    v_ids bigint[];
    v_keyed boolean;  -- some step of the workflow has a concurrency key
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
                          schedule_id, meta)
        SELECT p_tenant, p_workflow, p_priority, jsonb_array_length(v_def->'steps'), i.value,
               p_batch, p_parent_step, p_parent_indexes[i.n],
               coalesce(p_keys[i.n], p_idempotency_key), v_now,
               CASE WHEN p_start_at[i.n] > v_now THEN p_start_at[i.n] END, p_schedules[i.n],
               CASE WHEN jsonb_typeof(v_def->'search') = 'object'
                    THEN flowd_run_meta(v_def->'search', i.value) END
          FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS i(value, n)
         ORDER BY i.n
        RETURNING id, input, coalesce(start_at, v_now) AS start, meta),
    se AS (
        INSERT INTO run_search (run_id, tenant_id, value)
        SELECT ins.id, p_tenant, flowd_search_value(m.value)
          FROM ins CROSS JOIN LATERAL jsonb_each_text(ins.meta) m),
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
          FROM (SELECT 0 AS part, ins.id AS run_id, 0 AS idx, 'run.created' AS type,
                       NULL AS step_key, NULL::jsonb AS data
                  FROM ins
                UNION ALL
                -- after its run's run.created: a reader meets the run before its steps
                SELECT 1, st.run_id, st.idx, 'step.scheduled', st.key,
                       jsonb_build_object('run_at', flowd_ms(st.run_at),
                                          'tz', st.send_window->>'tz')
                  FROM st
                 WHERE st.scheduled
                   AND st.run_at > v_now + st.delay_ms * interval '1 millisecond') x
         ORDER BY x.part, x.run_id, x.idx)
    SELECT array_agg(ins.id ORDER BY ins.id), (SELECT bool_or(sd.ckey IS NOT NULL) FROM sd)
      INTO v_ids, v_keyed FROM ins;
    IF v_ids IS NULL THEN
        RETURN '{}';
    END IF;
    IF v_keyed THEN
        -- each new step with a concurrency key remembers the step it queues behind (0053): the
        -- latest unfinished one of its key, this call's own steps included (visible only now)
        INSERT INTO ckey_queue (tenant_id, run_id, step_id, behind)
        SELECT s.tenant_id, s.run_id, s.id, b.id
          FROM steps s CROSS JOIN LATERAL (
               SELECT max(o.id) AS id FROM steps o
                WHERE o.tenant_id = s.tenant_id AND o.ckey = s.ckey AND o.id < s.id
                  AND o.state IN ('pending', 'ready', 'running', 'waiting', 'blocked')) b
         WHERE s.run_id = ANY (v_ids) AND s.ckey IS NOT NULL AND b.id IS NOT NULL;
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

-- Creates one run per element of p_inputs (a JSON array) in one transaction, starting at
-- p_start_at (NULL or earlier: now; 0034). With an idempotency key (single input only) an existing
-- run of that key is returned instead (created = false). A priority outside the tenant's range is
-- refused (22023, naming the column).
CREATE OR REPLACE FUNCTION flowd_enqueue(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
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
    PERFORM flowd_quota_take_runs(p_tenant, jsonb_array_length(p_inputs));
    RETURN QUERY
    SELECT x.id, true
      FROM unnest(flowd_create_runs(p_tenant, p_workflow, p_inputs, p_priority, p_batch, NULL, NULL,
                                    p_idempotency_key, NULL,
                                    CASE WHEN p_start_at IS NOT NULL
                                         THEN array_fill(p_start_at,
                                                         ARRAY[jsonb_array_length(p_inputs)])
                                    END, NULL)) AS x(id);
END $$;


-- The same, starting the runs now.
CREATE OR REPLACE FUNCTION flowd_enqueue(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                                         p_priority integer, p_idempotency_key text,
                                         p_batch bigint)
RETURNS TABLE (run_id bigint, created boolean)
LANGUAGE sql AS $$
    SELECT e.run_id, e.created
      FROM flowd_enqueue(p_tenant, p_workflow, p_inputs, p_priority, p_idempotency_key, p_batch,
                         NULL::timestamptz) e
$$;

CREATE OR REPLACE FUNCTION flowd_request_digest(p_request jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex')
$$;

-- When a delayed start begins: at p_start_at, or p_start_in_ms after now on the engine clock.
CREATE OR REPLACE FUNCTION flowd_start_time(p_start_at timestamptz, p_start_in_ms bigint)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_start_at, flowd_now() + p_start_in_ms * interval '1 millisecond')
$$;

-- Starts a run of the named workflow (latest version unless one is given). Idempotent with a key;
-- a key used for a different request is refused. p_checked_version: the version the caller checked
-- the input against (NULL: no check made). (0034) It starts at p_start_at or p_start_in_ms from
-- now (both NULL: now); the start is not part of the idempotency digest, since a retry of
-- `start_in` computes another instant. p_tags: the client's tags (an object of strings, checked by
-- the API, or NULL), kept in the run's metadata under the workflow's own search values, which win
-- on a shared name (0036); they are part of the request a key stands for.
CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                p_input jsonb, p_priority integer, p_idempotency_key text,
                                p_checked_version integer, p_start_at timestamptz,
                                p_start_in_ms bigint, p_tags jsonb,
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
                         p_idempotency_key, NULL, flowd_start_time(p_start_at, p_start_in_ms)) e;
    IF created AND (v_digest IS NOT NULL OR p_tags IS NOT NULL) THEN
        -- the tags the workflow's values left in the run's meta become searchable too
        WITH u AS (
            UPDATE runs SET idempotency_digest = v_digest,
                            meta = CASE WHEN p_tags IS NULL THEN meta
                                        ELSE p_tags || coalesce(meta, '{}') END
             WHERE id = v_run
            RETURNING meta)
        INSERT INTO run_search (run_id, tenant_id, value)
        SELECT v_run, p_tenant, flowd_search_value(t.value)
          FROM u CROSS JOIN LATERAL jsonb_each_text(p_tags) t
         WHERE u.meta->>t.key = t.value
           AND NOT EXISTS (SELECT 1 FROM run_search x
                            WHERE x.run_id = v_run AND x.value = flowd_search_value(t.value));
    END IF;
    run := flowd_run_json(p_tenant, v_run);
END $$;

-- Creates the batch and all its runs; with a key already used by the tenant, returns that batch; a
-- key used for a different request is refused. p_checked_version: the version the caller checked
-- the inputs against (NULL: no check made).
-- (0034) Every run of the batch starts at p_start_at or p_start_in_ms from now.
CREATE OR REPLACE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
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
    PERFORM flowd_quota_take_runs(p_tenant, jsonb_array_length(p_inputs));
    INSERT INTO batches (tenant_id, workflow_id, total, idempotency_key, idempotency_digest)
    VALUES (p_tenant, v_wf, jsonb_array_length(p_inputs), p_idempotency_key, v_digest)
    RETURNING batches.id, batches.total INTO id, total;
    PERFORM flowd_create_runs(p_tenant, v_wf, p_inputs, 0, id, NULL, NULL, NULL, NULL,
                              CASE WHEN v_start IS NOT NULL
                                   THEN array_fill(v_start, ARRAY[jsonb_array_length(p_inputs)])
                              END, NULL);
    created := true;
END $$;

-- The version a run of (p_workflow, p_version or the latest) would get, and what its input is
-- checked against (NULL: nothing to check, also for versions stored before input_check); no row
-- when there is no such workflow.
CREATE OR REPLACE FUNCTION flowd_input_check(p_tenant bigint, p_workflow text, p_version integer,
                                  OUT version integer, OUT input_check jsonb)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT w.version, nullif(w.def->'input_check', 'null') FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1
$$;
