-- sql/llm.sql: The LLM step's answer records: a step that ran once is not asked again.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Lookups and records go in batches: one round trip (and one commit) for many steps.
-- p_keys: [{"i": n, "run": id, "step": key, "item": "", "hash": h}] -> rows (i, output) found.
CREATE OR REPLACE FUNCTION flowd_llm_lookup_many(p_keys jsonb)
RETURNS TABLE (i integer, output jsonb) LANGUAGE sql STABLE AS $$
    SELECT k.i, r.output
      FROM jsonb_to_recordset(p_keys) AS k(i integer, run bigint, step text, item text, hash text)
      JOIN llm_records r ON r.run_id = k.run AND r.step_key = k.step
                        AND r.item = coalesce(k.item, '') AND r.request_hash = k.hash
$$;

-- p_rows: [{"i", "tenant", "run", "step", "item", "hash", "output"}]. Every row is an answer a
-- provider gave (and charged for), so it is also recorded as usage (sql/usage.sql); a replayed
-- answer is read by flowd_llm_lookup_many and never comes here. Answers each row's cost as usage
-- recorded it (the tenant's prices), by i.
CREATE OR REPLACE FUNCTION flowd_llm_record_costs(p_rows jsonb)
RETURNS TABLE (i integer, cost_usd numeric) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO llm_records (tenant_id, run_id, step_key, item, request_hash, output)
    SELECT DISTINCT ON (x.run, x.step, coalesce(x.item, ''))
           x.tenant, x.run, x.step, coalesce(x.item, ''), x.hash, x.output
      FROM jsonb_to_recordset(p_rows)
           AS x(tenant bigint, run bigint, step text, item text, hash text, output jsonb)
    ON CONFLICT (run_id, step_key, item)
    DO UPDATE SET request_hash = EXCLUDED.request_hash, output = EXCLUDED.output,
                  created_at = now();
    RETURN QUERY
    WITH r AS (
        SELECT x.* FROM ROWS FROM (jsonb_to_recordset(p_rows)
                            AS (i integer, tenant bigint, run bigint, step text, output jsonb))
                        WITH ORDINALITY AS x(i, tenant, run, step, output, ord))
    SELECT r.i, u.cost_usd
      FROM flowd_usage_add((SELECT jsonb_agg(jsonb_build_object(
                                'tenant', r.tenant, 'run', r.run, 'step', r.step, 'kind', 'llm',
                                'provider', r.output->>'provider', 'model', r.output->>'model',
                                'input_tokens', r.output->'usage'->'input_tokens',
                                'output_tokens', r.output->'usage'->'output_tokens',
                                'cached_tokens', r.output->'usage'->'cached_input_tokens')
                                ORDER BY r.ord)
                              FROM r)) u
      JOIN r ON r.ord = u.ord;
END $$;
