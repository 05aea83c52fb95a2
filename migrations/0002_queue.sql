-- Queue transitions. Each function is one transaction's worth of work that any flowd process may
-- run concurrently with the others. Runs are always locked in id order before their steps are
-- changed, so concurrent cycles never deadlock on each other.

CREATE FUNCTION flowd_register_workflow(p_tenant bigint, p_name text, p_digest text,
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
CREATE FUNCTION flowd_render_key(p_tmpl text, p_input jsonb, p_run bigint) RETURNS text
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
CREATE FUNCTION flowd_window_next(p_after timestamptz, p_window jsonb) RETURNS timestamptz
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
CREATE FUNCTION flowd_step_window(p_def jsonb, p_input jsonb, p_run bigint) RETURNS jsonb
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

-- Creates one run per element of p_inputs with all its steps; returns their ids in input order.
-- Map children pass their parent step and their items' positions.
CREATE FUNCTION flowd_create_runs(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
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
    WITH ins AS (
        INSERT INTO runs (tenant_id, workflow_id, priority, steps_total, input, batch_id,
                          parent_step_id, parent_index, idempotency_key, created_at)
        SELECT p_tenant, p_workflow, p_priority, jsonb_array_length(v_def->'steps'), i.value,
               p_batch, p_parent_step,
               p_parent_indexes[i.n],
               p_idempotency_key, v_now
          FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS i(value, n)
         ORDER BY i.n
        RETURNING id)
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM ins;
    IF v_ids IS NULL THEN
        RETURN '{}';
    END IF;

    INSERT INTO steps (run_id, tenant_id, idx, priority, max_attempts, nneeds, needs_left,
                       dependents, delay_ms, send_window, state, key, kind, phase, ckey, run_at,
                       ready_at, scheduled)
    SELECT r.id, p_tenant, (s->>'idx')::integer, p_priority, (s->>'max_attempts')::integer,
           jsonb_array_length(s->'needs'), jsonb_array_length(s->'needs'),
           ARRAY(SELECT jsonb_array_elements_text(s->'dependents')::integer),
           (s->>'delay_ms')::bigint, w.win,
           CASE WHEN jsonb_array_length(s->'needs') = 0 THEN 'ready' ELSE 'pending' END,
           s->>'key', s->>'kind', s->>'phase',
           flowd_render_key(s->>'concurrency_key', r.input, r.id),
           coalesce(t.at, v_now + (s->>'delay_ms')::bigint * interval '1 millisecond'),
           CASE WHEN jsonb_array_length(s->'needs') = 0 THEN v_now END,
           t.at IS NOT NULL
      FROM runs r CROSS JOIN jsonb_array_elements(v_def->'steps') AS s
      CROSS JOIN LATERAL (SELECT CASE WHEN s->'window' <> 'null'::jsonb
                                      THEN flowd_step_window(s, r.input, r.id) END AS win) w
      CROSS JOIN LATERAL (SELECT CASE WHEN w.win IS NOT NULL
                                       AND jsonb_array_length(s->'needs') = 0
                                      THEN flowd_window_next(v_now + (s->>'delay_ms')::bigint
                                                             * interval '1 millisecond', w.win)
                                 END AS at) t
     WHERE r.id = ANY (v_ids);

    IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_def->'steps') AS s
                WHERE s->'window' <> 'null'::jsonb) THEN
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT st.run_id, p_tenant, v_now, 'step.scheduled', st.key,
               jsonb_build_object('run_at', flowd_ms(st.run_at), 'tz', st.send_window->>'tz')
          FROM steps st
         WHERE st.run_id = ANY (v_ids) AND st.scheduled
           AND st.run_at > v_now + st.delay_ms * interval '1 millisecond';
    END IF;

    IF jsonb_array_length(coalesce(v_def->'cancel_on', '[]')) > 0 THEN
        INSERT INTO run_cancel_on (run_id, tenant_id, event, key)
        SELECT r.id, p_tenant, c->>'event', flowd_render_key(c->>'key', r.input, r.id)
          FROM runs r CROSS JOIN jsonb_array_elements(v_def->'cancel_on') AS c
         WHERE r.id = ANY (v_ids) AND flowd_render_key(c->>'key', r.input, r.id) IS NOT NULL
        ON CONFLICT DO NOTHING;
    END IF;

    INSERT INTO run_events (run_id, tenant_id, at, type)
    SELECT r.id, p_tenant, v_now, 'run.created' FROM unnest(v_ids) AS r(id);
    -- Wake idle workers. A NOTIFY serializes the commits that carry one (PostgreSQL takes a
    -- database-wide lock for it until the commit is flushed), so of the enqueues committing at
    -- the same time only the one holding this lock notifies; the others' rows are claimed by the
    -- workers it wakes, or by their poll timer.
    IF pg_try_advisory_xact_lock(hashtext('flowd_notify_ready')) THEN
        PERFORM pg_notify('flowd_ready', '');
    END IF;
    RETURN v_ids;
