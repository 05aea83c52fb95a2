-- sql/graph.sql: Workflow-graph semantics on top of the queue: waits for outside events and their
-- timeouts, cancel_on, cancelling and retrying runs, and map fan-out.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Waits whose timeout passed succeed with {"timed_out": true}, so later steps can branch on it.
CREATE OR REPLACE FUNCTION flowd_expire_waits(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := flowd_now();
    v_ids bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM steps WHERE state = 'waiting' AND wait_event IS NOT NULL
                                         AND run_at <= v_now) THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM runs
      WHERE id IN (SELECT s.run_id FROM steps s WHERE s.state = 'waiting'
                      AND s.wait_event IS NOT NULL AND s.run_at <= v_now LIMIT p_limit)
      ORDER BY id FOR UPDATE;
    WITH x AS (
        SELECT s.id FROM steps s
         WHERE s.state = 'waiting' AND s.wait_event IS NOT NULL AND s.run_at <= v_now
         LIMIT p_limit FOR UPDATE SKIP LOCKED),
    u AS (
        UPDATE steps s SET state = 'succeeded', output = '{"timed_out": true}', finished_at = v_now
          FROM x WHERE s.id = x.id
        RETURNING s.id, s.run_id, s.tenant_id, s.key),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT u.run_id, u.tenant_id, v_now, 'step.succeeded', u.key, '{"timed_out": true}' FROM u)
    SELECT array_agg(u.id) INTO v_ids FROM u;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM flowd_finish_steps(v_ids);
    RETURN cardinality(v_ids);
END $$;

-- Cancels runs: nothing new starts, steps in flight are told to stop (NOTIFY flowd_cancel with the
-- run id) and end cancelled, and the children of their map steps are cancelled too.
CREATE OR REPLACE FUNCTION flowd_cancel_runs(p_runs bigint[], p_reason jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_ids      bigint[];
    v_tenants  bigint[];
    v_children bigint[];
    v_run      bigint;
BEGIN
    PERFORM 1 FROM runs WHERE id = ANY (p_runs) ORDER BY id FOR UPDATE;
    WITH u AS (
        UPDATE runs SET state = 'cancelled', error = p_reason, finished_at = v_now
         WHERE id = ANY (p_runs) AND state IN ('queued', 'running')
        RETURNING id, tenant_id),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, data)
        SELECT u.id, u.tenant_id, v_now, 'run.cancelled', p_reason FROM u)
    SELECT array_agg(u.id), array_agg(u.tenant_id) INTO v_ids, v_tenants FROM u;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM flowd_count_run_ends(v_tenants, 'cancelled');
    FOR v_run IN SELECT DISTINCT s.run_id FROM steps s
                  WHERE s.run_id = ANY (v_ids) AND s.state = 'running' LOOP
        PERFORM pg_notify('flowd_cancel', v_run::text);
    END LOOP;
    WITH c AS (
        UPDATE steps SET state = 'cancelled', finished_at = v_now,
                         lease_owner = NULL, lease_expires_at = NULL
         WHERE run_id = ANY (v_ids) AND state IN ('pending', 'ready', 'running', 'waiting', 'blocked')
        RETURNING run_id, tenant_id, key)
    INSERT INTO run_events (run_id, tenant_id, at, type, step_key)
    SELECT c.run_id, c.tenant_id, v_now, 'step.cancelled', c.key FROM c;
    DELETE FROM run_cancel_on WHERE run_id = ANY (v_ids);

    SELECT array_agg(r.id) INTO v_children FROM runs r
     WHERE r.parent_step_id IN (SELECT s.id FROM steps s WHERE s.run_id = ANY (v_ids))
       AND r.state IN ('queued', 'running');
    IF v_children IS NOT NULL THEN
        PERFORM flowd_cancel_runs(v_children, jsonb_build_object('code', 'parent_cancelled'));
    END IF;
    PERFORM flowd_map_children_done(v_ids);
    RETURN cardinality(v_ids);
END $$;

