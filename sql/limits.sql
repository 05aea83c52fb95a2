-- sql/limits.sql: Named rate limits: token buckets taken and corrected by steps, and the API's view
-- of them.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Takes p_requests requests and p_tokens tokens from every limit named p_name that applies to
-- p_tenant (the shared one and the tenant's own), all or nothing. wait_ms = 0: granted and
-- consumed. wait_ms > 0: nothing consumed; enough budget will have refilled after wait_ms.
-- limited = false means no limit of that name applies (callers may skip asking for a while).
-- Real time (clock_timestamp), not the engine's test clock: providers count real seconds.
CREATE OR REPLACE FUNCTION flowd_rl_take(p_tenant bigint, p_name text, p_requests double precision,
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
CREATE OR REPLACE FUNCTION flowd_rl_adjust(p_tenant bigint, p_name text, p_tokens double precision)
RETURNS void LANGUAGE sql AS $$
    UPDATE rate_buckets b
       SET tokens = least(coalesce(l.burst_tokens, l.tokens_per_min, 1), b.tokens - p_tokens)
      FROM rate_limits l
     WHERE b.limit_id = l.id AND l.name = p_name AND l.tokens_per_min IS NOT NULL
       AND (l.tenant_id IS NULL OR l.tenant_id = p_tenant)
$$;

-- API entry points for a tenant's named rate limits (rate_limits, 0007), used by
-- api/routes_limits.c.

-- One limit as the API shows it: the tenant's own ("scope": "tenant") or one the operator set for
-- every tenant ("shared", tenant_id NULL), which binds the tenant's steps of that name too.
CREATE OR REPLACE FUNCTION flowd_rate_limit_obj(l rate_limits) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('name', l.name,
                              'scope', CASE WHEN l.tenant_id IS NULL THEN 'shared' ELSE 'tenant' END,
                              'requests_per_s', l.requests_per_s,
                              'tokens_per_min', l.tokens_per_min,
                              'burst_requests', l.burst_requests, 'burst_tokens', l.burst_tokens)
$$;

-- Creates or replaces (every field: a PUT) the tenant's own limit p_name. Its bucket is kept, so a
-- replacement does not hand out a fresh burst; flowd_rl_take caps the level at the new burst.
-- The shared row of the same name (tenant_id NULL) is not touched: both keep applying.
CREATE OR REPLACE FUNCTION flowd_rate_limit_put(p_tenant bigint, p_name text, p_requests_per_s double precision,
                                     p_tokens_per_min double precision,
                                     p_burst_requests double precision,
                                     p_burst_tokens double precision,
                                     OUT created boolean, OUT rate_limit jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v    rate_limits%ROWTYPE;
    v_id bigint;
BEGIN
    INSERT INTO rate_limits (name, tenant_id, requests_per_s, tokens_per_min, burst_requests,
                             burst_tokens)
    VALUES (p_name, p_tenant, p_requests_per_s, p_tokens_per_min, p_burst_requests, p_burst_tokens)
    ON CONFLICT (name, coalesce(tenant_id, 0)) DO UPDATE
       SET requests_per_s = EXCLUDED.requests_per_s, tokens_per_min = EXCLUDED.tokens_per_min,
           burst_requests = EXCLUDED.burst_requests, burst_tokens = EXCLUDED.burst_tokens
    -- xmax is 0 on a row version this statement inserted, the locker's xid on an updated one
    RETURNING rate_limits.id, rate_limits.xmax = '0'::xid INTO v_id, created;
    SELECT * INTO v FROM rate_limits x WHERE x.id = v_id;
    rate_limit := flowd_rate_limit_obj(v);
END $$;

-- What limit l has left now: its bucket refilled up to this instant as flowd_rl_take would see
-- it (a limit never taken from has its full burst), and the burst it refills to. A level below
-- zero is a debt that later takers wait out (flowd_rl_adjust).
CREATE OR REPLACE FUNCTION flowd_rate_limit_budget(l rate_limits, b rate_buckets) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'requests', CASE WHEN l.requests_per_s IS NOT NULL THEN
                        round(least(c.breq, coalesce(b.requests + c.dt * l.requests_per_s, c.breq))::numeric, 3) END,
        'burst_requests', CASE WHEN l.requests_per_s IS NOT NULL THEN c.breq END,
        'tokens', CASE WHEN l.tokens_per_min IS NOT NULL THEN
                      round(least(c.btok, coalesce(b.tokens + c.dt * l.tokens_per_min / 60.0, c.btok))::numeric, 1) END,
        'burst_tokens', CASE WHEN l.tokens_per_min IS NOT NULL THEN c.btok END,
        'taken_at', flowd_ms(b.updated_at))
      FROM (SELECT coalesce(l.burst_requests, greatest(1, l.requests_per_s), 1) AS breq,
                   coalesce(l.burst_tokens, l.tokens_per_min, 1) AS btok,
                   greatest(0, extract(epoch FROM clock_timestamp() - b.updated_at)) AS dt) c
$$;

-- Every limit that binds the tenant's steps with the budget each has left now: its own and the
-- shared ones (flowd_rl_take takes from both), a name's own first. No other tenant's limit is
-- shown; a shared bucket's level is what all tenants' steps left in it, which is what this
-- tenant's next step waits on.
CREATE OR REPLACE FUNCTION flowd_rate_limits_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('rate_limits', coalesce(jsonb_agg(
               flowd_rate_limit_obj(l) || jsonb_build_object('budget', flowd_rate_limit_budget(l, b))
               ORDER BY l.name, l.tenant_id IS NULL), '[]'))
      FROM rate_limits l LEFT JOIN rate_buckets b ON b.limit_id = l.id
     WHERE l.tenant_id = p_tenant OR l.tenant_id IS NULL
$$;

-- false when the tenant has no limit of that name (the shared one is never the tenant's to drop).
CREATE OR REPLACE FUNCTION flowd_rate_limit_delete(p_tenant bigint, p_name text) RETURNS boolean
LANGUAGE sql AS $$
    WITH d AS (DELETE FROM rate_limits l WHERE l.tenant_id = p_tenant AND l.name = p_name
               RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;
