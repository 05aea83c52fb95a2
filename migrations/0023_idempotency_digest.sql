-- Idempotency keys mean the same request. A key reused with another workflow, version, input or
-- priority (another list of inputs, for a batch) returned the first run as if it had been asked
-- for; now it is refused (SQLSTATE FL409, 409 idempotency_conflict), as payment APIs do, and only
-- the same request gets the first answer again. The request is compared by a SHA-256 of its
-- parameters as jsonb text (jsonb's own canonical form: key order and spacing do not count). Runs
-- and batches created before this have no digest and keep answering any request with their key.
ALTER TABLE runs ADD COLUMN idempotency_digest text;
ALTER TABLE batches ADD COLUMN idempotency_digest text;

CREATE FUNCTION flowd_request_digest(p_request jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex')
$$;

-- As in 0005, refusing a key used for a different request.
CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                           p_input jsonb, p_priority integer,
                                           p_idempotency_key text,
                                           OUT created boolean, OUT run jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf     bigint;
    v_run    bigint;
    v_digest text;
    v_prev   text;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        v_digest := flowd_request_digest(jsonb_build_object(
            'workflow', p_workflow, 'version', p_version, 'input', p_input,
            'priority', coalesce(p_priority, 0)));
        -- the same lock flowd_enqueue takes: same-key callers are serialized
        PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext(p_idempotency_key));
        SELECT r.id, r.idempotency_digest INTO v_run, v_prev FROM runs r
         WHERE r.tenant_id = p_tenant AND r.idempotency_key = p_idempotency_key;
        IF FOUND AND v_prev IS DISTINCT FROM v_digest AND v_prev IS NOT NULL THEN
            RAISE EXCEPTION 'idempotency key already used by run % for a different request', v_run
                USING ERRCODE = 'FL409';
        END IF;
    END IF;
    SELECT w.id INTO v_wf FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow || coalesce(' version ' || p_version, '')
            USING ERRCODE = 'P0002';
    END IF;
    SELECT e.run_id, e.created INTO v_run, created
      FROM flowd_enqueue(p_tenant, v_wf, jsonb_build_array(p_input), p_priority,
                         p_idempotency_key, NULL) e;
    IF created AND v_digest IS NOT NULL THEN
        UPDATE runs SET idempotency_digest = v_digest WHERE id = v_run;
    END IF;
    run := flowd_run_json(p_tenant, v_run);
END $$;

-- As in 0006, refusing a key used for a different request.
CREATE OR REPLACE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                              p_inputs jsonb, p_idempotency_key text,
                                              OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf     bigint;
    v_digest text;
    v_prev   text;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        v_digest := flowd_request_digest(jsonb_build_object(
            'workflow', p_workflow, 'version', p_version, 'inputs', p_inputs));
        -- serialize same-key callers so that exactly one creates the batch
        PERFORM pg_advisory_xact_lock(p_tenant::integer, hashtext('batch:' || p_idempotency_key));
        SELECT b.id, b.total, b.idempotency_digest INTO id, total, v_prev FROM batches b
         WHERE b.tenant_id = p_tenant AND b.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_prev IS DISTINCT FROM v_digest AND v_prev IS NOT NULL THEN
                RAISE EXCEPTION 'idempotency key already used by batch % for a different request',
                    id USING ERRCODE = 'FL409';
            END IF;
            created := false;
            RETURN;
        END IF;
    END IF;
    SELECT w.id INTO v_wf FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow || coalesce(' version ' || p_version, '')
            USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO batches (tenant_id, workflow_id, total, idempotency_key, idempotency_digest)
    VALUES (p_tenant, v_wf, jsonb_array_length(p_inputs), p_idempotency_key, v_digest)
    RETURNING batches.id, batches.total INTO id, total;
    PERFORM flowd_create_runs(p_tenant, v_wf, p_inputs, 0, id, NULL, NULL, NULL);
    created := true;
END $$;
