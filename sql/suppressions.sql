-- sql/suppressions.sql: A tenant's suppression list (addresses never to send to), as the API and
-- the "suppress" step kind use it (api/routes_suppressions.c, steps/suppress.c). Addresses arrive
-- normalized (the ledger's rules, steps/sendledger.h); these functions trust that and only store
-- and read.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

CREATE OR REPLACE FUNCTION flowd_suppression_obj(x suppressions) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('channel', x.channel, 'address', x.address, 'reason', x.reason,
                              'source', x.source, 'created_at', flowd_ms(x.created_at))
$$;

-- Puts an address on the tenant's list. An address already there keeps its first reason and
-- source (a START reply lifts only a 'stop', so a later API call must not turn a bounce into
-- one); created says which happened.
CREATE OR REPLACE FUNCTION flowd_suppression_add(p_tenant bigint, p_channel text, p_address text,
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
CREATE OR REPLACE FUNCTION flowd_suppressions_json(p_tenant bigint, p_channel text, p_after text,
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

CREATE OR REPLACE FUNCTION flowd_suppression_delete(p_tenant bigint, p_channel text, p_address text)
RETURNS boolean LANGUAGE sql AS $$
    WITH d AS (DELETE FROM suppressions x
                WHERE x.tenant_id = p_tenant AND x.channel = p_channel AND x.address = p_address
               RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;