-- Runs started by an event's triggers have their input checked before anything is written
-- (docs/workflows.md, "Input checks"). The input check is JSON Schema, evaluated in C
-- (engine/jschema.h), so the caller first reads the triggered versions with flowd_event_triggers,
-- checks the input each would get, and then applies the event with flowd_event_to naming exactly
-- the versions it checked. A version registered in between is not started by this event, as if
-- the event had arrived a moment earlier.

-- The latest version of each workflow of the tenant that has p_name as a trigger, with what its
-- runs' input is checked against (NULL: nothing).
CREATE OR REPLACE FUNCTION flowd_event_triggers(p_tenant bigint, p_name text)
RETURNS TABLE (workflow_id bigint, workflow text, version integer, input_check jsonb)
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.name, t.version, nullif(t.def->'input_check', 'null')
      FROM (SELECT DISTINCT ON (w.name) w.id, w.name, w.version, w.def FROM workflows w
             WHERE w.tenant_id = p_tenant ORDER BY w.name, w.version DESC) t
     WHERE t.def->'triggers' @> jsonb_build_array(jsonb_build_object('event', p_name))
     ORDER BY t.name
$$;

-- Stores an outside event, cancels the runs that declared cancel_on for it, resumes the steps
-- waiting on it, and starts a run of each of exactly the workflow versions p_workflows (those of
-- the tenant that have the trigger; input {"event": {"name", "key", "data"}}). Returns how many
-- of each. The runs it starts are taken from the tenant's runs_per_month first: without room,
-- SQLSTATE FL429 (flowd_quota_take_runs) and nothing of the event is applied.
CREATE OR REPLACE FUNCTION flowd_event_to(p_tenant bigint, p_name text, p_key text, p_data jsonb,
                                          p_workflows bigint[],
                                          OUT resumed integer, OUT cancelled integer, OUT started integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_runs bigint[];
    v_ids  bigint[];
    v_wf   bigint;
    v_wfs  bigint[];
BEGIN
    v_wfs := ARRAY(
        SELECT w.id FROM workflows w
         WHERE w.id = ANY (p_workflows) AND w.tenant_id = p_tenant
           AND w.def->'triggers' @> jsonb_build_array(jsonb_build_object('event', p_name))
         ORDER BY w.name);
    IF cardinality(v_wfs) > 0 THEN
        PERFORM flowd_quota_take_runs(p_tenant, cardinality(v_wfs));
    END IF;
    INSERT INTO events (tenant_id, name, key, data, received_at)
    VALUES (p_tenant, p_name, p_key, coalesce(p_data, '{}'), v_now);

    SELECT array_agg(c.run_id) INTO v_runs FROM run_cancel_on c
     WHERE c.tenant_id = p_tenant AND c.event = p_name AND c.key = p_key;
    cancelled := 0;
    IF v_runs IS NOT NULL THEN
        cancelled := flowd_cancel_runs(v_runs, jsonb_build_object(
            'code', 'cancel_on', 'event', p_name, 'key', p_key));
    END IF;

    PERFORM 1 FROM runs
      WHERE id IN (SELECT s.run_id FROM steps s
                    WHERE s.tenant_id = p_tenant AND s.state = 'waiting'
                      AND s.wait_event = p_name AND s.wait_key = p_key)
      ORDER BY id FOR UPDATE;
    WITH u AS (
        UPDATE steps SET state = 'succeeded', output = coalesce(p_data, '{}'), finished_at = v_now
         WHERE tenant_id = p_tenant AND state = 'waiting' AND wait_event = p_name
           AND wait_key = p_key
        RETURNING id, run_id, tenant_id, key),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT u.run_id, u.tenant_id, v_now, 'step.succeeded', u.key,
               jsonb_build_object('event', p_name) FROM u)
    SELECT array_agg(u.id) INTO v_ids FROM u;
    resumed := coalesce(cardinality(v_ids), 0);
    IF v_ids IS NOT NULL THEN
        PERFORM flowd_finish_steps(v_ids);
        PERFORM pg_notify('flowd_ready', '');
    END IF;

    started := 0;
    FOREACH v_wf IN ARRAY v_wfs
    LOOP
        PERFORM flowd_create_runs(p_tenant, v_wf, jsonb_build_array(jsonb_build_object(
                    'event', jsonb_build_object('name', p_name, 'key', p_key,
                                                'data', coalesce(p_data, '{}')))),
                    0, NULL, NULL, NULL, NULL);
        started := started + 1;
    END LOOP;
