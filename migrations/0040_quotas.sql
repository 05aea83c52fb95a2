-- Quotas per tenant, set by the admin key of the tenant that created it (or of the operator's
-- "default" tenant). NULL: no limit. runs_per_month counts the runs created through the API
-- (single runs and batches) in the calendar month (UTC, engine clock).
CREATE TABLE tenant_quotas (
    tenant_id      bigint PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    runs_per_month bigint CHECK (runs_per_month >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- What a quota has used in its period. The row is the quota's lock: enqueuers of one tenant take
-- it in turns (an UPDATE that adds only while the sum stays within the limit), so no number of
-- processes can create runs past the limit.
CREATE TABLE quota_usage (
    tenant_id    bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    quota        text NOT NULL,
    period_start timestamptz NOT NULL,
    used         bigint NOT NULL,
    PRIMARY KEY (tenant_id, quota, period_start)
);
