-- Free search on runs' metadata (GET /v1/runs?q=...): a support person types the start of a phone
-- number or an email and the runs whose metadata has a value starting so are found, whatever the
-- name. runs_meta (0036) answers only exact name-value pairs, and a GIN index cannot find a
-- prefix, so every value of a run's meta is kept here once more, lowercased and cut to 200
-- characters, under a btree in byte order (COLLATE "C"): a prefix is one range of it per tenant.
-- run_search_run serves the other way round, the newest runs checked one by one when a prefix is
-- common (q=a), and the cascade when runs are deleted (map items go with their parent step, so
-- retention cannot name them all). Runs without metadata have no rows here.
CREATE TABLE run_search (
    run_id    bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    tenant_id bigint NOT NULL,
    value     text COLLATE "C" NOT NULL
);
CREATE INDEX run_search_value ON run_search (tenant_id, value, run_id);
CREATE INDEX run_search_run ON run_search (run_id);
INSERT INTO run_search (run_id, tenant_id, value)
SELECT r.id, r.tenant_id, left(lower(m.value), 200)
  FROM runs r CROSS JOIN LATERAL jsonb_each_text(r.meta) m
 WHERE r.meta IS NOT NULL;
