-- sql/usage.sql: recording usage (LLM calls and accepted messages) with its cost, the rollups
-- written with it, and what GET /v1/usage and /v1/prices read (tables: migrations/0033_usage.sql).

-- The price of (kind, item) by provider for a tenant at a time: the longest matching item, the
-- tenant's own before the default, a provider's own before "any provider", the newest in effect.
-- NULL when nothing prices it.
CREATE OR REPLACE FUNCTION flowd_price_at(p_tenant bigint, p_kind text, p_item text,
                                          p_provider text, p_at timestamptz) RETURNS prices
LANGUAGE sql STABLE AS $$
    SELECT p.* FROM prices p
     WHERE (p.tenant_id IS NULL OR p.tenant_id = p_tenant) AND p.kind = p_kind
       AND CASE WHEN p_kind = 'llm' THEN starts_with(p_item, p.item) ELSE p.item = p_item END
       AND (p.provider IS NULL OR p.provider = p_provider)
       AND p.effective_from <= p_at
     ORDER BY length(p.item) DESC, p.tenant_id IS NULL, p.provider IS NULL, p.effective_from DESC
     LIMIT 1
$$;

-- Records usage and adds it to the rollups, in the caller's transaction. p_rows: [{tenant, run,
-- step, kind: "llm"|"send", provider, model (the channel for a send), input_tokens?,
-- output_tokens?, cached_tokens? (part of input_tokens), segments?, ok?}]. Sandbox providers cost
-- nothing. The rollup rows are updated in key order, so concurrent writers cannot deadlock on them.
-- Answers each row's cost as recorded (ord: its place in p_rows, from 1), at the tenant's prices,
-- which is what the processes' cost metrics count.
CREATE OR REPLACE FUNCTION flowd_usage_add(p_rows jsonb)
RETURNS TABLE (ord integer, cost_usd numeric)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := flowd_now();
    v_day date := (v_now AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_rows IS NULL OR jsonb_array_length(p_rows) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH x AS (
        SELECT x.ord::integer, x.tenant, x.run, r.batch_id, coalesce(w.name, '') AS workflow,
               x.step, x.kind,
               x.provider, x.model, greatest(coalesce(x.input_tokens, 0), 0) AS input_tokens,
               greatest(coalesce(x.output_tokens, 0), 0) AS output_tokens,
               least(greatest(coalesce(x.cached_tokens, 0), 0),
                     greatest(coalesce(x.input_tokens, 0), 0)) AS cached_tokens,
               CASE WHEN x.kind = 'send' AND x.model = 'sms'
                    THEN greatest(coalesce(x.segments, 1), 1) ELSE 0 END AS segments,
               coalesce(x.ok, true) AS ok
          FROM ROWS FROM (jsonb_to_recordset(p_rows)
               AS (tenant bigint, run bigint, step text, kind text, provider text, model text,
                   input_tokens bigint, output_tokens bigint, cached_tokens bigint,
                   segments integer, ok boolean)) WITH ORDINALITY
               AS x(tenant, run, step, kind, provider, model, input_tokens, output_tokens,
                    cached_tokens, segments, ok, ord)
          LEFT JOIN runs r ON r.id = x.run
          LEFT JOIN workflows w ON w.id = r.workflow_id),
    -- a batch is mostly calls of one model: each (tenant, kind, model, provider) is priced once
    priced AS MATERIALIZED (
        SELECT k.tenant, k.kind, k.model, k.provider, q.id, q.input_usd_per_mtok,
               q.output_usd_per_mtok, q.cached_usd_per_mtok, q.usd_per_unit
          FROM (SELECT DISTINCT x.tenant, x.kind, x.model, x.provider FROM x
                 WHERE x.provider <> 'sandbox') k
          CROSS JOIN LATERAL flowd_price_at(k.tenant, k.kind, k.model, k.provider, v_now) q
         WHERE q.id IS NOT NULL),
    b AS MATERIALIZED (
        SELECT x.*, p.id AS price_id,
               CASE WHEN p.id IS NULL THEN 0
                    WHEN x.kind = 'llm' THEN round((
                        (x.input_tokens - x.cached_tokens) * coalesce(p.input_usd_per_mtok, 0)
                        + x.cached_tokens
                            * coalesce(p.cached_usd_per_mtok, p.input_usd_per_mtok, 0)
                        + x.output_tokens * coalesce(p.output_usd_per_mtok, 0)) / 1000000, 10)
                    ELSE round(greatest(x.segments, 1) * coalesce(p.usd_per_unit, 0), 10)
               END AS cost_usd
          FROM x
          LEFT JOIN priced p ON p.tenant = x.tenant AND p.kind = x.kind AND p.model = x.model
                            AND p.provider = x.provider),
    rec AS (
        INSERT INTO usage_records (tenant_id, at, kind, workflow, run_id, step_key, provider,
                                   model, input_tokens, output_tokens, cached_tokens, segments,
                                   cost_usd, price_id, ok)
        SELECT b.tenant, v_now, b.kind, b.workflow, b.run, b.step, b.provider, b.model,
               b.input_tokens, b.output_tokens, b.cached_tokens, b.segments, b.cost_usd,
               b.price_id, b.ok
          FROM b),
    daily AS (
        INSERT INTO usage_daily AS d (tenant_id, day, kind, workflow, provider, model, calls,
                                      input_tokens, output_tokens, cached_tokens, segments,
                                      cost_usd)
        SELECT b.tenant, v_day, b.kind, b.workflow, b.provider, b.model, count(*),
               sum(b.input_tokens), sum(b.output_tokens), sum(b.cached_tokens), sum(b.segments),
               sum(b.cost_usd)
          FROM b
         GROUP BY b.tenant, b.kind, b.workflow, b.provider, b.model
         ORDER BY b.tenant, b.kind, b.workflow, b.provider, b.model
        ON CONFLICT (tenant_id, day, kind, workflow, provider, model) DO UPDATE
           SET calls = d.calls + EXCLUDED.calls,
               input_tokens = d.input_tokens + EXCLUDED.input_tokens,
               output_tokens = d.output_tokens + EXCLUDED.output_tokens,
               cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens,
               segments = d.segments + EXCLUDED.segments,
               cost_usd = d.cost_usd + EXCLUDED.cost_usd),
    ru AS (
        INSERT INTO run_usage AS u (run_id, day, tenant_id, batch_id, llm_calls, input_tokens,
                                    output_tokens, cached_tokens, llm_cost_usd, sends, segments,
                                    send_cost_usd)
        SELECT b.run, v_day, min(b.tenant), min(b.batch_id),
               count(*) FILTER (WHERE b.kind = 'llm'),
               coalesce(sum(b.input_tokens) FILTER (WHERE b.kind = 'llm'), 0),
               coalesce(sum(b.output_tokens) FILTER (WHERE b.kind = 'llm'), 0),
               coalesce(sum(b.cached_tokens) FILTER (WHERE b.kind = 'llm'), 0),
               coalesce(sum(b.cost_usd) FILTER (WHERE b.kind = 'llm'), 0),
               count(*) FILTER (WHERE b.kind = 'send'),
               coalesce(sum(b.segments) FILTER (WHERE b.kind = 'send'), 0),
               coalesce(sum(b.cost_usd) FILTER (WHERE b.kind = 'send'), 0)
          FROM b
         WHERE b.run IS NOT NULL
         GROUP BY b.run
         ORDER BY b.run
        ON CONFLICT (run_id, day) DO UPDATE
           SET llm_calls = u.llm_calls + EXCLUDED.llm_calls,
               input_tokens = u.input_tokens + EXCLUDED.input_tokens,
               output_tokens = u.output_tokens + EXCLUDED.output_tokens,
               cached_tokens = u.cached_tokens + EXCLUDED.cached_tokens,
               llm_cost_usd = u.llm_cost_usd + EXCLUDED.llm_cost_usd,
               sends = u.sends + EXCLUDED.sends, segments = u.segments + EXCLUDED.segments,
               send_cost_usd = u.send_cost_usd + EXCLUDED.send_cost_usd)
    SELECT b.ord, b.cost_usd FROM b ORDER BY b.ord;
END $$;

-- A run's (or a batch's) totals from run_usage rows: {llm: {calls, input_tokens, output_tokens,
-- cached_input_tokens, cost_usd}, sends: {messages, segments, cost_usd}, cost_usd}.
CREATE OR REPLACE FUNCTION flowd_usage_json(p_calls bigint, p_in bigint, p_out bigint,
                                            p_cached bigint, p_llm_cost numeric, p_sends bigint,
                                            p_segments bigint, p_send_cost numeric) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'llm', jsonb_build_object('calls', coalesce(p_calls, 0), 'input_tokens', coalesce(p_in, 0),
                                  'output_tokens', coalesce(p_out, 0),
                                  'cached_input_tokens', coalesce(p_cached, 0),
                                  'cost_usd', round(coalesce(p_llm_cost, 0), 8)::float8),
        'sends', jsonb_build_object('messages', coalesce(p_sends, 0),
                                    'segments', coalesce(p_segments, 0),
                                    'cost_usd', round(coalesce(p_send_cost, 0), 8)::float8),
        'cost_usd', round(coalesce(p_llm_cost, 0) + coalesce(p_send_cost, 0), 8)::float8)
