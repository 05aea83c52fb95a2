-- GET /v1/batches lists a tenant's batches newest first (flowd_batches_json).
CREATE INDEX batches_tenant_recent ON batches (tenant_id, id DESC);
