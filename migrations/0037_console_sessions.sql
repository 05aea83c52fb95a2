-- Sign-in sessions of the browser console. A browser's EventSource cannot send an Authorization
-- header, so the console signs in once with an API key (POST /v1/console/session) and then
-- authenticates with an HttpOnly, SameSite=Strict cookie holding a random token; only the token's
-- SHA-256 is stored, as for API keys. A session acts with the tenant and role of the key it was
-- opened with and ends with it (revoking the key ends its sessions), at sign-out, or at
-- expires_at. csrf is the value the console sends back in X-CSRF-Token with every request that
-- changes something.
CREATE TABLE console_sessions (
    token_hash bytea PRIMARY KEY,
    key_id     bigint NOT NULL REFERENCES api_keys(id),
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_key ON console_sessions (key_id);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
