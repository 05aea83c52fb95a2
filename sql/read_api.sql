-- sql/read_api.sql: What the HTTP API reads: runs, their outputs and events, workflows, batches and
-- pages of runs. Each takes the caller's tenant first, so a key of one tenant never reaches another
-- tenant's rows.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- A run the API shows: a queued run whose start time lies ahead is "scheduled".
CREATE OR REPLACE FUNCTION flowd_run_state(p_state text, p_start_at timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_state = 'queued' AND p_start_at > flowd_now() THEN 'scheduled'
                ELSE p_state END
$$;


-- The run as a client sees it; NULL when the tenant cannot see it. PL/pgSQL rather than SQL so
-- that its plan is cached: an SQL function with a FROM clause is planned again on every call.
-- Its output is read from the steps; its steps show their interruptions; it names its schedule
-- and start time, and a delayed run shows as scheduled until it starts (0034); it carries its
-- metadata and its parent run (0036).
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
        'meta', coalesce(r.meta, '{}'),
        'parent', (SELECT ps.run_id FROM steps ps WHERE ps.id = r.parent_step_id),
        'usage', flowd_run_usage(r.id),
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
                     'run_at', CASE WHEN s.state IN ('ready', 'pending', 'blocked') THEN flowd_ms(s.run_at) END,
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
                        ELSE '{}'::jsonb END
                     -- a step with a concurrency key: the key, and the step it queued behind
                     -- (0053) as that step is now
                     || CASE WHEN s.ckey IS NOT NULL THEN jsonb_build_object('concurrency_key',
                            jsonb_build_object('key', s.ckey, 'queued_behind', (
                                SELECT jsonb_build_object('run', b.run_id, 'step', b.key,
                                                          'state', b.state,
                                                          'finished_at', flowd_ms(b.finished_at))
                                  FROM ckey_queue q JOIN steps b ON b.id = q.behind
                                 WHERE q.run_id = s.run_id AND q.step_id = s.id)))
                        ELSE '{}'::jsonb END ORDER BY s.idx) AS list,
                 coalesce(jsonb_agg(s.key ORDER BY s.idx) FILTER (WHERE s.state = 'running'),
                          '[]') AS current,
                 (array_agg(s.phase ORDER BY s.idx)
                      FILTER (WHERE s.state IN ('ready', 'running', 'waiting', 'blocked')
                                AND s.phase IS NOT NULL))[1] AS phase
            FROM steps s WHERE s.run_id = r.id) st
     WHERE r.id = p_run AND r.tenant_id = p_tenant);
END $$;

CREATE OR REPLACE FUNCTION flowd_workflow_json(p_tenant bigint, p_name text, p_version integer)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('name', w.name, 'version', w.version,
                              'created_at', flowd_ms(w.created_at), 'definition', w.source)
      FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_name
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1
$$;

CREATE OR REPLACE FUNCTION flowd_workflows_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('workflows', coalesce(jsonb_agg(x ORDER BY x->>'name'), '[]'))
      FROM (SELECT jsonb_build_object('name', w.name, 'version', max(w.version),
                                      'versions', count(*),
                                      'updated_at', flowd_ms(max(w.created_at))) AS x
              FROM workflows w
             WHERE w.tenant_id = p_tenant AND w.name NOT LIKE 'inline.%'
             GROUP BY w.name) s
$$;

-- The batch with its runs counted by state; NULL when the tenant cannot see it.
CREATE OR REPLACE FUNCTION flowd_batch_json(p_tenant bigint, p_batch bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', b.id, 'workflow', w.name, 'version', w.version,
        'state', CASE WHEN c.queued + c.running > 0 THEN 'running'
                      WHEN c.succeeded = b.total THEN 'succeeded'
                      ELSE 'failed' END,
        'total', b.total, 'queued', c.queued, 'running', c.running, 'succeeded', c.succeeded,
        'failed', c.failed, 'cancelled', c.cancelled,
        'done', b.total - c.queued - c.running,
        'percent', CASE WHEN b.total = 0 THEN 100
                        ELSE floor(100.0 * (b.total - c.queued - c.running) / b.total)::integer END,
        'idempotency_key', b.idempotency_key,
        'usage', (SELECT flowd_usage_json(sum(u.llm_calls)::bigint, sum(u.input_tokens)::bigint,
                                          sum(u.output_tokens)::bigint,
                                          sum(u.cached_tokens)::bigint, sum(u.llm_cost_usd),
                                          sum(u.sends)::bigint, sum(u.segments)::bigint,
                                          sum(u.send_cost_usd))
                    FROM run_usage u WHERE u.batch_id = b.id AND u.tenant_id = p_tenant),
        'created_at', flowd_ms(b.created_at))
      FROM batches b
      JOIN workflows w ON w.id = b.workflow_id
     CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.state = 'queued') AS queued,
               count(*) FILTER (WHERE r.state = 'running') AS running,
               count(*) FILTER (WHERE r.state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE r.state = 'failed') AS failed,
               count(*) FILTER (WHERE r.state = 'cancelled') AS cancelled
          FROM runs r WHERE r.batch_id = b.id AND r.tenant_id = p_tenant) c
     WHERE b.id = p_batch AND b.tenant_id = p_tenant