$$;

CREATE OR REPLACE FUNCTION flowd_run_usage(p_run bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT flowd_usage_json(sum(u.llm_calls)::bigint, sum(u.input_tokens)::bigint,
                            sum(u.output_tokens)::bigint, sum(u.cached_tokens)::bigint,
                            sum(u.llm_cost_usd), sum(u.sends)::bigint, sum(u.segments)::bigint,
                            sum(u.send_cost_usd))
      FROM run_usage u WHERE u.run_id = p_run
$$;

-- Usage of a tenant over the UTC days p_from .. p_to (both included), summed by p_group: day,
-- workflow, provider, model (LLM calls by model, messages by channel), channel ("llm" for LLM
-- calls, else the message channel) or run (the p_limit runs that cost most, then by id).
-- Read from the rollups only.
CREATE OR REPLACE FUNCTION flowd_usage(p_tenant bigint, p_from date, p_to date, p_group text,
                                       p_limit integer)
RETURNS TABLE (key text, llm_calls bigint, input_tokens bigint, output_tokens bigint,
               cached_tokens bigint, llm_cost_usd numeric, sends bigint, segments bigint,
               send_cost_usd numeric, cost_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT g.key, g.llm_calls, g.input_tokens, g.output_tokens, g.cached_tokens,
           round(g.llm_cost_usd, 8), g.sends, g.segments, round(g.send_cost_usd, 8),
           round(g.llm_cost_usd + g.send_cost_usd, 8)
      FROM (
        SELECT CASE p_group WHEN 'day' THEN d.day::text WHEN 'workflow' THEN d.workflow
                            WHEN 'provider' THEN d.provider WHEN 'model' THEN d.model
                            ELSE CASE WHEN d.kind = 'llm' THEN 'llm' ELSE d.model END END AS key,
               coalesce(sum(d.calls) FILTER (WHERE d.kind = 'llm'), 0)::bigint AS llm_calls,
               coalesce(sum(d.input_tokens) FILTER (WHERE d.kind = 'llm'), 0)::bigint
                   AS input_tokens,
               coalesce(sum(d.output_tokens) FILTER (WHERE d.kind = 'llm'), 0)::bigint
                   AS output_tokens,
               coalesce(sum(d.cached_tokens) FILTER (WHERE d.kind = 'llm'), 0)::bigint
                   AS cached_tokens,
               coalesce(sum(d.cost_usd) FILTER (WHERE d.kind = 'llm'), 0) AS llm_cost_usd,
               coalesce(sum(d.calls) FILTER (WHERE d.kind = 'send'), 0)::bigint AS sends,
               coalesce(sum(d.segments) FILTER (WHERE d.kind = 'send'), 0)::bigint AS segments,
               coalesce(sum(d.cost_usd) FILTER (WHERE d.kind = 'send'), 0) AS send_cost_usd
          FROM usage_daily d
         WHERE p_group <> 'run' AND d.tenant_id = p_tenant AND d.day BETWEEN p_from AND p_to
         GROUP BY 1
        UNION ALL
        SELECT u.run_id::text, sum(u.llm_calls)::bigint, sum(u.input_tokens)::bigint,
               sum(u.output_tokens)::bigint, sum(u.cached_tokens)::bigint, sum(u.llm_cost_usd),
               sum(u.sends)::bigint, sum(u.segments)::bigint, sum(u.send_cost_usd)
          FROM (SELECT t.run_id FROM run_usage t
                 WHERE p_group = 'run' AND t.tenant_id = p_tenant
                   AND t.day BETWEEN p_from AND p_to
                 GROUP BY t.run_id
                 ORDER BY sum(t.llm_cost_usd + t.send_cost_usd) DESC, t.run_id
                 LIMIT p_limit) top
          JOIN run_usage u ON u.run_id = top.run_id AND u.day BETWEEN p_from AND p_to
         GROUP BY u.run_id) g
     ORDER BY CASE WHEN p_group = 'run' THEN g.llm_cost_usd + g.send_cost_usd END DESC NULLS LAST,
              CASE WHEN p_group = 'run' THEN g.key::bigint END, g.key
$$;

-- The days of a usage query: to defaults to today (UTC, engine clock), from to the first day of
-- to's month.
CREATE OR REPLACE FUNCTION flowd_usage_range(p_from date, p_to date)
RETURNS TABLE (from_day date, to_day date) LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_from, date_trunc('month', t.d)::date), t.d
      FROM (SELECT coalesce(p_to, (flowd_now() AT TIME ZONE 'UTC')::date) AS d) t
$$;

-- GET /v1/usage as JSON: {from, to, group_by, groups: [{key, llm, sends, cost_usd}], total}; the
-- total covers the whole range (with group_by=run, also the runs past p_limit).
CREATE OR REPLACE FUNCTION flowd_usage_report(p_tenant bigint, p_from date, p_to date,
                                              p_group text, p_limit integer) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_from date;
    v_to   date;
BEGIN
    SELECT r.from_day, r.to_day INTO v_from, v_to FROM flowd_usage_range(p_from, p_to) r;
    RETURN jsonb_build_object(
        'from', v_from, 'to', v_to, 'group_by', p_group,
        'groups', coalesce((
            SELECT jsonb_agg(jsonb_build_object('key', g.key)
                             || flowd_usage_json(g.llm_calls, g.input_tokens, g.output_tokens,
                                                 g.cached_tokens, g.llm_cost_usd, g.sends,
                                                 g.segments, g.send_cost_usd) ORDER BY g.ordinality)
              FROM flowd_usage(p_tenant, v_from, v_to, p_group, p_limit) WITH ORDINALITY AS g),
            '[]'),
        'total', (
            SELECT flowd_usage_json(sum(t.llm_calls)::bigint, sum(t.input_tokens)::bigint,
                                    sum(t.output_tokens)::bigint, sum(t.cached_tokens)::bigint,
                                    sum(t.llm_cost_usd), sum(t.sends)::bigint,
                                    sum(t.segments)::bigint, sum(t.send_cost_usd))
              FROM flowd_usage(p_tenant, v_from, v_to, 'channel', NULL) t));
END $$;

-- A price row as the API shows it.
CREATE OR REPLACE FUNCTION flowd_price_json(p prices) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'scope', CASE WHEN p.tenant_id IS NULL THEN 'default' ELSE 'tenant' END,
        'model', CASE WHEN p.kind = 'llm' THEN p.item END,
        'channel', CASE WHEN p.kind = 'send' THEN p.item END,
        'provider', p.provider,
        'input_usd_per_mtok', p.input_usd_per_mtok::float8,
        'output_usd_per_mtok', p.output_usd_per_mtok::float8,
        'cached_input_usd_per_mtok', p.cached_usd_per_mtok::float8,
        'usd_per_message', p.usd_per_unit::float8,
        'effective_from', flowd_ms(p.effective_from)))
