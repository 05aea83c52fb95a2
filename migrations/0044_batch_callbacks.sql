-- A batch's one-off callback (POST /v1/batches {"webhook": {...}}): batch.completed and the run,
-- step and send events of its runs go to url, signed with the tenant's callback secret, as a
-- run's own callback does (run_callbacks, 0038).
CREATE TABLE batch_callbacks (
    batch_id  bigint PRIMARY KEY REFERENCES batches(id) ON DELETE CASCADE,
    tenant_id bigint NOT NULL,
    url       text NOT NULL,
    events    text[]                 -- NULL: every batch and run event
);
