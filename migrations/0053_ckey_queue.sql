-- The step each step with a concurrency key queued behind: the latest step of its key (same
-- tenant) that had not finished when it was created. The claim starts a step only once every
-- earlier step of its key has finished, one at a time in their order, so that step's finish is
-- when the key came free for it; GET /v1/runs/{id} shows it, which is how a wait for the key is
-- told from the queue. Written by flowd_create_runs for keyed steps that had one, deleted with
-- their run (flowd_prune). A table of its own rather than a column of steps: a column, even one
-- always NULL, costs every update of every step (about 270 instructions a step in `bench/run
-- instructions`); steps without a key pay nothing for this.
CREATE TABLE ckey_queue (
    tenant_id bigint NOT NULL,
    run_id    bigint NOT NULL,
    step_id   bigint NOT NULL,
    behind    bigint NOT NULL,  -- steps.id; no foreign key: retention may delete that step first
    PRIMARY KEY (run_id, step_id)
);
