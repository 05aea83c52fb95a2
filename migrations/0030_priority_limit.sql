-- The priority a tenant's runs may use is bounded by the tenant's priority_limit (a run's priority
-- must lie in -limit..limit; default 100, the API's own range being -1000..1000): claims are fair
-- across tenants (0029), so a priority orders only the tenant's own steps, and the operator decides
-- how far each tenant may spread them. A tenant creating another gives it at most its own limit.

ALTER TABLE tenants ADD COLUMN priority_limit integer NOT NULL DEFAULT 100
    CHECK (priority_limit BETWEEN 0 AND 1000);

-- As in 0002, refusing a priority outside the tenant's range (22023, naming the column).
CREATE OR REPLACE FUNCTION flowd_enqueue(p_tenant bigint, p_workflow bigint, p_inputs jsonb,
                              p_priority integer, p_idempotency_key text, p_batch bigint)
RETURNS TABLE (run_id bigint, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_limit integer;
BEGIN
    IF coalesce(p_priority, 0) <> 0 THEN
        SELECT t.priority_limit INTO v_limit FROM tenants t WHERE t.id = p_tenant;
        IF abs(p_priority) > coalesce(v_limit, 0) THEN
            RAISE EXCEPTION 'priority % is outside this tenant''s range, -% to %',
                            p_priority, v_limit, v_limit
                  USING ERRCODE = '22023', COLUMN = 'priority';
        END IF;
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        IF jsonb_array_length(p_inputs) <> 1 THEN
            RAISE EXCEPTION 'an idempotency key needs exactly one input' USING ERRCODE = 'P0001';
        END IF;
        -- serialize same-key callers so that exactly one creates the run
        PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext(p_idempotency_key));
        SELECT r.id INTO run_id FROM runs r
         WHERE r.tenant_id = p_tenant AND r.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            created := false;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    SELECT x.id, true
      FROM unnest(flowd_create_runs(p_tenant, p_workflow, p_inputs, p_priority, p_batch, NULL, NULL,
                                    p_idempotency_key)) AS x(id);
END $$;

-- As in 0006, with the new tenant's priority_limit (NULL: the creating tenant's own, which is
-- also the most it may give; 22023 past it).
CREATE FUNCTION flowd_create_tenant(p_parent bigint, p_name text, p_max_running integer,
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
