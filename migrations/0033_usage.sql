-- Usage: what every paid LLM call and every accepted message cost, recorded once, priced from a
-- versioned price table, and summed by rollups kept up to date as usage is written, so that a
-- month of a busy tenant is read from a few hundred rows instead of its steps.

-- Prices. tenant_id NULL: the shipped default; a tenant's row overrides it for that tenant. A price
-- applies from effective_from on; a new price is a new row, and the cost of a record is computed
-- when it is written, so changing a price never changes past costs.
-- kind 'llm': item is a model name or a prefix of one ("gpt-4o-mini" prices
-- "gpt-4o-mini-2024-07-18"; the longest matching prefix wins), priced per million tokens;
-- cached input tokens at cached_usd_per_mtok (NULL: as input). kind 'send': item is the channel
-- (email, sms, whatsapp), priced per message (per segment for SMS). provider NULL: any provider.
CREATE TABLE prices (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint REFERENCES tenants(id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('llm', 'send')),
    item                text NOT NULL CHECK (item <> ''),
    provider            text,
    effective_from      timestamptz NOT NULL,
    input_usd_per_mtok  numeric CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok numeric CHECK (output_usd_per_mtok >= 0),
    cached_usd_per_mtok numeric CHECK (cached_usd_per_mtok >= 0),
    usd_per_unit        numeric CHECK (usd_per_unit >= 0),
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX prices_version
    ON prices (coalesce(tenant_id, 0), kind, item, coalesce(provider, ''), effective_from);

-- The shipped defaults: the providers' list prices (USD) for the models the docs and shipped
-- workflows use and their neighbours, and Twilio's US SMS price per segment. Models served by
-- openai_compatible (local servers) and the sandboxes cost nothing unless a tenant prices them.
INSERT INTO prices (kind, item, provider, effective_from, input_usd_per_mtok, output_usd_per_mtok,
                    cached_usd_per_mtok)
VALUES ('llm', 'gpt-4o-mini', 'openai', '2024-01-01', 0.15, 0.60, 0.075),
       ('llm', 'gpt-4o', 'openai', '2024-01-01', 2.50, 10.00, 1.25),
       ('llm', 'gpt-4.1-mini', 'openai', '2024-01-01', 0.40, 1.60, 0.10),
       ('llm', 'gpt-4.1-nano', 'openai', '2024-01-01', 0.10, 0.40, 0.025),
       ('llm', 'gpt-4.1', 'openai', '2024-01-01', 2.00, 8.00, 0.50),
       ('llm', 'claude-sonnet-4', 'anthropic', '2024-01-01', 3.00, 15.00, 0.30),
       ('llm', 'claude-3-5-haiku', 'anthropic', '2024-01-01', 0.80, 4.00, 0.08),
       ('llm', 'claude-haiku-4', 'anthropic', '2024-01-01', 1.00, 5.00, 0.10),
       ('llm', 'claude-opus-4', 'anthropic', '2024-01-01', 15.00, 75.00, 1.50);
INSERT INTO prices (kind, item, provider, effective_from, usd_per_unit)
VALUES ('send', 'sms', 'twilio', '2024-01-01', 0.0083);

-- One row per paid LLM call (a success, a fallback's success, or a failed attempt the provider
-- charged for, ok = false) and per accepted message. Answers replayed from llm_records are not
-- calls and are not here. model is the LLM model or, for a message, its channel. Kept when the run
-- is deleted by retention (it is what was billed).
CREATE TABLE usage_records (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    at            timestamptz NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('llm', 'send')),
    workflow      text NOT NULL,
    run_id        bigint,
    step_key      text,
    provider      text NOT NULL,
    model         text NOT NULL,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    segments      integer NOT NULL DEFAULT 0,
    cost_usd      numeric NOT NULL DEFAULT 0,
    price_id      bigint,
    ok            boolean NOT NULL DEFAULT true
);
CREATE INDEX usage_records_tenant_at ON usage_records (tenant_id, at);
CREATE INDEX usage_records_run ON usage_records (run_id) WHERE run_id IS NOT NULL;

-- Rollup per tenant, UTC day (of the engine clock), workflow, kind, provider and model (or
-- channel). calls: LLM calls or messages.
CREATE TABLE usage_daily (
    tenant_id     bigint NOT NULL,
    day           date NOT NULL,
    kind          text NOT NULL,
    workflow      text NOT NULL,
    provider      text NOT NULL,
    model         text NOT NULL,
    calls         bigint NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    segments      bigint NOT NULL,
    cost_usd      numeric NOT NULL,
    PRIMARY KEY (tenant_id, day, kind, workflow, provider, model)
);

-- Rollup per run and day: a run's (and a batch's) totals, and usage by run over a range of days.
CREATE TABLE run_usage (
    run_id        bigint NOT NULL,
    day           date NOT NULL,
    tenant_id     bigint NOT NULL,
    batch_id      bigint,
    llm_calls     bigint NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    llm_cost_usd  numeric NOT NULL,
    sends         bigint NOT NULL,
    segments      bigint NOT NULL,
    send_cost_usd numeric NOT NULL,
    PRIMARY KEY (run_id, day)
);
CREATE INDEX run_usage_tenant_day ON run_usage (tenant_id, day);
CREATE INDEX run_usage_batch ON run_usage (batch_id) WHERE batch_id IS NOT NULL;
