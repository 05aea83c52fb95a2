-- API entry points for a tenant's named rate limits (rate_limits, 0007) and suppression list
-- (suppressions, 0008), shared by api/routes_limits.c, api/routes_suppressions.c and the
-- "suppress" step kind (steps/suppress.c). Addresses arrive normalized (the ledger's rules,
-- steps/sendledger.h); these functions trust that and only store and read.

-- One limit of the tenant as the API shows it.
CREATE FUNCTION flowd_rate_limit_obj(l rate_limits) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('name', l.name, 'requests_per_s', l.requests_per_s,
                              'tokens_per_min', l.tokens_per_min,
                              'burst_requests', l.burst_requests, 'burst_tokens', l.burst_tokens)
$$;

-- Creates or replaces (every field: a PUT) the tenant's own limit p_name. Its bucket is kept, so a
-- replacement does not hand out a fresh burst; flowd_rl_take caps the level at the new burst.
-- The shared row of the same name (tenant_id NULL) is not touched: both keep applying.
CREATE FUNCTION flowd_rate_limit_put(p_tenant bigint, p_name text, p_requests_per_s double precision,
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

CREATE FUNCTION flowd_rate_limits_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('rate_limits', coalesce(jsonb_agg(flowd_rate_limit_obj(l)
                                                                ORDER BY l.name), '[]'))
      FROM rate_limits l WHERE l.tenant_id = p_tenant
$$;

-- false when the tenant has no limit of that name (the shared one is never the tenant's to drop).
CREATE FUNCTION flowd_rate_limit_delete(p_tenant bigint, p_name text) RETURNS boolean
LANGUAGE sql AS $$
    WITH d AS (DELETE FROM rate_limits l WHERE l.tenant_id = p_tenant AND l.name = p_name
               RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;

CREATE FUNCTION flowd_suppression_obj(x suppressions) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('channel', x.channel, 'address', x.address, 'reason', x.reason,
                              'source', x.source, 'created_at', flowd_ms(x.created_at))
$$;

-- Puts an address on the tenant's list. An address already there keeps its first reason and
-- source (a START reply lifts only a 'stop', so a later API call must not turn a bounce into
-- one); created says which happened.
CREATE FUNCTION flowd_suppression_add(p_tenant bigint, p_channel text, p_address text,
                                      p_reason text, p_source text,
                                      OUT created boolean, OUT suppression jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v suppressions%ROWTYPE;
BEGIN
    INSERT INTO suppressions (tenant_id, channel, address, reason, source)
    VALUES (p_tenant, p_channel, p_address, p_reason, p_source)
    ON CONFLICT DO NOTHING
    RETURNING * INTO v;
    created := FOUND;
    IF NOT created THEN
        SELECT * INTO v FROM suppressions x
         WHERE x.tenant_id = p_tenant AND x.channel = p_channel AND x.address = p_address;
    END IF;
    suppression := flowd_suppression_obj(v);
END $$;

-- One page in (channel, address) order, the primary key's, after the opaque cursor p_after (the
-- hex of "channel:address" of the previous page's last row). next_cursor is null on the last page.
CREATE FUNCTION flowd_suppressions_json(p_tenant bigint, p_channel text, p_after text,
                                        p_limit integer) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ch   text := '';
    v_addr text := '';
BEGIN
    IF p_after IS NOT NULL THEN
        v_addr := convert_from(decode(p_after, 'hex'), 'UTF8');
        v_ch := split_part(v_addr, ':', 1);
        v_addr := substr(v_addr, length(v_ch) + 2);
    END IF;
    -- one row more than the page tells whether another page follows
    RETURN (
        WITH page AS (
            SELECT s.x AS row, row_number() OVER (ORDER BY (s.x).channel, (s.x).address) AS n
              FROM (SELECT x FROM suppressions x
                     WHERE x.tenant_id = p_tenant AND (p_channel IS NULL OR x.channel = p_channel)
                       AND (p_after IS NULL OR (x.channel, x.address) > (v_ch, v_addr))
                     ORDER BY x.channel, x.address LIMIT p_limit + 1) s)
        SELECT jsonb_build_object(
                   'suppressions', coalesce(jsonb_agg(flowd_suppression_obj(p.row) ORDER BY p.n)
                                                FILTER (WHERE p.n <= p_limit), '[]'),
                   'next_cursor', CASE WHEN count(*) > p_limit THEN
                                      (SELECT encode(convert_to((q.row).channel || ':' ||
                                                                (q.row).address, 'UTF8'), 'hex')
                                         FROM page q WHERE q.n = p_limit) END)
          FROM page p);
END $$;

CREATE FUNCTION flowd_suppression_delete(p_tenant bigint, p_channel text, p_address text)
RETURNS boolean LANGUAGE sql AS $$
    WITH d AS (DELETE FROM suppressions x
                WHERE x.tenant_id = p_tenant AND x.channel = p_channel AND x.address = p_address
               RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;