$$;

-- PUT /v1/prices: the tenant's price from p_from (default now; not in the past: recorded costs
-- keep the price they were recorded with, and the table keeps saying which one that was). The
-- same (item, provider, effective_from) again replaces the values.
CREATE OR REPLACE FUNCTION flowd_price_put(p_tenant bigint, p_kind text, p_item text,
                                           p_provider text, p_in numeric, p_out numeric,
                                           p_cached numeric, p_unit numeric, p_from timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := flowd_now();
    v_row prices;
BEGIN
    IF p_from < v_now - interval '1 minute' THEN
        RAISE EXCEPTION 'must not be in the past: recorded costs keep the price they had'
            USING ERRCODE = '22023', COLUMN = 'effective_from';
    END IF;
    INSERT INTO prices AS p (tenant_id, kind, item, provider, effective_from, input_usd_per_mtok,
                             output_usd_per_mtok, cached_usd_per_mtok, usd_per_unit)
    VALUES (p_tenant, p_kind, p_item, p_provider, greatest(coalesce(p_from, v_now), v_now),
            p_in, p_out, p_cached, p_unit)
    ON CONFLICT (coalesce(tenant_id, 0), kind, item, coalesce(provider, ''), effective_from)
    DO UPDATE SET input_usd_per_mtok = EXCLUDED.input_usd_per_mtok,
                  output_usd_per_mtok = EXCLUDED.output_usd_per_mtok,
                  cached_usd_per_mtok = EXCLUDED.cached_usd_per_mtok,
                  usd_per_unit = EXCLUDED.usd_per_unit
    RETURNING p.* INTO v_row;
    RETURN flowd_price_json(v_row);
END $$;

-- GET /v1/prices: {"prices": [...]}, the defaults and the tenant's own, by kind, item, provider
-- and time.
CREATE OR REPLACE FUNCTION flowd_prices_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('prices', coalesce(jsonb_agg(flowd_price_json(p)
               ORDER BY p.kind, p.item, p.provider NULLS FIRST, p.tenant_id NULLS FIRST,
                        p.effective_from), '[]'))
      FROM prices p WHERE p.tenant_id IS NULL OR p.tenant_id = p_tenant
$$;

-- Records the send (tenant, key) as usage: called where a send becomes accepted (its call's
-- answer, a webhook proving an ambiguous send went out, an operator's "sent"), once per send.
CREATE OR REPLACE FUNCTION flowd_send_usage_add(p_tenant bigint, p_key text) RETURNS void
LANGUAGE sql AS $$
    SELECT flowd_usage_add(jsonb_build_array(jsonb_build_object(
               'tenant', s.tenant_id, 'run', s.run_id,
               'step', (SELECT st.key FROM steps st WHERE st.id = s.step_id),
               'kind', 'send', 'provider', s.provider, 'model', s.channel,
               'segments', CASE WHEN s.result->>'segments' ~ '^[0-9]{1,6}$'
                                THEN (s.result->>'segments')::integer END)))
      FROM sends s WHERE s.tenant_id = p_tenant AND s.send_key = p_key
$$;