$$;

-- The tenant's batches, newest first, below id p_before (paging), each as flowd_batch_json
-- (its runs counted by state through runs_batch).
CREATE OR REPLACE FUNCTION flowd_batches_json(p_tenant bigint, p_before bigint, p_limit integer)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('batches', coalesce(jsonb_agg(flowd_batch_json(p_tenant, b.id)
                                                            ORDER BY b.id DESC), '[]'))
      FROM (SELECT x.id FROM batches x
             WHERE x.tenant_id = p_tenant AND (p_before IS NULL OR x.id < p_before)
             ORDER BY x.id DESC LIMIT p_limit) b
$$;

-- One page of a batch's results in run order, after run id p_after. Values are JSON text. The
-- outputs are read from the steps, gathered for the page in one pass (flowd_run_outputs).
CREATE OR REPLACE FUNCTION flowd_batch_results(p_tenant bigint, p_batch bigint, p_after bigint,
                                               p_limit integer)
RETURNS TABLE (id bigint, state text, input text, output text, error text)
LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT r.id, r.state, r.input, r.error
          FROM runs r
         WHERE r.batch_id = p_batch AND r.tenant_id = p_tenant AND r.id > p_after
         ORDER BY r.id
         LIMIT p_limit)
    SELECT p.id, p.state, p.input::text,
           CASE WHEN p.state = 'succeeded' THEN coalesce(o.output, '{}')::text END, p.error::text
      FROM page p
      LEFT JOIN flowd_run_outputs(ARRAY(SELECT x.id FROM page x WHERE x.state = 'succeeded')) o
        ON o.run_id = p.id
     ORDER BY p.id
$$;