END $$;

-- Creates one run per element of p_inputs (a JSON array) in one transaction. With an idempotency
-- key (single input only) an existing run of that key is returned instead (created = false).
CREATE FUNCTION flowd_enqueue(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                              p_priority integer, p_idempotency_key text, p_batch bigint)
RETURNS TABLE (run_id bigint, created boolean)
LANGUAGE plpgsql AS $$
BEGIN
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
                                    p_idempotency_key)) AS x(id);
END $$;

-- Fails the given runs for good: nothing of theirs that has not started will start.
CREATE FUNCTION flowd_fail_runs(p_runs bigint[], p_error jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_children bigint[];
BEGIN
    WITH f AS (
        UPDATE runs SET state = 'failed', error = p_error, finished_at = v_now
         WHERE id = ANY (p_runs) AND state IN ('queued', 'running')
        RETURNING id, tenant_id)
    INSERT INTO run_events (run_id, tenant_id, at, type, data)
    SELECT f.id, f.tenant_id, v_now, 'run.failed', p_error FROM f;
    WITH c AS (
        UPDATE steps SET state = 'cancelled', finished_at = v_now
         WHERE run_id = ANY (p_runs) AND state IN ('pending', 'ready', 'waiting')
        RETURNING run_id, tenant_id, key)
    INSERT INTO run_events (run_id, tenant_id, at, type, step_key)
    SELECT c.run_id, c.tenant_id, v_now, 'step.cancelled', c.key FROM c;
    DELETE FROM run_cancel_on WHERE run_id = ANY (p_runs);
    SELECT array_agg(r.id) INTO v_children FROM runs r
     WHERE r.parent_step_id IN (SELECT s.id FROM steps s WHERE s.run_id = ANY (p_runs))
       AND r.state IN ('queued', 'running');
    IF v_children IS NOT NULL THEN
        PERFORM flowd_cancel_runs(v_children, jsonb_build_object('code', 'parent_failed'));
    END IF;
    PERFORM flowd_map_children_done(p_runs);
END $$;

-- Marks steps finished (succeeded, skipped, or failed with continue_on_failure) and carries the
-- consequences: dependents whose needs are all met become ready (or skipped, when every need was
-- skipped), and runs whose steps are all finished succeed. Loops because skipping propagates. The
-- runs must already be locked.
CREATE FUNCTION flowd_finish_steps(p_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_ids  bigint[] := p_ids;
    v_all  bigint[] := p_ids;   -- every step finished here, skipped dependents included
BEGIN
    WHILE v_ids IS NOT NULL AND cardinality(v_ids) > 0 LOOP
        WITH grouped AS (
            SELECT f.run_id, dep AS didx, count(*) AS n,
                   count(*) FILTER (WHERE f.state = 'skipped') AS nskipped
              FROM steps f CROSS JOIN unnest(f.dependents) AS dep
             WHERE f.id = ANY (v_ids) AND cardinality(f.dependents) > 0
             GROUP BY f.run_id, dep),
        deps AS (
            -- a dependent that becomes ready now and has a window SQL can place is placed in it
            SELECT g.*, CASE WHEN d.send_window IS NOT NULL AND d.needs_left = g.n
                             THEN flowd_window_next(v_now + d.delay_ms * interval '1 millisecond',
                                                    d.send_window) END AS at
              FROM grouped g JOIN steps d ON d.run_id = g.run_id AND d.idx = g.didx),
        upd AS (
            UPDATE steps s
               SET needs_left = s.needs_left - deps.n,
                   needs_skipped = s.needs_skipped + deps.nskipped,
                   state = CASE WHEN s.needs_left - deps.n > 0 THEN 'pending'
                                WHEN s.needs_skipped + deps.nskipped = s.nneeds THEN 'skipped'
                                ELSE 'ready' END,
                   output = CASE WHEN s.needs_left - deps.n = 0
                                  AND s.needs_skipped + deps.nskipped = s.nneeds
                                 THEN '{"reason":"needs skipped"}'::jsonb END,
                   ready_at = CASE WHEN s.needs_left - deps.n = 0 THEN v_now END,
                   finished_at = CASE WHEN s.needs_left - deps.n = 0
                                       AND s.needs_skipped + deps.nskipped = s.nneeds
                                      THEN v_now END,
                   run_at = coalesce(deps.at, v_now + s.delay_ms * interval '1 millisecond'),
                   scheduled = deps.at IS NOT NULL
              FROM deps
             WHERE s.run_id = deps.run_id AND s.idx = deps.didx AND s.state = 'pending'
            RETURNING s.id, s.state, s.run_id, s.tenant_id, s.key, s.run_at, s.scheduled,
                      s.delay_ms, s.send_window),
        pushed AS (
            -- dependents their window moved past their natural start get a step.scheduled event
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT upd.run_id, upd.tenant_id, v_now, 'step.scheduled', upd.key,
                   jsonb_build_object('run_at', flowd_ms(upd.run_at), 'tz', upd.send_window->>'tz')
              FROM upd
             WHERE upd.scheduled AND upd.run_at > v_now + upd.delay_ms * interval '1 millisecond')
        SELECT array_agg(upd.id) FILTER (WHERE upd.state = 'skipped') INTO v_ids FROM upd;

        IF v_ids IS NOT NULL THEN
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT s.run_id, s.tenant_id, v_now, 'step.skipped', s.key, '{"reason":"needs skipped"}'
              FROM steps s WHERE s.id = ANY (v_ids);
            v_all := v_all || v_ids;
        END IF;
    END LOOP;

    -- progress and completion of the runs involved: each step finishes exactly once, so the
    -- count moves by what finished here
    WITH counts AS (
        SELECT s.run_id, count(*) AS n FROM steps s WHERE s.id = ANY (v_all) GROUP BY s.run_id),
    upd AS (
        UPDATE runs r
           SET steps_done = r.steps_done + c.n,
               state = CASE WHEN r.steps_done + c.n >= r.steps_total
                             AND r.state IN ('queued', 'running') THEN 'succeeded' ELSE r.state END,
               finished_at = CASE WHEN r.steps_done + c.n >= r.steps_total
                                   AND r.state IN ('queued', 'running') THEN v_now
                                  ELSE r.finished_at END,
               output = CASE WHEN r.steps_done + c.n >= r.steps_total
                              AND r.state IN ('queued', 'running') THEN (
                   SELECT coalesce(jsonb_object_agg(s.key, s.output), '{}')
                     FROM steps s
                    WHERE s.run_id = r.id AND s.state = 'succeeded' AND cardinality(s.dependents) = 0)
                   ELSE r.output END
          FROM counts c
         WHERE r.id = c.run_id
        RETURNING r.id, r.tenant_id, r.state, r.finished_at)
    , ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type)
        SELECT upd.id, upd.tenant_id, v_now, 'run.succeeded' FROM upd
         WHERE upd.state = 'succeeded' AND upd.finished_at = v_now)
    SELECT array_agg(upd.id) FILTER (WHERE upd.state = 'succeeded' AND upd.finished_at = v_now)
      INTO v_ids FROM upd;
    IF v_ids IS NOT NULL THEN
        DELETE FROM run_cancel_on WHERE run_id = ANY (v_ids);
        PERFORM flowd_map_children_done(v_ids);
    END IF;
