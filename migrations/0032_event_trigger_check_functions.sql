-- Runs started by an event's triggers have their input checked before anything is written
-- (docs/workflows.md, "Input checks"). The input check is JSON Schema, evaluated in C
-- (engine/jschema.h), so the caller first reads the triggered versions with flowd_event_triggers,
-- checks the input each would get, and then applies the event with flowd_event_to naming exactly
-- the versions it checked. A version registered in between is not started by this event, as if
-- the event had arrived a moment earlier. flowd_event keeps its meaning (the latest versions,
-- unchecked) for the callers that cannot check in C: provider webhooks applied in SQL.

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

-- flowd_event, starting runs of exactly the workflow versions p_workflows (those of the tenant
-- that have the trigger) instead of the latest ones.
CREATE OR REPLACE FUNCTION flowd_event_to(p_tenant bigint, p_name text, p_key text, p_data jsonb,
                                          p_workflows bigint[],
                                          OUT resumed integer, OUT cancelled integer, OUT started integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_runs bigint[];
    v_ids  bigint[];
    v_wf   bigint;
BEGIN
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
    FOR v_wf IN
        SELECT w.id FROM workflows w
         WHERE w.id = ANY (p_workflows) AND w.tenant_id = p_tenant
           AND w.def->'triggers' @> jsonb_build_array(jsonb_build_object('event', p_name))
         ORDER BY w.name
    LOOP
        PERFORM flowd_create_runs(p_tenant, v_wf, jsonb_build_array(jsonb_build_object(
                    'event', jsonb_build_object('name', p_name, 'key', p_key,
                                                'data', coalesce(p_data, '{}')))),
                    0, NULL, NULL, NULL, NULL);
        started := started + 1;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION flowd_event(p_tenant bigint, p_name text, p_key text, p_data jsonb,
                                       OUT resumed integer, OUT cancelled integer,
                                       OUT started integer)
LANGUAGE sql AS $$
    SELECT * FROM flowd_event_to(p_tenant, p_name, p_key, p_data,
                                 ARRAY(SELECT workflow_id FROM flowd_event_triggers(p_tenant, p_name)))
$$;
