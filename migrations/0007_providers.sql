-- Providers: per-tenant settings overriding the environment, recorded LLM outputs (so a replayed
-- step does not pay twice) and named rate limits shared by every worker of every process.

-- A tenant's settings for one provider ("openai", "twilio", ...): a flat object of strings using
-- the field names of steps/provider.h (api_key, base_url, account_sid, ...). Secrets live here as
-- given; the API never returns them.
CREATE TABLE provider_settings (
    tenant_id  bigint NOT NULL REFERENCES tenants(id),
    provider   text NOT NULL,
    settings   jsonb NOT NULL CHECK (jsonb_typeof(settings) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, provider)
);

-- One recorded LLM answer per (run, step, item): never per attempt. request_hash tells a replay of
-- the same request (reuse the answer) from a step whose input changed since (call again).
CREATE TABLE llm_records (
    tenant_id    bigint NOT NULL,
    run_id       bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step_key     text NOT NULL,
    item         text NOT NULL DEFAULT '',
    request_hash text NOT NULL,
    output       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step_key, item)
);

-- Named rate limits. tenant_id NULL: one budget shared by all tenants (the provider's account
-- limit); a tenant's row adds its own budget on top. Both dimensions are token buckets: requests
-- refill at requests_per_s up to burst_requests, tokens at tokens_per_min/60 per second up to
-- burst_tokens. NULL rates do not limit.
CREATE TABLE rate_limits (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL,
    tenant_id      bigint REFERENCES tenants(id),
    requests_per_s double precision CHECK (requests_per_s > 0),
    tokens_per_min double precision CHECK (tokens_per_min > 0),
    burst_requests double precision CHECK (burst_requests >= 1),  -- NULL: max(1, requests_per_s)
    burst_tokens   double precision CHECK (burst_tokens >= 1)     -- NULL: tokens_per_min
);
CREATE UNIQUE INDEX rate_limits_name ON rate_limits (name, coalesce(tenant_id, 0));