END $$;

-- Applies a batch of attempt outcomes reported by one worker. p_results is a JSON array of
-- objects with the step's "id" and its run "r", and
--   {"id": step, "s": "ok", "o": output}
--   {"id": step, "s": "skip", "o": {"reason": ...}}                 (condition false, suppressed)
--   {"id": step, "s": "fail", "e": {"code", "message"}, "permanent": bool, "after_ms": n}
--   {"id": step, "s": "snooze", "at_ms": epoch ms, "sched": bool}  (durable timers, `at`)
--   {"id": step, "s": "window", "after_ms", "tz", "start_min", "end_min", "days"}  (sending hours)
--   {"id": step, "s": "wait", "event", "key", "until_ms"}           (wait_event)
--   {"id": step, "s": "map", "workflow" | "def"+"digest", "inputs", "concurrency", "allow_failures"}
-- Outcomes of steps this owner no longer holds (lease lost, run cancelled) are ignored.
CREATE FUNCTION flowd_apply(p_owner text, p_results jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_runs     bigint[];
    v_kinds    text[];     -- the kinds of outcome in this batch
    v_finished bigint[];
    v_failed   bigint[];
    v_went_on  bigint[];   -- failed for good, but continue_on_failure: dependents go on
BEGIN
    IF p_results IS NULL OR jsonb_array_length(p_results) = 0 THEN
        RETURN;
    END IF;
    -- workers report each step's run ("r"), so the runs are locked (in id order) without a lookup
    SELECT array_agg(DISTINCT (x->>'r')::bigint), array_agg(DISTINCT x->>'s')
      INTO v_runs, v_kinds FROM jsonb_array_elements(p_results) x;
    PERFORM 1 FROM runs WHERE id = ANY (v_runs) ORDER BY id FOR UPDATE;

    -- "(...) IS TRUE" keeps the planner from driving these updates through the partial index on
    -- running steps (it would re-scan the whole batch per row); the primary key drives them.
    WITH r AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(p_results)
            AS x(id bigint, s text, o jsonb, e jsonb, permanent boolean, after_ms bigint,
                 at_ms bigint, sched boolean)),
    fin AS (
        UPDATE steps st
           SET state = CASE WHEN r.s = 'ok' THEN 'succeeded' ELSE 'skipped' END,
               output = coalesce(r.o, '{}'), error = NULL, finished_at = v_now,
               lease_owner = NULL, lease_expires_at = NULL
          FROM r
         WHERE r.s IN ('ok', 'skip') AND st.id = r.id
           AND (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE
        RETURNING st.id, st.run_id, st.tenant_id, st.key, st.state, st.output),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT fin.run_id, fin.tenant_id, v_now, 'step.' || fin.state, fin.key,
               CASE WHEN fin.state = 'skipped' THEN fin.output END
          FROM fin)
    SELECT array_agg(fin.id) INTO v_finished FROM fin;

    -- each kind of outcome costs a pass over the batch only when the batch has it
    IF 'fail' = ANY (v_kinds) THEN
        WITH r AS MATERIALIZED (
            SELECT * FROM jsonb_to_recordset(p_results)
                AS x(id bigint, s text, e jsonb, permanent boolean, after_ms bigint)
             WHERE x.s = 'fail'),
        cur AS (
            SELECT st.id, w.def->'steps'->st.idx AS d, st.attempts, st.max_attempts,
                   r.e, coalesce(r.permanent, false) AS permanent, coalesce(r.after_ms, 0) AS after_ms
              FROM r JOIN steps st ON st.id = r.id
              JOIN runs ru ON ru.id = st.run_id JOIN workflows w ON w.id = ru.workflow_id
             WHERE (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE),
        upd AS (
            UPDATE steps st
               SET state = CASE WHEN NOT cur.permanent AND cur.attempts < cur.max_attempts
                                THEN 'ready' ELSE 'failed' END,
                   error = cur.e || jsonb_build_object('attempt', cur.attempts),
                   run_at = v_now + greatest(
                       cur.after_ms,
                       least((cur.d->>'backoff_max_ms')::double precision,
                             (cur.d->>'backoff_initial_ms')::double precision
                             * power((cur.d->>'backoff_multiplier')::double precision, cur.attempts - 1))
                       * (1 + (cur.d->>'jitter')::double precision * (2 * random() - 1))
                   ) * interval '1 millisecond',
                   finished_at = CASE WHEN NOT cur.permanent AND cur.attempts < cur.max_attempts
                                      THEN NULL ELSE v_now END,
                   -- a step that may fail without failing its run exposes the error as its output
                   output = CASE WHEN (cur.d->>'continue_on_failure')::boolean
                                 THEN jsonb_build_object('error', cur.e) END,
                   lease_owner = NULL, lease_expires_at = NULL
              FROM cur WHERE st.id = cur.id
            RETURNING st.id, st.run_id, st.tenant_id, st.key, st.state, st.error, st.run_at,
                      coalesce((cur.d->>'continue_on_failure')::boolean, false) AS go_on),
        ev AS (
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT upd.run_id, upd.tenant_id, v_now,
                   CASE WHEN upd.state = 'failed' THEN 'step.failed' ELSE 'step.retrying' END,
                   upd.key,
                   CASE WHEN upd.state = 'failed' THEN upd.error
                        ELSE upd.error || jsonb_build_object('retry_at', upd.run_at) END
              FROM upd)
        SELECT array_agg(DISTINCT upd.run_id) FILTER (WHERE upd.state = 'failed' AND NOT upd.go_on),
               array_agg(upd.id) FILTER (WHERE upd.state = 'failed' AND upd.go_on)
          INTO v_failed, v_went_on FROM upd;
    END IF;

    IF 'snooze' = ANY (v_kinds) THEN
        WITH r AS MATERIALIZED (
            SELECT * FROM jsonb_to_recordset(p_results) AS x(id bigint, s text, at_ms bigint, sched boolean)
             WHERE x.s = 'snooze')
        UPDATE steps st
           SET state = 'ready', attempts = st.attempts - 1,
               run_at = to_timestamp(r.at_ms / 1000.0), scheduled = coalesce(r.sched, st.scheduled),
               lease_owner = NULL, lease_expires_at = NULL
          FROM r
         WHERE st.id = r.id AND (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE;
    END IF;

    IF 'window' = ANY (v_kinds) THEN
        PERFORM flowd_window_steps(p_owner, p_results);
    END IF;
    IF 'wait' = ANY (v_kinds) THEN
        PERFORM flowd_wait_steps(p_owner, p_results);
    END IF;
    IF 'map' = ANY (v_kinds) THEN
        PERFORM flowd_map_start(p_owner, x) FROM jsonb_array_elements(p_results) AS x
          WHERE x->>'s' = 'map';
    END IF;

    IF v_finished IS NOT NULL OR v_went_on IS NOT NULL THEN
        PERFORM flowd_finish_steps(coalesce(v_finished, '{}') || coalesce(v_went_on, '{}'));
    END IF;
    IF v_failed IS NOT NULL THEN
        PERFORM flowd_fail_runs(v_failed, jsonb_build_object('code', 'step_failed',
                                'message', 'a step failed for good'));
    END IF;
END $$;

CREATE TYPE flowd_claimed AS (
    id bigint, run_id bigint, tenant_id bigint, key text, kind text, attempts integer,
    ready_at_ms bigint, now_ms bigint, scheduled boolean, def jsonb, ctx jsonb);

-- Claims up to p_want due steps for p_owner, oldest first within priority, skipping rows other
-- claimers hold. Returns what a worker needs to run each one: the step's normalized definition
-- and the template context (run input, run id and the outputs of the steps it depends on).
CREATE FUNCTION flowd_claim(p_owner text, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_claimed
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_caps jsonb;        -- {tenant: steps it may still start} for tenants with max_running
    v_ids  bigint[];
    v_runs bigint[];
    v_late bigint[];
BEGIN
    -- Per-tenant caps keep one tenant's big batch from taking every slot. Tenants at their cap are
    -- left out of the scan; the others get at most their remaining room from this claim.
    IF EXISTS (SELECT 1 FROM tenants WHERE max_running IS NOT NULL) THEN
        -- claimers counting the same room at once would together overshoot it: with caps in
        -- force, claims take turns (held to this transaction's end, just after the claim)
        PERFORM pg_advisory_xact_lock(hashtext('flowd_tenant_caps'));
        SELECT jsonb_object_agg(t.id::text, t.max_running - (
                   SELECT count(*) FROM steps r WHERE r.tenant_id = t.id AND r.state = 'running'))
          INTO v_caps FROM tenants t WHERE t.max_running IS NOT NULL;
    END IF;
    WITH c0 AS MATERIALIZED (
        SELECT s.id, s.tenant_id, s.priority, s.run_at FROM steps s
         WHERE s.state = 'ready' AND s.run_at <= v_now
           AND (v_caps IS NULL OR coalesce((v_caps->>(s.tenant_id::text))::integer, 1) > 0)
           AND (s.ckey IS NULL OR NOT EXISTS (
                    SELECT 1 FROM steps o
                     WHERE o.tenant_id = s.tenant_id AND o.ckey = s.ckey AND o.id <> s.id
                       AND o.state IN ('pending', 'ready', 'running', 'waiting')
                       AND (o.id < s.id OR o.state = 'running')))
         ORDER BY s.priority DESC, s.run_at, s.id
         LIMIT p_want
           FOR UPDATE SKIP LOCKED)
    SELECT array_agg(x.id) INTO v_ids FROM (
        SELECT c0.id, c0.tenant_id,
               row_number() OVER (PARTITION BY c0.tenant_id
                                  ORDER BY c0.priority DESC, c0.run_at, c0.id) AS rn
          FROM c0) x
     WHERE v_caps IS NULL OR v_caps->(x.tenant_id::text) IS NULL
        OR x.rn <= (v_caps->>(x.tenant_id::text))::integer;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;

    -- Sending hours are a hard rule: a step whose window closed while it waited (a backlog, the
    -- engine down, the test clock moved) goes back to sleep until the next opening.
    IF EXISTS (SELECT 1 FROM steps s WHERE s.id = ANY (v_ids) AND s.send_window IS NOT NULL) THEN
        WITH late AS (
            UPDATE steps s SET run_at = x.t
              FROM (SELECT w.id, flowd_window_next(v_now, w.send_window) AS t FROM steps w
                     WHERE w.id = ANY (v_ids) AND w.send_window IS NOT NULL) x
             WHERE s.id = x.id AND x.t > v_now
            RETURNING s.id, s.run_id, s.tenant_id, s.key, s.run_at, s.send_window),
        ev AS (
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT late.run_id, late.tenant_id, v_now, 'step.scheduled', late.key,
                   jsonb_build_object('run_at', flowd_ms(late.run_at),
                                      'tz', late.send_window->>'tz', 'late', true)
              FROM late)
        SELECT array_agg(late.id) INTO v_late FROM late;
        IF v_late IS NOT NULL THEN
            v_ids := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT unnest(v_late));
            IF cardinality(v_ids) = 0 THEN
                RETURN;
            END IF;
        END IF;
    END IF;

    WITH u AS (
        UPDATE steps s
           SET state = 'running', attempts = s.attempts + 1, lease_owner = p_owner,
               lease_expires_at = now() + p_lease_ms * interval '1 millisecond', started_at = v_now
         WHERE s.id = ANY (v_ids)
        RETURNING s.run_id, s.tenant_id, s.key, s.attempts),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT u.run_id, u.tenant_id, v_now, 'step.started', u.key,
               jsonb_build_object('attempt', u.attempts) FROM u)
    SELECT array_agg(DISTINCT u.run_id) INTO v_runs FROM u;

    -- another claimer may be starting the same run: whoever locks it first marks it started
    WITH started AS (
        UPDATE runs r SET state = 'running', started_at = v_now
         WHERE r.id IN (SELECT x.id FROM runs x WHERE x.id = ANY (v_runs) AND x.state = 'queued'
                         ORDER BY x.id FOR UPDATE SKIP LOCKED)
        RETURNING r.id, r.tenant_id)
    INSERT INTO run_events (run_id, tenant_id, at, type)
    SELECT started.id, started.tenant_id, v_now, 'run.started' FROM started;

    RETURN QUERY
    SELECT u.id, u.run_id, u.tenant_id, u.key, u.kind, u.attempts,
           (extract(epoch FROM coalesce(u.ready_at, v_now)) * 1000)::bigint,
           (extract(epoch FROM v_now) * 1000)::bigint,
           u.scheduled, sd.d,
           jsonb_build_object(
               'input', ru.input,
               'run', jsonb_build_object('id', ru.id, 'workflow', w.name),
               'steps', CASE WHEN jsonb_array_length(sd.d->'deps') = 0 THEN '{}'::jsonb ELSE (
                   SELECT coalesce(jsonb_object_agg(d.key, jsonb_build_object('output', d.output)), '{}')
                     FROM steps d
                    WHERE d.run_id = u.run_id AND d.state IN ('succeeded', 'failed')
                      AND d.key IN (SELECT jsonb_array_elements_text(sd.d->'deps'))) END)
      FROM steps u JOIN runs ru ON ru.id = u.run_id JOIN workflows w ON w.id = ru.workflow_id
      CROSS JOIN LATERAL (SELECT w.def->'steps'->u.idx AS d) sd
     WHERE u.id = ANY (v_ids);
END $$;

-- One worker round trip: apply the finished attempts, then claim more.
CREATE FUNCTION flowd_cycle(p_owner text, p_results jsonb, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_claimed
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_apply(p_owner, p_results);
    PERFORM flowd_expire_waits(100);
    IF p_want > 0 THEN
        RETURN QUERY SELECT * FROM flowd_claim(p_owner, p_want, p_lease_ms);
    END IF;
END $$;

-- Milliseconds until the next ready step is due (0 when one is due now), NULL when none waits.
CREATE FUNCTION flowd_next_due_ms() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT greatest(0, (extract(epoch FROM (min(t) - flowd_now())) * 1000)::bigint)
      FROM (SELECT min(run_at) AS t FROM steps WHERE state = 'ready'
            UNION ALL
            SELECT min(run_at) FROM steps WHERE state = 'waiting' AND wait_event IS NOT NULL) x
$$;

-- Extends the leases of the steps p_owner is running, named by id: a claim whose answer the
-- worker never received (the connection died after the commit) is held by this owner but not in
-- its hands, and must expire so the reaper gives it to someone.
CREATE FUNCTION flowd_heartbeat(p_owner text, p_lease_ms integer, p_ids bigint[]) RETURNS integer
LANGUAGE sql AS $$
    WITH u AS (
        UPDATE steps SET lease_expires_at = now() + p_lease_ms * interval '1 millisecond'
         WHERE id = ANY (p_ids) AND state = 'running' AND lease_owner = p_owner RETURNING 1)
    SELECT count(*)::integer FROM u
$$;

-- Leases are measured in real time (now()), not on the engine clock: they are about whether a
-- process is alive, and moving the test clock must not expire the work in flight.
-- Returns steps whose lease expired (their worker died or lost the database) to ready, counting
-- the attempt they used; a step out of attempts fails, and its run with it.
CREATE FUNCTION flowd_reap(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := flowd_now();
    v_n      integer;
    v_failed bigint[];
BEGIN
    PERFORM 1 FROM runs
      WHERE id IN (SELECT s.run_id FROM steps s
                    WHERE s.state = 'running' AND s.lease_expires_at < now() LIMIT p_limit)
      ORDER BY id FOR UPDATE;
    WITH x AS (
        SELECT s.id FROM steps s
         WHERE s.state = 'running' AND s.lease_expires_at < now()
         LIMIT p_limit FOR UPDATE SKIP LOCKED),
    upd AS (
        UPDATE steps s
           SET state = CASE WHEN s.attempts < s.max_attempts THEN 'ready' ELSE 'failed' END,
               run_at = v_now, lease_owner = NULL, lease_expires_at = NULL,
               error = jsonb_build_object('code', 'lease_expired', 'attempt', s.attempts,
                                          'message', 'the worker running this attempt stopped'),
               finished_at = CASE WHEN s.attempts < s.max_attempts THEN NULL ELSE v_now END
          FROM x WHERE s.id = x.id
        RETURNING s.id, s.run_id, s.tenant_id, s.key, s.state, s.error),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT upd.run_id, upd.tenant_id, v_now,
               CASE WHEN upd.state = 'failed' THEN 'step.failed' ELSE 'step.retrying' END,
               upd.key, upd.error FROM upd)
    SELECT count(*), array_agg(DISTINCT upd.run_id) FILTER (WHERE upd.state = 'failed')
      INTO v_n, v_failed FROM upd;
    IF v_failed IS NOT NULL THEN
        PERFORM flowd_fail_runs(v_failed, jsonb_build_object('code', 'step_failed',
                                'message', 'a step ran out of attempts'));
    END IF;
    IF v_n > 0 THEN
        PERFORM pg_notify('flowd_ready', '');
    END IF;
    RETURN v_n;
END $$;

-- Test mode only (the command line refuses otherwise): moves every process's clock forward.
CREATE FUNCTION flowd_clock_advance(p_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_offset bigint;
BEGIN
    IF p_ms < 0 THEN
        RAISE EXCEPTION 'the clock only moves forward' USING ERRCODE = 'P0001';
    END IF;
    UPDATE flowd_clock SET offset_ms = offset_ms + p_ms RETURNING offset_ms INTO v_offset;
    PERFORM pg_notify('flowd_ready', 'clock');
    RETURN v_offset;
END $$;
