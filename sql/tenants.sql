-- sql/tenants.sql: Tenants and their API keys.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Creates the default tenant with an admin key on first start. Returns false when it exists.
CREATE OR REPLACE FUNCTION flowd_bootstrap(p_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_tenant bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('flowd_bootstrap'));
    IF EXISTS (SELECT 1 FROM tenants WHERE name = 'default') THEN
        RETURN false;
    END IF;
    INSERT INTO tenants (name) VALUES ('default') RETURNING id INTO v_tenant;
    INSERT INTO api_keys (tenant_id, key_hash, prefix, role)
    VALUES (v_tenant, sha256(convert_to(p_key, 'UTF8')), left(p_key, 8), 'admin');
    RETURN true;
END $$;

-- The tenants whose keys p_tenant's admin keys manage: itself and the tenants it created.
CREATE OR REPLACE FUNCTION flowd_managed_tenant(p_tenant bigint, p_id bigint, p_name text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT t.id FROM tenants t
     WHERE (t.id = p_id OR (p_id IS NULL AND t.name = p_name))
       AND (t.id = p_tenant OR t.parent_id = p_tenant)
$$;

-- Stores a new key (given in clear, stored hashed) for a managed tenant: NULL when the target
-- tenant is not visible to the caller.
CREATE OR REPLACE FUNCTION flowd_create_key(p_tenant bigint, p_target_id bigint, p_target_name text,
                                 p_role text, p_key text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_target bigint := p_tenant;
    v_out    jsonb;
BEGIN
    IF p_target_id IS NOT NULL OR p_target_name IS NOT NULL THEN
        v_target := flowd_managed_tenant(p_tenant, p_target_id, p_target_name);
        IF v_target IS NULL THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO api_keys (tenant_id, key_hash, prefix, role)
    VALUES (v_target, sha256(convert_to(p_key, 'UTF8')), left(p_key, 8), p_role)
    RETURNING jsonb_build_object('id', api_keys.id, 'key', p_key, 'prefix', prefix,
                                 'tenant', (SELECT t.name FROM tenants t WHERE t.id = v_target),
                                 'tenant_id', v_target, 'role', role,
                                 'created_at', flowd_ms(created_at))
      INTO v_out;
    RETURN v_out;
END $$;

-- Revokes a key of a managed tenant: false when the caller cannot see it. Revoking twice is fine.
CREATE OR REPLACE FUNCTION flowd_revoke_key(p_tenant bigint, p_key bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH k AS (
        UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
         WHERE k.id = p_key
           AND k.tenant_id IN (SELECT t.id FROM tenants t
                                WHERE t.id = p_tenant OR t.parent_id = p_tenant)
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM k)
$$;

-- Creates a tenant under the caller's tenant with its priority_limit (NULL: the creating tenant's
-- own, which is also the most it may give; 22023 past it). 23505 (409) when the name is taken.
CREATE OR REPLACE FUNCTION flowd_create_tenant(p_parent bigint, p_name text, p_max_running integer,
                                    p_priority_limit integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_parent_limit integer;
    v_out jsonb;
BEGIN
    SELECT t.priority_limit INTO v_parent_limit FROM tenants t WHERE t.id = p_parent;
    IF p_priority_limit > coalesce(v_parent_limit, 0) THEN
        RAISE EXCEPTION 'priority_limit % exceeds the creating tenant''s own, %',
                        p_priority_limit, v_parent_limit
              USING ERRCODE = '22023', COLUMN = 'priority_limit';
    END IF;
    INSERT INTO tenants (name, max_running, parent_id, priority_limit)
    VALUES (p_name, p_max_running, p_parent, coalesce(p_priority_limit, v_parent_limit, 100))
    RETURNING jsonb_build_object('id', id, 'name', name, 'max_running', max_running,
                                 'priority_limit', priority_limit,
                                 'created_at', flowd_ms(created_at))
         INTO v_out;
    RETURN v_out;
END $$;
