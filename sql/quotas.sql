-- sql/quotas.sql: tenants' quotas (tables: migrations/0040_quotas.sql, 0043_quota_steps.sql):
-- runs taken when they are created, steps blocked before a call that a quota has no room for.

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

-- The step quotas of the tenant that have a limit (p_kind 'llm': LLM tokens and cost per month;
-- 'send': messages per day; NULL: all), with what their period used and when it resets. Read from
-- the rollup usage_daily (a month is at most a few hundred rows of a tenant), which is written in
-- the transaction that records each call, so a call counts once its answer is recorded.
CREATE OR REPLACE FUNCTION flowd_quota_spent(p_tenant bigint, p_kind text)
RETURNS TABLE (quota text, lim numeric, used numeric, resets_at timestamptz)
LANGUAGE sql STABLE AS $$
    WITH q AS (SELECT * FROM tenant_quotas t WHERE t.tenant_id = p_tenant),
    p AS (SELECT m.period_start, m.resets_at AS month_end,
                 (flowd_now() AT TIME ZONE 'UTC')::date AS today FROM flowd_quota_month() m),
    llm AS (
        SELECT coalesce(sum(u.input_tokens + u.output_tokens), 0) AS tokens,
               coalesce(sum(u.cost_usd), 0) AS cost
          FROM usage_daily u, p
         WHERE u.tenant_id = p_tenant AND u.kind = 'llm'
           AND u.day >= (p.period_start AT TIME ZONE 'UTC')::date
           AND EXISTS (SELECT 1 FROM q WHERE q.llm_tokens_per_month IS NOT NULL
                                          OR q.llm_cost_usd_per_month IS NOT NULL))
    SELECT 'llm_tokens_per_month', q.llm_tokens_per_month::numeric, llm.tokens, p.month_end
      FROM q, p, llm
     WHERE q.llm_tokens_per_month IS NOT NULL AND coalesce(p_kind, 'llm') = 'llm'
    UNION ALL
    SELECT 'llm_cost_usd_per_month', q.llm_cost_usd_per_month, llm.cost, p.month_end
      FROM q, p, llm
     WHERE q.llm_cost_usd_per_month IS NOT NULL AND coalesce(p_kind, 'llm') = 'llm'
    UNION ALL
    SELECT 'sends_per_day', q.sends_per_day::numeric,
           coalesce((SELECT u.used FROM quota_usage u
                      WHERE u.tenant_id = p_tenant AND u.quota = 'sends_per_day'
                        AND u.period_start = p.today::timestamp AT TIME ZONE 'UTC'),
                    flowd_quota_sends_accepted(p_tenant, p.today)),
           (p.today + 1)::timestamp AT TIME ZONE 'UTC'
      FROM q, p
     WHERE q.sends_per_day IS NOT NULL AND coalesce(p_kind, 'send') = 'send'
$$;

-- The messages of the tenant accepted on the UTC day p_day, from the rollup.
CREATE OR REPLACE FUNCTION flowd_quota_sends_accepted(p_tenant bigint, p_day date) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(u.calls), 0) FROM usage_daily u
     WHERE u.tenant_id = p_tenant AND u.kind = 'send' AND u.day = p_day
$$;

