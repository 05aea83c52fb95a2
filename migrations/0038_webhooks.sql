-- Outbound webhooks (Standard Webhooks 1.0): a tenant's endpoints, the messages its state changes
-- produce, one delivery per (message, endpoint) and every attempt of a delivery. Messages and
-- deliveries are written by triggers in the transaction that makes the change they report (a
-- transactional outbox: the triggers are in 0039, their functions in sql/webhooks.sql), and
-- delivered by the engine's dispatcher (engine/webhook.c). Times are the engine clock's
-- (flowd_now()), which the functions write: a migration calls no function of sql/.

-- A tenant's endpoint. url NULL marks the tenant's callback signer: the one row whose secret signs
-- the one-off callbacks that runs carry (each delivery then names its own url).
CREATE TABLE webhook_endpoints (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants(id),
    url             text,
    events          text[],          -- NULL: every event type
    workflows       text[],          -- NULL: every workflow
    description     text,
    secret          text NOT NULL,   -- whsec_<base64>: the receiver verifies with it
    previous_secret text,            -- still signs alongside the new one until previous_until
    previous_until  timestamptz,
    state           text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'paused', 'disabled')),
    disabled_reason text,
    failing_since   timestamptz,     -- first failed attempt since the last success
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, id);
CREATE UNIQUE INDEX webhook_endpoints_signer ON webhook_endpoints (tenant_id) WHERE url IS NULL;

-- One event. uid is the webhook-id every endpoint gets for it, on every attempt; body is the
-- exact payload signed and sent each time.
CREATE TABLE webhook_messages (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL,
    uid        text NOT NULL DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    type       text NOT NULL,
    run_id     bigint,
    body       text NOT NULL,
    created_at timestamptz NOT NULL
);

-- One message to one endpoint (or to a run's one-off callback url). Pending rows are due at
-- next_at; a claim moves next_at past its lease (leased_until), so a delivery whose process died
-- is due again when the lease lapses, with the same message and so the same webhook-id.
CREATE TABLE webhook_sends (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    message_id   bigint NOT NULL REFERENCES webhook_messages(id) ON DELETE CASCADE,
    endpoint_id  bigint NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    url          text,               -- a run's one-off callback; NULL: the endpoint's url
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,  -- since creation or the last redelivery
    next_at      timestamptz NOT NULL,
    leased_until timestamptz,
    last_status  integer,
    last_error   text,
    created_at   timestamptz NOT NULL,
    finished_at  timestamptz
);
CREATE INDEX webhook_sends_due ON webhook_sends (endpoint_id, next_at) WHERE state = 'pending';
CREATE INDEX webhook_sends_tenant ON webhook_sends (tenant_id, id);
CREATE INDEX webhook_sends_message ON webhook_sends (message_id);

CREATE TABLE webhook_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    send_id     bigint NOT NULL REFERENCES webhook_sends(id) ON DELETE CASCADE,
    at          timestamptz NOT NULL,
    status      integer,             -- NULL: no HTTP answer (error says why)
    latency_ms  integer NOT NULL,
    response    text,                -- the first bytes of the answer
    error       text
);
CREATE INDEX webhook_attempts_send ON webhook_attempts (send_id, id);

-- Batches whose batch.completed was written: once per batch.
CREATE TABLE webhook_batches_done (
    batch_id bigint PRIMARY KEY
);

-- A run's one-off callback (POST /v1/runs {"webhook": {...}}).
CREATE TABLE run_callbacks (
    run_id    bigint PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    tenant_id bigint NOT NULL,
    url       text NOT NULL,
    events    text[]                 -- NULL: every run event
);
