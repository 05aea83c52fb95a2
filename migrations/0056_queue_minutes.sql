-- Runs finished per minute, counted as they finish (sql/ops.sql, flowd_count_run_ends), for the
-- hour GET /v1/queue draws. Read from runs, only the runs created in the hour could be counted
-- (no index finds runs by finish time, and one cost every run 3-4% more): a follow-up
-- sequence started last week that ended a minute ago was missing. One row per tenant, minute
-- and server process (shard: the backend's pid), so two workers' transactions never wait on
-- each other's row; rows older than two hours are deleted by the process registry's beat.
CREATE TABLE queue_minutes (
    tenant_id bigint NOT NULL,
    minute    timestamptz NOT NULL,
    shard     integer NOT NULL,
    succeeded bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, minute, shard)
);
