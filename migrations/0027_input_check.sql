-- A run's input is checked when the run is enqueued, not when its first step needs it: the API
-- validates it against the workflow version's "input_check" (wf_def.h) and then creates the run
-- of that very version. If a new version became the latest in between, the request is refused
-- as a serialization failure (503, try again) instead of starting a run whose input was checked
-- against another version.

-- As in 0023, with the version the caller checked the input against (NULL: no check made).
CREATE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                p_input jsonb, p_priority integer, p_idempotency_key text,
                                p_checked_version integer,
                                OUT created boolean, OUT run jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf      bigint;
    v_version integer;
    v_run     bigint;
    v_digest  text;
    v_prev    text;
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
    SELECT w.id, w.version INTO v_wf, v_version FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow || coalesce(' version ' || p_version, '')
            USING ERRCODE = 'P0002';
    END IF;
    IF p_checked_version IS NOT NULL AND v_version <> p_checked_version THEN
        RAISE EXCEPTION 'workflow % changed while the request was checked: send it again',
            p_workflow USING ERRCODE = '40001';
    END IF;
    SELECT e.run_id, e.created INTO v_run, created
      FROM flowd_enqueue(p_tenant, v_wf, jsonb_build_array(p_input), p_priority,
                         p_idempotency_key, NULL) e;
    IF created AND v_digest IS NOT NULL THEN
        UPDATE runs SET idempotency_digest = v_digest WHERE id = v_run;
    END IF;
    run := flowd_run_json(p_tenant, v_run);
END $$;

-- The previous signature, for callers that check nothing.
CREATE OR REPLACE FUNCTION flowd_start_run(p_tenant bigint, p_workflow text, p_version integer,
                                           p_input jsonb, p_priority integer,
                                           p_idempotency_key text,
                                           OUT created boolean, OUT run jsonb)
LANGUAGE sql AS $$
    SELECT s.created, s.run
      FROM flowd_start_run(p_tenant, p_workflow, p_version, p_input, p_priority,
                           p_idempotency_key, NULL::integer) s
$$;

-- As in 0023, with the version the caller checked the inputs against (NULL: no check made).
CREATE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                   p_inputs jsonb, p_idempotency_key text,
                                   p_checked_version integer,
                                   OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_wf      bigint;
    v_version integer;
    v_digest  text;
    v_prev    text;
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
    SELECT w.id, w.version INTO v_wf, v_version FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', p_workflow || coalesce(' version ' || p_version, '')
            USING ERRCODE = 'P0002';
    END IF;
    IF p_checked_version IS NOT NULL AND v_version <> p_checked_version THEN
        RAISE EXCEPTION 'workflow % changed while the request was checked: send it again',
            p_workflow USING ERRCODE = '40001';
    END IF;
    INSERT INTO batches (tenant_id, workflow_id, total, idempotency_key, idempotency_digest)
    VALUES (p_tenant, v_wf, jsonb_array_length(p_inputs), p_idempotency_key, v_digest)
    RETURNING batches.id, batches.total INTO id, total;
    PERFORM flowd_create_runs(p_tenant, v_wf, p_inputs, 0, id, NULL, NULL, NULL);
    created := true;
END $$;

-- The previous signature, for callers that check nothing.
CREATE OR REPLACE FUNCTION flowd_create_batch(p_tenant bigint, p_workflow text, p_version integer,
                                              p_inputs jsonb, p_idempotency_key text,
                                              OUT created boolean, OUT id bigint, OUT total integer)
LANGUAGE sql AS $$
    SELECT b.created, b.id, b.total
      FROM flowd_create_batch(p_tenant, p_workflow, p_version, p_inputs, p_idempotency_key,
                              NULL::integer) b
$$;

-- The version a run of (p_workflow, p_version or the latest) would get, and what its input is
-- checked against (NULL: nothing to check, also for versions stored before input_check); no row
-- when there is no such workflow.
CREATE FUNCTION flowd_input_check(p_tenant bigint, p_workflow text, p_version integer,
                                  OUT version integer, OUT input_check jsonb)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT w.version, nullif(w.def->'input_check', 'null') FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = p_workflow
       AND (p_version IS NULL OR w.version = p_version)
     ORDER BY w.version DESC LIMIT 1
$$;