END $$;

-- flowd_event_to with the latest versions, unchecked, for the callers that cannot check in C:
-- provider webhooks applied in SQL. What the provider tells has happened (an inbound message), so
-- a tenant whose runs_per_month has no room for the runs it would start still gets the rest of
-- the event (waits resumed, cancel_on); the runs are not started, and a warning says so.
CREATE OR REPLACE FUNCTION flowd_event(p_tenant bigint, p_name text, p_key text, p_data jsonb,
                                       OUT resumed integer, OUT cancelled integer,
                                       OUT started integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_wfs bigint[] := ARRAY(SELECT workflow_id FROM flowd_event_triggers(p_tenant, p_name));
BEGIN
    BEGIN
        SELECT * INTO resumed, cancelled, started
          FROM flowd_event_to(p_tenant, p_name, p_key, p_data, v_wfs);
    EXCEPTION WHEN SQLSTATE 'FL429' THEN
        RAISE WARNING 'event % of tenant %: no run started: %', p_name, p_tenant, SQLERRM;
        SELECT * INTO resumed, cancelled, started
          FROM flowd_event_to(p_tenant, p_name, p_key, p_data, '{}');
    END;
END $$;

-- Retries a failed or cancelled run: failed steps and those cancelled because of them start
-- over; succeeded steps keep their outputs and do not run again.
CREATE OR REPLACE FUNCTION flowd_retry_run(p_tenant bigint, p_run bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_run   record;
    v_n     integer;
    v_now   timestamptz := flowd_now();
BEGIN
    SELECT r.*, w.def INTO v_run FROM runs r JOIN workflows w ON w.id = r.workflow_id
     WHERE r.id = p_run AND r.tenant_id = p_tenant FOR UPDATE OF r;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', p_run USING ERRCODE = 'P0002';
    END IF;
    IF v_run.state NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'run % is %: only failed or cancelled runs can be retried', p_run, v_run.state
            USING ERRCODE = '55000';
    END IF;
    WITH u AS (
        UPDATE steps
           SET state = CASE WHEN needs_left = 0 THEN 'ready' ELSE 'pending' END,
               attempts = 0, error = NULL, output = NULL, run_at = v_now, finished_at = NULL,
               ready_at = CASE WHEN needs_left = 0 THEN v_now END, scheduled = false,
               wait_event = NULL, wait_key = NULL
         WHERE run_id = p_run AND state IN ('failed', 'cancelled')
        RETURNING 1)
    SELECT count(*) INTO v_n FROM u;
    UPDATE runs SET state = 'running', error = NULL, finished_at = NULL WHERE id = p_run;
    INSERT INTO run_cancel_on (run_id, tenant_id, event, key)
    SELECT p_run, p_tenant, c->>'event', flowd_render_key(c->>'key', v_run.input, p_run)
      FROM jsonb_array_elements(coalesce(v_run.def->'cancel_on', '[]')) AS c
     WHERE flowd_render_key(c->>'key', v_run.input, p_run) IS NOT NULL
    ON CONFLICT DO NOTHING;
    INSERT INTO run_events (run_id, tenant_id, at, type, data)
    VALUES (p_run, p_tenant, v_now, 'run.retried', jsonb_build_object('steps', v_n));
    PERFORM pg_notify('flowd_ready', '');
    RETURN v_n;
END $$;

-- Starts a map step: records its items and starts the first `concurrency` children. On a retry
-- of the run, only the items that did not succeed run again.
CREATE OR REPLACE FUNCTION flowd_map_start(p_owner text, p_result jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_wf   bigint;
    v_now  timestamptz := flowd_now();
BEGIN
    SELECT s.id, s.run_id, s.tenant_id, s.key INTO v_step FROM steps s
     WHERE s.id = (p_result->>'id')::bigint AND s.state = 'running' AND s.lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_result ? 'def' THEN
        SELECT f.id INTO v_wf FROM flowd_register_workflow(v_step.tenant_id,
               p_result->'def'->>'name', p_result->>'digest', p_result->'def', p_result->'def') f;
    ELSE
        SELECT w.id INTO v_wf FROM workflows w
         WHERE w.tenant_id = v_step.tenant_id AND w.name = p_result->>'workflow'
         ORDER BY w.version DESC LIMIT 1;
        IF NOT FOUND THEN
            PERFORM flowd_fail_step(p_owner, v_step.id, jsonb_build_object(
                'code', 'unknown_workflow', 'field', '/input/workflow',
                'message', format('no workflow named %s is registered', p_result->>'workflow')));
            RETURN;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM maps WHERE step_id = v_step.id) THEN
        UPDATE maps SET workflow_id = v_wf WHERE step_id = v_step.id;
        UPDATE map_items SET state = 'pending', child_run_id = NULL, result = NULL
         WHERE step_id = v_step.id AND state IN ('failed', 'cancelled');
    ELSE
        INSERT INTO maps (step_id, tenant_id, workflow_id, concurrency, allow_failures)
        VALUES (v_step.id, v_step.tenant_id, v_wf, (p_result->>'concurrency')::integer,
                coalesce((p_result->>'allow_failures')::boolean, false));
        INSERT INTO map_items (step_id, idx, input)
        SELECT v_step.id, (i.n - 1)::integer, i.value
          FROM jsonb_array_elements(p_result->'inputs') WITH ORDINALITY AS i(value, n);
    END IF;
    UPDATE steps SET state = 'waiting', wait_event = NULL, wait_key = NULL,
                     lease_owner = NULL, lease_expires_at = NULL
     WHERE id = v_step.id;
    INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
    VALUES (v_step.run_id, v_step.tenant_id, v_now, 'step.waiting', v_step.key,
            jsonb_build_object('items', jsonb_array_length(p_result->'inputs')));
    PERFORM flowd_map_advance(v_step.id);
END $$;

-- Starts children while the map has room, or finishes the map step when every item is done.
CREATE OR REPLACE FUNCTION flowd_map_advance(p_step bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_map     record;
    v_free    integer;
    v_inputs  jsonb;
    v_indexes integer[];
    v_ids     bigint[];
    v_left    integer;
BEGIN
    -- Serializes the advances of one map: two workers finishing children of the same map at
    -- once would otherwise both see the same free slots and pending items and start duplicate
    -- children for them. Statements after the lock see what the other advance committed.
    SELECT m.*, s.run_id, s.priority, s.state AS step_state INTO v_map
      FROM maps m JOIN steps s ON s.id = m.step_id WHERE m.step_id = p_step FOR UPDATE OF m;
    IF NOT FOUND OR v_map.step_state <> 'waiting' THEN
        RETURN;
    END IF;
    SELECT v_map.concurrency - count(*) FILTER (WHERE state = 'running'),
           count(*) FILTER (WHERE state IN ('pending', 'running'))
      INTO v_free, v_left FROM map_items WHERE step_id = p_step;
    IF v_left = 0 THEN
        UPDATE steps SET state = 'succeeded', finished_at = flowd_now(),
               output = jsonb_build_object('results', (
                   SELECT coalesce(jsonb_agg(mi.result ORDER BY mi.idx), '[]')
                     FROM map_items mi WHERE mi.step_id = p_step))
         WHERE id = p_step;
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key)
        SELECT s.run_id, s.tenant_id, flowd_now(), 'step.succeeded', s.key FROM steps s WHERE s.id = p_step;
        PERFORM flowd_finish_steps(ARRAY[p_step]);
        RETURN;
    END IF;
    IF v_free <= 0 THEN
        RETURN;
    END IF;
    SELECT jsonb_agg(x.input ORDER BY x.idx), array_agg(x.idx ORDER BY x.idx)
      INTO v_inputs, v_indexes
      FROM (SELECT idx, input FROM map_items WHERE step_id = p_step AND state = 'pending'
             ORDER BY idx LIMIT v_free) x;
    IF v_inputs IS NULL THEN
        RETURN;
    END IF;
    v_ids := flowd_create_runs(v_map.tenant_id, v_map.workflow_id, v_inputs, v_map.priority, NULL,
                               p_step, v_indexes, NULL);
    UPDATE map_items mi SET state = 'running', child_run_id = r.id
      FROM runs r
     WHERE r.id = ANY (v_ids) AND mi.step_id = p_step AND mi.idx = r.parent_index;
END $$;

-- Records the end of map children (any terminal state) in their parents' items, then moves each
-- parent on: a failed child fails the map (and cancels its siblings) unless failures are allowed.
-- A child's output is read from its steps.
CREATE OR REPLACE FUNCTION flowd_map_children_done(p_runs bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_parents bigint[];
    v_parent  bigint;
    v_failed  integer;
    v_allow   boolean;
    v_sibs    bigint[];
BEGIN
    WITH done AS (
        SELECT r.id, r.state, CASE WHEN r.state = 'succeeded' THEN flowd_run_output(r.id) END AS output,
               r.error, r.parent_step_id, r.parent_index FROM runs r
         WHERE r.id = ANY (p_runs) AND r.parent_step_id IS NOT NULL
           AND r.state IN ('succeeded', 'failed', 'cancelled')),
    u AS (
        UPDATE map_items mi
           SET state = d.state,
               result = CASE WHEN d.state = 'succeeded' THEN d.output
                             ELSE jsonb_build_object('error', coalesce(d.error,
                                  jsonb_build_object('code', d.state)), 'run', d.id) END
          FROM done d
         WHERE mi.step_id = d.parent_step_id AND mi.idx = d.parent_index
           AND mi.child_run_id = d.id AND mi.state = 'running'
        RETURNING mi.step_id)
    SELECT array_agg(DISTINCT u.step_id ORDER BY u.step_id) INTO v_parents FROM u;
    IF v_parents IS NULL THEN
        RETURN;
    END IF;
    FOREACH v_parent IN ARRAY v_parents LOOP
        SELECT m.allow_failures INTO v_allow FROM maps m WHERE m.step_id = v_parent;
        SELECT count(*) INTO v_failed FROM map_items
         WHERE step_id = v_parent AND state IN ('failed', 'cancelled');
        IF v_failed > 0 AND NOT v_allow THEN
            PERFORM 1 FROM steps WHERE id = v_parent AND state = 'waiting';
            IF FOUND THEN
                PERFORM flowd_fail_step(NULL, v_parent, jsonb_build_object(
                    'code', 'map_item_failed', 'message', 'a child run of the map did not succeed',
                    'item', (SELECT min(idx) FROM map_items
                              WHERE step_id = v_parent AND state IN ('failed', 'cancelled'))));
                SELECT array_agg(child_run_id) INTO v_sibs FROM map_items
                 WHERE step_id = v_parent AND state = 'running';
                IF v_sibs IS NOT NULL THEN
                    PERFORM flowd_cancel_runs(v_sibs, jsonb_build_object('code', 'map_failed'));
                END IF;
            END IF;
        ELSE
            PERFORM flowd_map_advance(v_parent);
        END IF;
    END LOOP;
END $$;

-- Cancels one run of the tenant: its JSON afterwards; NULL when not visible; 55000 when finished.
CREATE OR REPLACE FUNCTION flowd_cancel_run(p_tenant bigint, p_run bigint) RETURNS jsonb
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
