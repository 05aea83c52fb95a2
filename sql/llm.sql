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

-- p_rows: [{"tenant", "run", "step", "item", "hash", "output"}]. Every row is an answer a provider
-- gave (and charged for), so it is also recorded as usage (sql/usage.sql); a replayed answer is
-- read by flowd_llm_lookup_many and never comes here.
CREATE OR REPLACE FUNCTION flowd_llm_record_many(p_rows jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO llm_records (tenant_id, run_id, step_key, item, request_hash, output)
    SELECT DISTINCT ON (x.run, x.step, coalesce(x.item, ''))
           x.tenant, x.run, x.step, coalesce(x.item, ''), x.hash, x.output
      FROM jsonb_to_recordset(p_rows)
           AS x(tenant bigint, run bigint, step text, item text, hash text, output jsonb)
    ON CONFLICT (run_id, step_key, item)
    DO UPDATE SET request_hash = EXCLUDED.request_hash, output = EXCLUDED.output,
                  created_at = now();
    PERFORM flowd_usage_add(jsonb_agg(jsonb_build_object(
                'tenant', x.tenant, 'run', x.run, 'step', x.step, 'kind', 'llm',
                'provider', x.output->>'provider', 'model', x.output->>'model',
                'input_tokens', x.output->'usage'->'input_tokens',
                'output_tokens', x.output->'usage'->'output_tokens',
                'cached_tokens', x.output->'usage'->'cached_input_tokens')))
       FROM jsonb_to_recordset(p_rows) AS x(tenant bigint, run bigint, step text, output jsonb);
END $$;
