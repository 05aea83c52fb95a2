-- Core schema: tenants and keys, workflow definitions, runs, steps and the run event log.
-- Every row carries its tenant. Step transitions live in PL/pgSQL functions (0002) so that each
-- transition is one atomic statement and one round trip, whichever process runs it.

CREATE TABLE tenants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    max_running integer,            -- cap on this tenant's steps running at once; NULL = no cap
    rate_per_s  double precision,   -- API request rate limit; NULL = default
    rate_burst  integer,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants(id),
    key_hash    bytea NOT NULL UNIQUE,  -- sha256 of the key; the key itself is never stored
    prefix      text NOT NULL,          -- first characters, to tell keys apart in listings
    role        text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- The engine clock: real time plus an offset that only test mode may move. Every time comparison
-- of the engine goes through flowd_now(), so all processes on a database share one clock.
CREATE TABLE flowd_clock (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    offset_ms bigint NOT NULL DEFAULT 0
);
INSERT INTO flowd_clock DEFAULT VALUES;

CREATE FUNCTION flowd_now() RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT now() + offset_ms * interval '1 millisecond' FROM flowd_clock
$$;

CREATE TABLE workflows (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants(id),
    name        text NOT NULL,
    version     integer NOT NULL,
    digest      text NOT NULL,        -- of the canonical source: same JSON, same version
    source      jsonb NOT NULL,       -- as registered
    def         jsonb NOT NULL,       -- normalized by wf_def_compile (indices, defaults, deps)
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name, version),
    UNIQUE (tenant_id, name, digest)
);

CREATE TABLE runs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL,
    workflow_id     bigint NOT NULL REFERENCES workflows(id),
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority        integer NOT NULL DEFAULT 0,
    steps_total     integer NOT NULL,
    steps_done      integer NOT NULL DEFAULT 0,
    input           jsonb NOT NULL,
    output          jsonb,
    error           jsonb,
    idempotency_key text,
    batch_id        bigint,
    created_at      timestamptz NOT NULL DEFAULT flowd_now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_tenant_recent ON runs (tenant_id, id DESC);
CREATE INDEX runs_batch ON runs (batch_id) WHERE batch_id IS NOT NULL;

-- One row per step of a run. Claimable rows are found through the partial index steps_claim,
-- which stays small because only 'ready' rows are in it.
CREATE TABLE steps (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    tenant_id        bigint NOT NULL,
    idx              integer NOT NULL,   -- position in the normalized definition
    priority         integer NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    needs_left       integer NOT NULL,   -- needs not yet finished
    needs_skipped    integer NOT NULL DEFAULT 0,  -- finished needs that were skipped
    state            text NOT NULL
                     CHECK (state IN ('pending', 'ready', 'running', 'succeeded', 'failed',
                                      'skipped', 'cancelled')),
    key              text NOT NULL,
    kind             text NOT NULL,
    run_at           timestamptz NOT NULL DEFAULT flowd_now(),  -- not before (retries, delays, timers)
    ready_at         timestamptz,        -- when its needs were all met
    scheduled        boolean NOT NULL DEFAULT false,  -- run_at already honours delay/at/window
    lease_owner      text,
    lease_expires_at timestamptz,
    output           jsonb,
    error            jsonb,
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (run_id, idx)
);
CREATE INDEX steps_claim ON steps (priority DESC, run_at, id) WHERE state = 'ready';
CREATE INDEX steps_due ON steps (run_at) WHERE state = 'ready';
CREATE INDEX steps_lease ON steps (lease_expires_at) WHERE state = 'running';
ALTER TABLE steps SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
                       autovacuum_vacuum_threshold = 1000);

-- Append-only log of every transition; its id is the sequence number clients poll after.
CREATE TABLE run_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id    bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    tenant_id bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT flowd_now(),
    type      text NOT NULL,   -- run.created, run.started, step.started, step.succeeded, ...
    step_key  text,
    data      jsonb
);
CREATE INDEX run_events_run ON run_events (run_id, id);
