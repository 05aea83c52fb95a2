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
    parent_step_id  bigint,               -- the map step this run is an item of
    parent_index    integer,              -- its item's position in the map
    created_at      timestamptz NOT NULL DEFAULT flowd_now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_tenant_recent ON runs (tenant_id, id DESC);
CREATE INDEX runs_batch ON runs (batch_id) WHERE batch_id IS NOT NULL;
-- state and progress are not indexed: room on the page lets their updates be HOT
ALTER TABLE runs SET (fillfactor = 80);
CREATE INDEX runs_parent ON runs (parent_step_id) WHERE parent_step_id IS NOT NULL;

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
    nneeds           integer NOT NULL DEFAULT 0,  -- needs in the definition
    needs_left       integer NOT NULL,   -- needs not yet finished
    needs_skipped    integer NOT NULL DEFAULT 0,  -- finished needs that were skipped
    dependents       integer[] NOT NULL DEFAULT '{}',  -- idx of the steps that need this one
    delay_ms         bigint NOT NULL DEFAULT 0,        -- wait after the needs finished
    send_window      jsonb,              -- sending window with its time zone rendered, when SQL
                                         -- can place the step in it as soon as it is ready
    state            text NOT NULL
                     CHECK (state IN ('pending', 'ready', 'running', 'waiting', 'succeeded',
                                      'failed', 'skipped', 'cancelled')),
    key              text NOT NULL,
    kind             text NOT NULL,
    phase            text,               -- the definition's phase label, for progress
    ckey             text,               -- rendered concurrency key: one running at a time, in order
    wait_event       text,               -- 'waiting' on an event (name, key) until run_at ...
    wait_key         text,               -- ... or, both NULL, on the children of a map
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
CREATE INDEX steps_waiting ON steps (tenant_id, wait_event, wait_key) WHERE state = 'waiting';
CREATE INDEX steps_wait_due ON steps (run_at) WHERE state = 'waiting' AND wait_event IS NOT NULL;
CREATE INDEX steps_ckey ON steps (tenant_id, ckey, id)
    WHERE ckey IS NOT NULL AND state IN ('pending', 'ready', 'running', 'waiting');
ALTER TABLE steps SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
                       autovacuum_vacuum_threshold = 1000);

-- Append-only log of every transition; its id is the sequence number clients poll after.
-- Written several times per step on the hot path, so it carries only the index readers use: no
-- primary key (the identity is unique by construction) and no foreign key (only the transition
-- functions write here, always for a run they hold locked).
CREATE TABLE run_events (
    id        bigint GENERATED ALWAYS AS IDENTITY,
    run_id    bigint NOT NULL,
    tenant_id bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT flowd_now(),
    type      text NOT NULL,   -- run.created, run.started, step.started, step.succeeded, ...
    step_key  text,
    data      jsonb
);
CREATE INDEX run_events_run ON run_events (run_id, id);

-- Outside events ("the lead replied"). Kept for a retention window so that a wait that starts
-- after its event arrived still receives it.
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants(id),
    name        text NOT NULL,
    key         text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT flowd_now()
);
CREATE INDEX events_lookup ON events (tenant_id, name, key, received_at);

-- The rendered cancel_on entries of live runs.
CREATE TABLE run_cancel_on (
    run_id    bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    tenant_id bigint NOT NULL,
    event     text NOT NULL,
    key       text NOT NULL,
    PRIMARY KEY (tenant_id, event, key, run_id)
);

-- Fan-out: one row per map step, one per item. Children are started up to `concurrency` at once.
CREATE TABLE maps (
    step_id        bigint PRIMARY KEY REFERENCES steps(id) ON DELETE CASCADE,
    tenant_id      bigint NOT NULL,
    workflow_id    bigint NOT NULL REFERENCES workflows(id),
    concurrency    integer NOT NULL CHECK (concurrency > 0),
    allow_failures boolean NOT NULL
);
CREATE TABLE map_items (
    step_id      bigint NOT NULL REFERENCES maps(step_id) ON DELETE CASCADE,
    idx          integer NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    input        jsonb NOT NULL,
    child_run_id bigint,
    result       jsonb,
    PRIMARY KEY (step_id, idx)
);
CREATE INDEX map_items_child ON map_items (child_run_id) WHERE child_run_id IS NOT NULL;