-- The WHERE clause of GET /v1/runs for the filters present in p_filter (an object the API
-- checked: workflow, version, state, batch, parent, schedule, meta, q, failed_step, created_after,
-- created_before, finished_after, finished_before). A queued run whose start is still ahead is
-- 'scheduled' (flowd_run_state), as its JSON says. q finds the runs with a metadata value that
-- starts with it, ignoring case: a range of run_search_value (0052), the upper bound being q
-- followed by the highest code point (U+10FFFF, bytes F4 8F BF BF, above every byte any longer
-- value can have there), and starts_with the exact test. Only filters given are in the statement, so
-- each query is planned for what it asks (the metadata GIN index, the recent-runs index) instead
-- of one generic plan with every filter optional. The values stay parameters: the statement
-- reads them from $2 (the filter) and $1 (the tenant).
CREATE OR REPLACE FUNCTION flowd_runs_where(p_filter jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'r.tenant_id = $1'
        || CASE WHEN p_filter ? 'workflow' THEN ' AND w.name = $2->>''workflow''' ELSE '' END
        || CASE WHEN p_filter ? 'version'
                THEN ' AND w.version = ($2->>''version'')::integer' ELSE '' END
        || CASE WHEN p_filter->>'state' IN ('queued', 'scheduled')
                THEN ' AND r.state = ''queued'' AND flowd_run_state(r.state, r.start_at) = $2->>''state'''
                WHEN p_filter ? 'state' THEN ' AND r.state = $2->>''state''' ELSE '' END
        || CASE WHEN p_filter ? 'batch' THEN ' AND r.batch_id = ($2->>''batch'')::bigint' ELSE '' END
        || CASE WHEN p_filter ? 'parent'
                THEN ' AND r.parent_step_id IN (SELECT ps.id FROM steps ps'
                     ' WHERE ps.run_id = ($2->>''parent'')::bigint AND ps.tenant_id = $1)'
                ELSE '' END
        || CASE WHEN p_filter ? 'schedule'
                THEN ' AND r.schedule_id = (SELECT sc.id FROM schedules sc'
                     ' WHERE sc.tenant_id = $1 AND sc.name = $2->>''schedule'')'
                ELSE '' END
        || CASE WHEN p_filter ? 'meta' THEN ' AND r.meta @> ($2->''meta'')' ELSE '' END
        || CASE WHEN p_filter ? 'q'
                THEN ' AND EXISTS (SELECT 1 FROM run_search rs WHERE rs.run_id = r.id'
                     ' AND rs.tenant_id = $1 AND rs.value >= flowd_search_value($2->>''q'')'
                     ' AND rs.value < flowd_search_value($2->>''q'') || E''\xf4\x8f\xbf\xbf'''
                     ' AND starts_with(rs.value, flowd_search_value($2->>''q'')))'
                ELSE '' END
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
                    'id', r.id, 'workflow', w.name, 'version', w.version,
                    'state', flowd_run_state(r.state, r.start_at),
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
         || '''scheduled'', count(*) FILTER (WHERE x.state = ''scheduled''),'
         || '''queued'', count(*) FILTER (WHERE x.state = ''queued''),'
         || '''running'', count(*) FILTER (WHERE x.state = ''running''),'
         || '''succeeded'', count(*) FILTER (WHERE x.state = ''succeeded''),'
         || '''failed'', count(*) FILTER (WHERE x.state = ''failed''),'
         || '''cancelled'', count(*) FILTER (WHERE x.state = ''cancelled''),'
         || '''capped'', count(*) > $3)'
         || ' FROM (SELECT flowd_run_state(r.state, r.start_at) AS state FROM runs r JOIN workflows w ON w.id = r.workflow_id WHERE '
         || flowd_runs_where(p_filter) || ' ORDER BY r.id DESC LIMIT $3 + 1) x'
       INTO v USING p_tenant, p_filter, p_cap;
    RETURN v;
END $$;

-- The run's event log after sequence p_after (at most p_limit events) and whether the run has
-- finished, read in one snapshot: a stream that saw "finished" with no events left is complete.
-- The log is run_log: the rows of run_events merged with the routine transitions read from the
-- run's steps and the run itself, by one sequence. NULL when the tenant cannot see the run.
CREATE OR REPLACE FUNCTION flowd_run_events_json(p_tenant bigint, p_run bigint, p_after bigint,
                                      p_limit integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'finished', r.state IN ('succeeded', 'failed', 'cancelled'),
        'events', coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'seq', e.id, 'at', flowd_ms(e.at), 'type', e.type, 'step', e.step_key,
                        'data', e.data) ORDER BY e.id)
                      FROM (SELECT * FROM run_log x
                             WHERE x.run_id = r.id AND x.id > p_after
                             ORDER BY x.id LIMIT p_limit) e), '[]'))
      FROM runs r
     WHERE r.id = p_run AND r.tenant_id = p_tenant
$$;

-- The output of a succeeded run, read from its steps rather than stored on the run: {key: output}
-- of the succeeded steps that no step needs.
CREATE OR REPLACE FUNCTION flowd_run_output(p_run bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT o.output FROM flowd_run_outputs(ARRAY[p_run]) o), '{}');
END $$;

-- Runs' outputs gathered for many runs in one pass. flowd_run_output (0019) reads one run's steps
-- per call; a batch's results page called it for each of up to 1,000 runs, a PL/pgSQL call and an
-- index scan each (29-32 ms a page of 1,000 two-step runs here, 13 ms with one pass).

-- {key: output} of the succeeded steps that no step needs, for those of p_runs that have any.
CREATE OR REPLACE FUNCTION flowd_run_outputs(p_runs bigint[]) RETURNS TABLE (run_id bigint, output jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT s.run_id, jsonb_object_agg(s.key, s.output)
      FROM steps s
     WHERE s.run_id = ANY (p_runs) AND s.state = 'succeeded' AND cardinality(s.dependents) = 0
     GROUP BY s.run_id;
END $$;
