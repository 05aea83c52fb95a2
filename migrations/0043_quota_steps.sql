-- Quotas on what steps spend: LLM tokens and LLM cost per calendar month, messages per day (UTC,
-- engine clock), each optional (NULL: no limit). A step that would spend past one waits in the new
-- step state 'blocked' until the period resets or the quota is raised (sql/quotas.sql).
ALTER TABLE tenant_quotas
    ADD COLUMN llm_tokens_per_month bigint CHECK (llm_tokens_per_month >= 0),
    ADD COLUMN llm_cost_usd_per_month numeric CHECK (llm_cost_usd_per_month >= 0),
    ADD COLUMN sends_per_day bigint CHECK (sends_per_day >= 0);

-- blocked: an llm or messaging step a quota stopped before its call; run_at is when the quota's
-- period resets, error says which quota, its limit, what was used and the reset time.
ALTER TABLE steps DROP CONSTRAINT steps_state_check;
ALTER TABLE steps ADD CONSTRAINT steps_state_check
    CHECK (state IN ('pending', 'ready', 'running', 'waiting', 'succeeded', 'failed', 'skipped',
                     'cancelled', 'blocked'));

-- The blocked steps, found here by the maintenance tick (those whose period reset), by a quota's
-- change (its tenant's) and by /metrics. A partial index of steps would do the same, at the price
-- of its predicate on every write of every step (0.15% of the server's instructions per step,
-- bench/run instructions); a row here is written when a step is blocked and deleted when it is
-- let go (a row whose step ended otherwise, cancelled or deleted, goes when its time comes).
CREATE TABLE quota_blocked_steps (
    step_id   bigint PRIMARY KEY,
    tenant_id bigint NOT NULL,
    run_at    timestamptz NOT NULL
);
CREATE INDEX quota_blocked_steps_run_at ON quota_blocked_steps (run_at);
CREATE INDEX quota_blocked_steps_tenant ON quota_blocked_steps (tenant_id);

-- A blocked step holds its concurrency key like a waiting one: the next message of the same
-- customer waits behind it.
DROP INDEX steps_ckey;
CREATE INDEX steps_ckey ON steps (tenant_id, ckey, id)
    WHERE ckey IS NOT NULL AND state IN ('pending', 'ready', 'running', 'waiting', 'blocked');

-- The signature taking runs_per_month alone is replaced by one taking the quotas as JSON.
DROP FUNCTION IF EXISTS flowd_quotas_put(bigint, text, bigint);
