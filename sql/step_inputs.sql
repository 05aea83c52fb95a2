-- sql/step_inputs.sql: what the steps that call out were given, their inputs after templates
-- (table step_inputs, 0054; written by steps/inputs.c).
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- p_rows: [{"step", "tenant", "attempt", "bytes", "input"}], the rendered inputs of attempts as
-- they started. A step keeps its latest attempt's; an attempt started again without being counted
-- (a rate limit or a window put it back) rewrites its row only when what it rendered changed, and
-- an older attempt still running on a lost lease never overwrites a newer one. A step deleted
-- meanwhile (retention) is left out.
CREATE OR REPLACE FUNCTION flowd_step_inputs_put(p_rows jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO step_inputs AS si (step_id, tenant_id, attempt, bytes, input, rendered_at)
    SELECT DISTINCT ON (x.step) x.step, x.tenant, x.attempt, x.bytes, x.input, flowd_now()
      FROM jsonb_to_recordset(p_rows)
           AS x(step bigint, tenant bigint, attempt integer, bytes integer, input jsonb)
     WHERE EXISTS (SELECT 1 FROM steps s WHERE s.id = x.step AND s.tenant_id = x.tenant)
     ORDER BY x.step, x.attempt DESC
    ON CONFLICT (step_id) DO UPDATE
       SET attempt = EXCLUDED.attempt, bytes = EXCLUDED.bytes, input = EXCLUDED.input,
           rendered_at = EXCLUDED.rendered_at
     WHERE si.attempt < EXCLUDED.attempt
        OR (si.attempt = EXCLUDED.attempt AND si.input IS DISTINCT FROM EXCLUDED.input)
$$;

-- GET /v1/runs/{id}/steps: the run's steps in definition order with what each was given,
-- {"steps": [{"key", "kind", "state", "attempts", "rendered_input": {"attempt", "at", "bytes",
-- "input"} | null}]}; NULL when the tenant cannot see the run. rendered_input is null for a step
-- that has not started or does not call out (a transform's output is what it rendered).
CREATE OR REPLACE FUNCTION flowd_run_steps_json(p_tenant bigint, p_run bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = p_run AND r.tenant_id = p_tenant) THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('steps', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'key', s.key, 'kind', s.kind, 'state', s.state, 'attempts', s.attempts,
                   'rendered_input', CASE WHEN si.step_id IS NOT NULL THEN jsonb_build_object(
                       'attempt', si.attempt, 'at', flowd_ms(si.rendered_at), 'bytes', si.bytes,
                       'input', si.input) END) ORDER BY s.idx)
          FROM steps s LEFT JOIN step_inputs si ON si.step_id = s.id
         WHERE s.run_id = p_run), '[]'));
END $$;
