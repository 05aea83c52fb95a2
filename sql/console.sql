-- sql/console.sql: The browser console's sign-in sessions (console_sessions, 0037).
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Opens a session for the API key whose SHA-256 is p_key_hash, unless it is unknown or revoked
-- (no row); drops expired sessions on the way, so the table holds about a day of sign-ins.
-- Sessions use real time, not the engine clock a test may move.
CREATE OR REPLACE FUNCTION flowd_console_session_open(p_key_hash bytea, p_token_hash bytea,
                                                      p_csrf text, p_ttl_s integer,
                                                      OUT tenant_id bigint, OUT role text,
                                                      OUT expires_at timestamptz)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM console_sessions s WHERE s.expires_at < now();
    RETURN QUERY
    WITH k AS (SELECT k.id, k.tenant_id, k.role FROM api_keys k
                WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL),
    ins AS (INSERT INTO console_sessions (token_hash, key_id, csrf, expires_at)
            SELECT p_token_hash, k.id, p_csrf, now() + p_ttl_s * interval '1 second' FROM k
            RETURNING console_sessions.expires_at)
    SELECT k.tenant_id, k.role, ins.expires_at FROM k CROSS JOIN ins;
END $$;

-- The tenant, role and CSRF value of a live session (no row when it is unknown, expired, or its
-- key was revoked).
CREATE OR REPLACE FUNCTION flowd_console_session(p_token_hash bytea,
                                                 OUT tenant_id bigint, OUT role text,
                                                 OUT csrf text, OUT expires_at timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT k.tenant_id, k.role, s.csrf, s.expires_at
      FROM console_sessions s JOIN api_keys k ON k.id = s.key_id
     WHERE s.token_hash = p_token_hash AND s.expires_at > now() AND k.revoked_at IS NULL
$$;