-- Takes one message from the tenant's sends_per_day (p_limit) for today, on the quota's own row
-- (quota_usage), so that checks of any number of processes take turns and none lets a message
-- through past the limit; the day's first take starts from the messages accepted so far today.
-- Every message let through counts, even one the provider then refuses. Returns whether it fit.
CREATE OR REPLACE FUNCTION flowd_quota_take_send(p_tenant bigint, p_limit bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_today date := (flowd_now() AT TIME ZONE 'UTC')::date;
    v_start timestamptz := v_today::timestamp AT TIME ZONE 'UTC';
BEGIN
    INSERT INTO quota_usage (tenant_id, quota, period_start, used)
    VALUES (p_tenant, 'sends_per_day', v_start, flowd_quota_sends_accepted(p_tenant, v_today))
    ON CONFLICT DO NOTHING;
    UPDATE quota_usage u SET used = u.used + 1
     WHERE u.tenant_id = p_tenant AND u.quota = 'sends_per_day' AND u.period_start = v_start
       AND u.used + 1 <= p_limit;
    RETURN FOUND;
END $$;

-- Asks, before an llm call (p_kind 'llm') or a message (p_kind 'send', under the ledger's p_key)
-- of step p_step that p_owner runs, whether the tenant's quotas have room. verdict:
--   go       room, or a message the ledger has as accepted already (it is not sent again);
--            limited false: the tenant has no quota of this kind, which the worker may remember
--            for a while instead of asking again
--   fail     no room, and the workflow's "quota": {"on_exceeded": "fail"} says to fail the step
--   blocked  no room: the step is now 'blocked' until the quota's period resets (run_at) or the
--            quota changes (flowd_quota_unblock), its attempt not spent, with a step.blocked event;
--            or it was no longer p_owner's to block. Either way the worker lets go of it.
-- reason: {code: "quota_exceeded", quota, limit, used, resets_at, message}. A message is taken
-- from sends_per_day as it is let through (flowd_quota_take_send), so messages never pass the
-- limit. LLM tokens and cost are known only once a call answered: the check reads what is
-- recorded, so the calls already let through when a quota fills are not stopped, and the quota
-- is overshot by at most what those calls spend.
CREATE OR REPLACE FUNCTION flowd_quota_step(p_owner text, p_step bigint, p_kind text,
                                            p_key text, OUT verdict text, OUT limited boolean,
                                            OUT reason jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_over record;
BEGIN
    verdict := 'go';
    SELECT s.tenant_id, s.run_id, s.key INTO v_step FROM steps s WHERE s.id = p_step;
    -- FOR SHARE: a change of the quotas waits for this check, whose block it then sees and
    -- lifts if it has room (flowd_quota_unblock); a check waiting for a change reads the new
    -- quotas
    SELECT CASE WHEN p_kind = 'llm'
                THEN q.llm_tokens_per_month IS NOT NULL OR q.llm_cost_usd_per_month IS NOT NULL
                ELSE q.sends_per_day IS NOT NULL END
      INTO limited FROM tenant_quotas q WHERE q.tenant_id = v_step.tenant_id FOR SHARE;
    limited := coalesce(limited, false);
    IF NOT limited OR EXISTS (SELECT 1 FROM sends x
                               WHERE x.tenant_id = v_step.tenant_id AND x.send_key = p_key
                                 AND x.state = 'accepted') THEN
        RETURN;
    END IF;
    IF p_kind = 'send' AND flowd_quota_take_send(v_step.tenant_id, (
            SELECT q.sends_per_day FROM tenant_quotas q WHERE q.tenant_id = v_step.tenant_id)) THEN
        RETURN;
    END IF;
    -- of several quotas used up, the one that resets last: the step cannot go before then
    SELECT x.* INTO v_over FROM flowd_quota_spent(v_step.tenant_id, p_kind) x
     WHERE x.used >= x.lim ORDER BY x.resets_at DESC, x.quota LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    reason := jsonb_build_object(
        'code', 'quota_exceeded', 'quota', v_over.quota, 'limit', v_over.lim::float8,
        'used', v_over.used::float8, 'resets_at', flowd_ms(v_over.resets_at),
        'message', format('quota %s is used up (%s of %s); it resets at %s', v_over.quota,
                          v_over.used::float8, v_over.lim::float8, flowd_ms(v_over.resets_at)));
    IF (SELECT w.def->'quota'->>'on_exceeded' FROM runs r JOIN workflows w ON w.id = r.workflow_id
         WHERE r.id = v_step.run_id) = 'fail' THEN
        verdict := 'fail';
        RETURN;
    END IF;
    verdict := 'blocked';
    PERFORM 1 FROM runs WHERE id = v_step.run_id FOR UPDATE;
    WITH b AS (
        UPDATE steps SET state = 'blocked', attempts = attempts - 1, run_at = v_over.resets_at,
                         scheduled = true, error = reason, lease_owner = NULL,
                         lease_expires_at = NULL
         WHERE id = p_step AND state = 'running' AND lease_owner = p_owner
        RETURNING id, run_id, tenant_id, key, run_at),
    l AS (
        INSERT INTO quota_blocked_steps AS q (step_id, tenant_id, run_at)
        SELECT b.id, b.tenant_id, b.run_at FROM b
        ON CONFLICT (step_id) DO UPDATE SET run_at = EXCLUDED.run_at)
    INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
    SELECT b.run_id, b.tenant_id, flowd_now(), 'step.blocked', b.key, reason FROM b;
END $$;

-- Makes blocked steps ready again: with p_tenant NULL, those whose quota's period has reset (the
-- maintenance tick, flowd_tick); else those of p_tenant whose quota has room now (its quotas
-- changed). A step.unblocked event each, and a NOTIFY for the workers. Returns how many.
CREATE OR REPLACE FUNCTION flowd_quota_unblock(p_tenant bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := flowd_now();
    v_ids bigint[];
    v_n   integer;
BEGIN
    IF p_tenant IS NULL THEN
        WITH d AS (
            DELETE FROM quota_blocked_steps q
             WHERE q.step_id IN (SELECT x.step_id FROM quota_blocked_steps x
                                  WHERE x.run_at <= v_now LIMIT 1000)
            RETURNING q.step_id)
        SELECT array_agg(d.step_id) INTO v_ids FROM d;
    ELSE
        WITH d AS (
            DELETE FROM quota_blocked_steps q
             WHERE q.tenant_id = p_tenant
               AND NOT EXISTS (SELECT 1 FROM steps s
                                WHERE s.id = q.step_id AND s.state = 'blocked'
                                  AND EXISTS (SELECT 1 FROM flowd_quota_spent(p_tenant, NULL) x
                                               WHERE x.quota = s.error->>'quota'
                                                 AND x.used >= x.lim))
            RETURNING q.step_id)
        SELECT array_agg(d.step_id) INTO v_ids FROM d;
    END IF;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM runs
      WHERE id IN (SELECT s.run_id FROM steps s WHERE s.id = ANY (v_ids))
      ORDER BY id FOR UPDATE;
    WITH u AS (
        UPDATE steps s SET state = 'ready', run_at = v_now, error = NULL
         WHERE s.id = ANY (v_ids) AND s.state = 'blocked'
        RETURNING s.run_id, s.tenant_id, s.key)
    INSERT INTO run_events (run_id, tenant_id, at, type, step_key)
    SELECT u.run_id, u.tenant_id, v_now, 'step.unblocked', u.key FROM u;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN
        PERFORM pg_notify('flowd_ready', '');
    END IF;
    RETURN v_n;
END $$;

-- One quota as the API shows it: {limit, used, resets_at}, or null when it has no limit.
CREATE OR REPLACE FUNCTION flowd_quota_json(p_lim numeric, p_used numeric, p_resets timestamptz)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_lim IS NOT NULL THEN jsonb_build_object(
               'limit', p_lim, 'used', coalesce(p_used, 0), 'resets_at', flowd_ms(p_resets))
           ELSE 'null'::jsonb END
$$;

-- The tenant's quotas as the API shows them: {tenant, runs_per_month, llm_tokens_per_month,
-- llm_cost_usd_per_month, sends_per_day}, each {limit, used, resets_at} or null; NULL when
-- p_admin (an admin key's tenant) may not see the tenant named p_name (itself, a tenant it
-- created, or any tenant for the operator's "default").
CREATE OR REPLACE FUNCTION flowd_quotas_json(p_admin bigint, p_name text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('tenant', t.name, 'runs_per_month',
               flowd_quota_json(q.runs_per_month,
                   coalesce((SELECT u.used FROM quota_usage u
                              WHERE u.tenant_id = t.id AND u.quota = 'runs_per_month'
                                AND u.period_start = m.period_start),
                            (SELECT count(*) FROM runs r
                              WHERE r.tenant_id = t.id AND r.parent_step_id IS NULL
                                AND r.created_at >= m.period_start)),
                   m.resets_at),
               'llm_tokens_per_month', NULL, 'llm_cost_usd_per_month', NULL,
               'sends_per_day', NULL)
           || coalesce((SELECT jsonb_object_agg(x.quota, flowd_quota_json(x.lim, x.used,
                                                                          x.resets_at))
                          FROM flowd_quota_spent(t.id, NULL) x), '{}')
      FROM tenants t
      LEFT JOIN tenant_quotas q ON q.tenant_id = t.id
     CROSS JOIN flowd_quota_month() m
     WHERE t.name = p_name
       AND (t.id = p_admin OR t.parent_id = p_admin
            OR p_admin = (SELECT d.id FROM tenants d WHERE d.name = 'default'))
$$;

-- Sets quotas of the tenant named p_name from p_quotas: the quotas it names are set (null: no
-- limit), the others keep theirs. For the admin key of the tenant that created it or of "default"
-- (never a tenant's own: it would raise its own budget). Steps blocked by a quota that has room
-- now go on at once. NULL when p_admin may not set them.
CREATE OR REPLACE FUNCTION flowd_quotas_put(p_admin bigint, p_name text, p_quotas jsonb)
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
    INSERT INTO tenant_quotas AS q (tenant_id, runs_per_month, llm_tokens_per_month,
                                    llm_cost_usd_per_month, sends_per_day)
    VALUES (v_tenant, (p_quotas->>'runs_per_month')::bigint,
            (p_quotas->>'llm_tokens_per_month')::bigint,
            (p_quotas->>'llm_cost_usd_per_month')::numeric, (p_quotas->>'sends_per_day')::bigint)
    ON CONFLICT (tenant_id) DO UPDATE SET
        runs_per_month = CASE WHEN p_quotas ? 'runs_per_month'
                              THEN EXCLUDED.runs_per_month ELSE q.runs_per_month END,
        llm_tokens_per_month = CASE WHEN p_quotas ? 'llm_tokens_per_month'
                                    THEN EXCLUDED.llm_tokens_per_month
                                    ELSE q.llm_tokens_per_month END,
        llm_cost_usd_per_month = CASE WHEN p_quotas ? 'llm_cost_usd_per_month'
                                      THEN EXCLUDED.llm_cost_usd_per_month
                                      ELSE q.llm_cost_usd_per_month END,
        sends_per_day = CASE WHEN p_quotas ? 'sends_per_day'
                             THEN EXCLUDED.sends_per_day ELSE q.sends_per_day END,
        updated_at = now();
    PERFORM flowd_quota_unblock(v_tenant);
    RETURN flowd_quotas_json(p_admin, p_name);
END $$;
