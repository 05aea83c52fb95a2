-- A run's output read from its steps instead of written on the run. A run's output is the outputs
-- of its last steps (those nothing needs) once it has succeeded; the transaction that finished the
-- run wrote them into runs.output, which read every step of the run again and added up to a few
-- hundred bytes of JSON (an LLM answer, say) to a row updated in place (0017). The readers now
-- gather it: a run's status, a map collecting its children, a batch's results page and the CSV
-- export.

-- The output of a succeeded run: {key: output} of its succeeded steps that no step needs.
-- PL/pgSQL so that the plan is kept.
CREATE FUNCTION flowd_run_output(p_run bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_object_agg(s.key, s.output), '{}')
              FROM steps s
             WHERE s.run_id = p_run AND s.state = 'succeeded' AND cardinality(s.dependents) = 0);
END $$;

-- As in 0002, without the run's output.
CREATE OR REPLACE FUNCTION flowd_finish_steps(p_ids bigint[]) RETURNS void
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
                                  ELSE r.finished_at END
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

-- As in 0003, the output read from the steps.
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

-- As in 0004, the output read from the steps.
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

-- As in 0006, the output read from the steps.
CREATE OR REPLACE FUNCTION flowd_batch_results(p_tenant bigint, p_batch bigint, p_after bigint,
                                    p_limit integer)
RETURNS TABLE (id bigint, state text, input text, output text, error text)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.state, r.input::text,
           CASE WHEN r.state = 'succeeded' THEN flowd_run_output(r.id)::text END, r.error::text
      FROM runs r
     WHERE r.batch_id = p_batch AND r.tenant_id = p_tenant AND r.id > p_after
     ORDER BY r.id
     LIMIT p_limit
$$;

ALTER TABLE runs DROP COLUMN output;
