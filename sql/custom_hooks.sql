-- sql/custom_hooks.sql: Inbound custom hooks (the table is in migrations/0041_custom_hooks.sql):
-- the API's reads and writes (api/routes_custom_hooks.c), and applying a verified delivery.
-- Every API function takes the caller's tenant first; what it cannot see reads as NULL (404).
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md).

-- A hook as the API shows it: its secret never, only that one is set.
CREATE OR REPLACE FUNCTION flowd_custom_hook_obj(h custom_hooks) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'name', h.name,
        'verify', (h.verify - 'secret') || jsonb_build_object('secret_set', h.verify ? 'secret'),
        'event', h.event, 'dedup', h.dedup,
        'created_at', flowd_ms(h.created_at), 'updated_at', flowd_ms(h.updated_at))
$$;

-- Creates or replaces hook p_name (checked by the caller; the secret in p_verify sealed).
CREATE OR REPLACE FUNCTION flowd_custom_hook_put(p_tenant bigint, p_name text, p_verify jsonb,
                                                 p_event jsonb, p_dedup text,
                                                 OUT created boolean, OUT hook jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    h custom_hooks;
    v_now timestamptz := flowd_now();
BEGIN
    created := NOT EXISTS (SELECT 1 FROM custom_hooks x WHERE x.tenant_id = p_tenant
                                                          AND x.name = p_name);
    INSERT INTO custom_hooks AS x (tenant_id, name, verify, event, dedup, created_at, updated_at)
    VALUES (p_tenant, p_name, p_verify, p_event, p_dedup, v_now, v_now)
    ON CONFLICT (tenant_id, name) DO UPDATE
       SET verify = EXCLUDED.verify, event = EXCLUDED.event, dedup = EXCLUDED.dedup,
           updated_at = v_now
    RETURNING * INTO h;
    hook := flowd_custom_hook_obj(h);
END $$;

CREATE OR REPLACE FUNCTION flowd_custom_hook_json(p_tenant bigint, p_name text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT flowd_custom_hook_obj(h) FROM custom_hooks h
     WHERE h.tenant_id = p_tenant AND h.name = p_name
$$;

CREATE OR REPLACE FUNCTION flowd_custom_hooks_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('hooks', coalesce(jsonb_agg(flowd_custom_hook_obj(h)
                                                          ORDER BY h.name), '[]'))
      FROM custom_hooks h WHERE h.tenant_id = p_tenant
$$;

-- Removes the hook; the dedup keys of its deliveries stay until retention removes them, so a
-- hook put again under the name still recognises a replay.
CREATE OR REPLACE FUNCTION flowd_custom_hook_delete(p_tenant bigint, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM custom_hooks h WHERE h.tenant_id = p_tenant AND h.name = p_name;
    RETURN FOUND;
END $$;

-- Applies one verified delivery of hook p_name: its dedup key is recorded, and the event applied
-- as POST /v1/events applies it (flowd_event_to, starting exactly the checked versions
-- p_workflows), in one transaction. A key seen before makes it a no-op: duplicate is true.
CREATE OR REPLACE FUNCTION flowd_custom_hook_apply(p_tenant bigint, p_name text, p_dedup text,
                                                   p_event text, p_key text, p_data jsonb,
                                                   p_workflows bigint[],
                                                   OUT duplicate boolean, OUT resumed integer,
                                                   OUT cancelled integer, OUT started integer)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (tenant_id, provider, dedup_key)
    VALUES (p_tenant, 'custom:' || p_name, p_dedup) ON CONFLICT DO NOTHING;
    duplicate := NOT FOUND;
    resumed := 0; cancelled := 0; started := 0;
    IF NOT duplicate THEN
        SELECT e.resumed, e.cancelled, e.started INTO resumed, cancelled, started
          FROM flowd_event_to(p_tenant, p_event, p_key, p_data, p_workflows) e;
    END IF;
END $$;
