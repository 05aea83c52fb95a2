-- sql/quotas.sql: tenants' quotas (tables: migrations/0040_quotas.sql).

-- The start of the month (UTC) of the engine clock, and of the next one.
CREATE OR REPLACE FUNCTION flowd_quota_month(OUT period_start timestamptz, OUT resets_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT m AT TIME ZONE 'UTC', (m + interval '1 month') AT TIME ZONE 'UTC'
      FROM (SELECT date_trunc('month', flowd_now() AT TIME ZONE 'UTC') AS m) t
$$;

-- Takes p_n runs from the tenant's runs_per_month, in the caller's transaction (so a run that is
-- not created gives its share back with the rollback). Over the limit: SQLSTATE FL429 with the
-- message a JSON object {quota, limit, used, resets_at, retry_after_s} the API answers 429 with. The first take
-- of a month counts the runs the tenant already created in it.
CREATE OR REPLACE FUNCTION flowd_quota_take_runs(p_tenant bigint, p_n integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_limit bigint;
    v_month record;
    v_used  bigint;
BEGIN
    SELECT q.runs_per_month INTO v_limit FROM tenant_quotas q WHERE q.tenant_id = p_tenant;
    IF v_limit IS NULL THEN
        RETURN;
    END IF;
    v_month := flowd_quota_month();
    INSERT INTO quota_usage (tenant_id, quota, period_start, used)
    SELECT p_tenant, 'runs_per_month', v_month.period_start, count(*) FROM runs r
     WHERE r.tenant_id = p_tenant AND r.parent_step_id IS NULL
       AND r.created_at >= v_month.period_start
    ON CONFLICT DO NOTHING;
    UPDATE quota_usage u SET used = u.used + p_n
     WHERE u.tenant_id = p_tenant AND u.quota = 'runs_per_month'
       AND u.period_start = v_month.period_start AND u.used + p_n <= v_limit
    RETURNING u.used INTO v_used;
    IF NOT FOUND THEN
        SELECT u.used INTO v_used FROM quota_usage u
         WHERE u.tenant_id = p_tenant AND u.quota = 'runs_per_month'
           AND u.period_start = v_month.period_start;
        RAISE EXCEPTION '%', jsonb_build_object(
                'quota', 'runs_per_month', 'limit', v_limit, 'used', v_used,
                'resets_at', flowd_ms(v_month.resets_at),
                'retry_after_s', ceil(extract(epoch FROM v_month.resets_at - flowd_now())))::text
            USING ERRCODE = 'FL429';
    END IF;
END $$;

-- The tenant's quotas as the API shows them: {"runs_per_month": {limit, used, resets_at} | null};
-- NULL when p_admin (an admin key's tenant) may not see the tenant named p_name (itself, a tenant
-- it created, or any tenant for the operator's "default").
CREATE OR REPLACE FUNCTION flowd_quotas_json(p_admin bigint, p_name text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('tenant', t.name, 'runs_per_month',
               CASE WHEN q.runs_per_month IS NOT NULL THEN jsonb_build_object(
                   'limit', q.runs_per_month,
                   'used', coalesce((SELECT u.used FROM quota_usage u
                                      WHERE u.tenant_id = t.id AND u.quota = 'runs_per_month'
                                        AND u.period_start = m.period_start),
                                    (SELECT count(*) FROM runs r
                                      WHERE r.tenant_id = t.id AND r.parent_step_id IS NULL
                                        AND r.created_at >= m.period_start)),
                   'resets_at', flowd_ms(m.resets_at)) END)
      FROM tenants t
      LEFT JOIN tenant_quotas q ON q.tenant_id = t.id
     CROSS JOIN flowd_quota_month() m
     WHERE t.name = p_name
       AND (t.id = p_admin OR t.parent_id = p_admin
            OR p_admin = (SELECT d.id FROM tenants d WHERE d.name = 'default'))
$$;

-- Sets the quotas of the tenant named p_name (p_runs NULL: no limit), for the admin key of the
-- tenant that created it or of "default" (never a tenant's own: it would raise its own budget).
-- NULL when p_admin may not set them.
CREATE OR REPLACE FUNCTION flowd_quotas_put(p_admin bigint, p_name text, p_runs bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_tenant bigint;
BEGIN
    SELECT t.id INTO v_tenant FROM tenants t
     WHERE t.name = p_name
       AND (t.parent_id = p_admin
            OR p_admin = (SELECT d.id FROM tenants d WHERE d.name = 'default'));
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO tenant_quotas (tenant_id, runs_per_month) VALUES (v_tenant, p_runs)
    ON CONFLICT (tenant_id) DO UPDATE SET runs_per_month = EXCLUDED.runs_per_month,
                                          updated_at = now();
    RETURN flowd_quotas_json(p_admin, p_name);
END $$;
