-- What a step that calls out was given: its input after templates, as the worker rendered it for
-- its latest attempt (steps/inputs.h), for the console's step panel and GET /v1/runs/{id}/steps.
-- A table of its own rather than a column of steps: it is written only for the kinds that call a
-- provider or a URL, in batches apart from the step's outcome, so the step rows and the path of a
-- transform step through flowd_work stay as they were. input is NULL when the rendered input
-- (bytes of JSON) was over what is kept. No foreign key: the referenced side's trigger checks
-- every update of a step (and run_search's every update of a run), which cost a one-step run
-- 2,097 PostgreSQL instructions for the two (bench/run instructions: 418,070 with both keys,
-- 415,973 without). Retention deletes the rows of both tables with their runs (flowd_prune),
-- so run_search's key goes too.
CREATE TABLE step_inputs (
    step_id     bigint PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    attempt     integer NOT NULL,
    bytes       integer NOT NULL,
    input       jsonb,
    rendered_at timestamptz NOT NULL
);

ALTER TABLE run_search DROP CONSTRAINT run_search_run_id_fkey;
