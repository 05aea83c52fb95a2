-- Inbound custom hooks (PUT /v1/hooks/custom/{name}): how one service's webhook to a tenant is
-- verified and the event it becomes. The deliveries' dedup keys go to webhook_deliveries (0008),
-- with provider 'custom:' || name, in the transaction that applies the event; flowd_prune ages them
-- out with the providers' keys.
CREATE TABLE custom_hooks (
    tenant_id  bigint NOT NULL REFERENCES tenants(id),
    name       text NOT NULL,
    verify     jsonb NOT NULL,  -- the scheme and its settings; "secret" sealed (steps/secret.h)
    event      jsonb NOT NULL,  -- {name, key, data?}: templates over {body, headers}
    dedup      text,            -- template of the dedup key; NULL: the raw body's SHA-256
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