-- Bucket levels, one row per limit. Updated under FOR UPDATE by flowd_rl_take only.
CREATE TABLE rate_buckets (
    limit_id   bigint PRIMARY KEY REFERENCES rate_limits(id) ON DELETE CASCADE,
    requests   double precision NOT NULL,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Takes p_requests requests and p_tokens tokens from every limit named p_name that applies to
-- p_tenant (the shared one and the tenant's own), all or nothing. wait_ms = 0: granted and
-- consumed. wait_ms > 0: nothing consumed; enough budget will have refilled after wait_ms.
-- limited = false means no limit of that name applies (callers may skip asking for a while).
-- Real time (clock_timestamp), not the engine's test clock: providers count real seconds.
CREATE FUNCTION flowd_rl_take(p_tenant bigint, p_name text, p_requests double precision,
                              p_tokens double precision, OUT wait_ms bigint, OUT limited boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l        record;
    b        rate_buckets%ROWTYPE;
    v_now    timestamptz := clock_timestamp();
    v_dt     double precision;
    v_breq   double precision;
    v_btok   double precision;
    v_req    double precision;
    v_tok    double precision;
    v_wait   double precision := 0;
    v_ids    bigint[] := '{}';
    v_levels double precision[] := '{}';
    v_tlevels double precision[] := '{}';
BEGIN
    limited := false;
    -- a fixed lock order (by id) keeps concurrent takers from deadlocking
    FOR l IN SELECT * FROM rate_limits
              WHERE name = p_name AND (tenant_id IS NULL OR tenant_id = p_tenant)
              ORDER BY id
    LOOP
        limited := true;
        v_breq := coalesce(l.burst_requests, greatest(1, l.requests_per_s), 1);
        v_btok := coalesce(l.burst_tokens, l.tokens_per_min, 1);
        INSERT INTO rate_buckets (limit_id, requests, tokens, updated_at)
        VALUES (l.id, v_breq, v_btok, v_now) ON CONFLICT (limit_id) DO NOTHING;
        SELECT * INTO b FROM rate_buckets WHERE limit_id = l.id FOR UPDATE;
        v_now := clock_timestamp();
        v_dt := greatest(0, extract(epoch FROM v_now - b.updated_at));
        v_req := b.requests;
        v_tok := b.tokens;
        IF l.requests_per_s IS NOT NULL THEN
            v_req := least(v_breq, v_req + v_dt * l.requests_per_s);
            -- a request bigger than the bucket could never pass: it waits for a full bucket
            IF v_req < least(p_requests, v_breq) THEN
                v_wait := greatest(v_wait, (least(p_requests, v_breq) - v_req) / l.requests_per_s);
            END IF;
        END IF;
        IF l.tokens_per_min IS NOT NULL AND p_tokens > 0 THEN
            v_tok := least(v_btok, v_tok + v_dt * l.tokens_per_min / 60.0);
            IF v_tok < least(p_tokens, v_btok) THEN
                v_wait := greatest(v_wait, (least(p_tokens, v_btok) - v_tok) * 60.0 / l.tokens_per_min);
            END IF;
        END IF;
        v_ids := v_ids || l.id;
        v_levels := v_levels || v_req;
        v_tlevels := v_tlevels || v_tok;
    END LOOP;
    IF v_wait > 0 THEN
        wait_ms := ceil(v_wait * 1000)::bigint;
        RETURN;
    END IF;
    wait_ms := 0;
    FOR i IN 1 .. coalesce(array_length(v_ids, 1), 0) LOOP
        UPDATE rate_buckets
           SET requests = v_levels[i] - p_requests,
               tokens = v_tlevels[i] - p_tokens,
               updated_at = v_now
         WHERE limit_id = v_ids[i];
    END LOOP;
END $$;

-- Corrects the token budgets after the fact (an LLM call used more or fewer tokens than it
-- reserved). Levels may go negative: later takers then wait for the debt to refill.
CREATE FUNCTION flowd_rl_adjust(p_tenant bigint, p_name text, p_tokens double precision)
RETURNS void LANGUAGE sql AS $$
    UPDATE rate_buckets b
       SET tokens = least(coalesce(l.burst_tokens, l.tokens_per_min, 1), b.tokens - p_tokens)
      FROM rate_limits l
     WHERE b.limit_id = l.id AND l.name = p_name AND l.tokens_per_min IS NOT NULL
       AND (l.tenant_id IS NULL OR l.tenant_id = p_tenant)
$$;

-- Lookups and records go in batches: one round trip (and one commit) for many steps.
-- p_keys: [{"i": n, "run": id, "step": key, "item": "", "hash": h}] -> rows (i, output) found.
CREATE FUNCTION flowd_llm_lookup_many(p_keys jsonb)
RETURNS TABLE (i integer, output jsonb) LANGUAGE sql STABLE AS $$
    SELECT k.i, r.output
      FROM jsonb_to_recordset(p_keys) AS k(i integer, run bigint, step text, item text, hash text)
      JOIN llm_records r ON r.run_id = k.run AND r.step_key = k.step
                        AND r.item = coalesce(k.item, '') AND r.request_hash = k.hash
$$;

-- p_rows: [{"tenant", "run", "step", "item", "hash", "output"}]
CREATE FUNCTION flowd_llm_record_many(p_rows jsonb)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO llm_records (tenant_id, run_id, step_key, item, request_hash, output)
    SELECT DISTINCT ON (x.run, x.step, coalesce(x.item, ''))
           x.tenant, x.run, x.step, coalesce(x.item, ''), x.hash, x.output
      FROM jsonb_to_recordset(p_rows)
           AS x(tenant bigint, run bigint, step text, item text, hash text, output jsonb)
    ON CONFLICT (run_id, step_key, item)
    DO UPDATE SET request_hash = EXCLUDED.request_hash, output = EXCLUDED.output,
                  created_at = now()
$$;
