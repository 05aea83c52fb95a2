-- A claim's answer the worker assembles itself. flowd_claim sent, for every claimed step, the
-- step's definition and a template context built in SQL around the run's input: the server
-- rebuilt the input inside a new JSON value, and printed a definition of ~400 bytes (its numbers
-- through numeric output) for every step, though the steps of one claim mostly share a handful of
-- definitions. flowd_work answers with the parts: the run's input and workflow name, the outputs
-- of the step's needs (NULL when it has none), and the definition only on the first step of each
-- (workflow, position) in the answer, which lists steps in id order. The worker builds the
-- context from these. flowd_claim and flowd_cycle stay, with their answer built from the new one,
-- for workers of the previous version during a rolling upgrade.

CREATE TYPE flowd_work_item AS (
    id bigint, run_id bigint, tenant_id bigint, key text, kind text, attempts integer,
    ready_at_ms bigint, now_ms bigint, scheduled boolean,
    workflow_id bigint, idx integer,
    def jsonb,        -- NULL when an earlier step of the answer has the same workflow_id and idx
    input jsonb,      -- the run's input
    workflow text,    -- the workflow's name
    steps jsonb);     -- {key: {"output": ...}} of the step's needs; NULL when it has none

-- flowd_claim's claim (0011) with the answer above.
CREATE FUNCTION flowd_claim_work(p_owner text, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_work_item
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_caps jsonb;        -- {tenant: steps it may still start} for tenants with max_running
    v_ids  bigint[];
    v_late bigint[];
BEGIN
    -- Per-tenant caps keep one tenant's big batch from taking every slot. Tenants at their cap are
    -- left out of the scan; the others get at most their remaining room from this claim.
    IF EXISTS (SELECT 1 FROM tenants WHERE max_running IS NOT NULL) THEN
        -- claimers counting the same room at once would together overshoot it: with caps in
        -- force, claims take turns (held to this transaction's end, just after the claim)
        PERFORM pg_advisory_xact_lock(hashtext('flowd_tenant_caps'));
        SELECT jsonb_object_agg(t.id::text, t.max_running - (
                   SELECT count(*) FROM steps r WHERE r.tenant_id = t.id AND r.state = 'running'))
          INTO v_caps FROM tenants t WHERE t.max_running IS NOT NULL;
    END IF;
    WITH c0 AS MATERIALIZED (
        SELECT s.id, s.tenant_id, s.priority, s.run_at FROM steps s
         WHERE s.state = 'ready' AND s.run_at <= v_now
           AND (v_caps IS NULL OR coalesce((v_caps->>(s.tenant_id::text))::integer, 1) > 0)
           AND (s.ckey IS NULL OR NOT EXISTS (
                    SELECT 1 FROM steps o
                     WHERE o.tenant_id = s.tenant_id AND o.ckey = s.ckey AND o.id <> s.id
                       AND o.state IN ('pending', 'ready', 'running', 'waiting')
                       AND (o.id < s.id OR o.state = 'running')))
         ORDER BY s.priority DESC, s.run_at, s.id
         LIMIT p_want
           FOR UPDATE SKIP LOCKED)
    SELECT array_agg(x.id) INTO v_ids FROM (
        SELECT c0.id, c0.tenant_id,
               row_number() OVER (PARTITION BY c0.tenant_id
                                  ORDER BY c0.priority DESC, c0.run_at, c0.id) AS rn
          FROM c0) x
     WHERE v_caps IS NULL OR v_caps->(x.tenant_id::text) IS NULL
        OR x.rn <= (v_caps->>(x.tenant_id::text))::integer;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;

    -- Sending hours are a hard rule: a step whose window closed while it waited (a backlog, the
    -- engine down, the test clock moved) goes back to sleep until the next opening.
    IF EXISTS (SELECT 1 FROM steps s WHERE s.id = ANY (v_ids) AND s.send_window IS NOT NULL) THEN
        WITH late AS (
            UPDATE steps s SET run_at = x.t
              FROM (SELECT w.id, flowd_window_next(v_now, w.send_window) AS t FROM steps w
                     WHERE w.id = ANY (v_ids) AND w.send_window IS NOT NULL) x
             WHERE s.id = x.id AND x.t > v_now
            RETURNING s.id, s.run_id, s.tenant_id, s.key, s.run_at, s.send_window),
        ev AS (
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT late.run_id, late.tenant_id, v_now, 'step.scheduled', late.key,
                   jsonb_build_object('run_at', flowd_ms(late.run_at),
                                      'tz', late.send_window->>'tz', 'late', true)
              FROM late)
        SELECT array_agg(late.id) INTO v_late FROM late;
        IF v_late IS NOT NULL THEN
            v_ids := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT unnest(v_late));
            IF cardinality(v_ids) = 0 THEN
                RETURN;
            END IF;
        END IF;
    END IF;

    -- Claim, log and answer in one statement: the answer comes from the update's RETURNING
    -- instead of reading every claimed step again.
    RETURN QUERY
    WITH u AS (
        UPDATE steps s
           SET state = 'running', attempts = s.attempts + 1, lease_owner = p_owner,
               lease_expires_at = now() + p_lease_ms * interval '1 millisecond', started_at = v_now
         WHERE s.id = ANY (v_ids)
        RETURNING s.id, s.run_id, s.tenant_id, s.idx, s.key, s.kind, s.attempts, s.ready_at,
                  s.scheduled),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT u.run_id, u.tenant_id, v_now, 'step.started', u.key,
               jsonb_build_object('attempt', u.attempts) FROM u),
    -- another claimer may be starting the same run: whoever locks it first marks it started
    started AS (
        UPDATE runs r SET state = 'running', started_at = v_now
         WHERE r.id IN (SELECT x.id FROM runs x
                         WHERE x.id IN (SELECT u.run_id FROM u) AND x.state = 'queued'
                         ORDER BY x.id FOR UPDATE SKIP LOCKED)
        RETURNING r.id, r.tenant_id),
    ev_run AS (
        INSERT INTO run_events (run_id, tenant_id, at, type)
        SELECT started.id, started.tenant_id, v_now, 'run.started' FROM started)
    SELECT u.id, u.run_id, u.tenant_id, u.key, u.kind, u.attempts,
           (extract(epoch FROM coalesce(u.ready_at, v_now)) * 1000)::bigint,
           (extract(epoch FROM v_now) * 1000)::bigint,
           u.scheduled, ru.workflow_id, u.idx,
           CASE WHEN row_number() OVER (PARTITION BY ru.workflow_id, u.idx ORDER BY u.id) = 1
                THEN sd.d END,
           ru.input, w.name,
           CASE WHEN jsonb_array_length(sd.d->'deps') > 0 THEN (
               SELECT coalesce(jsonb_object_agg(d.key, jsonb_build_object('output', d.output)), '{}')
                 FROM steps d
                WHERE d.run_id = u.run_id AND d.state IN ('succeeded', 'failed')
                  AND d.key IN (SELECT jsonb_array_elements_text(sd.d->'deps'))) END
      FROM u JOIN runs ru ON ru.id = u.run_id JOIN workflows w ON w.id = ru.workflow_id
      CROSS JOIN LATERAL (SELECT w.def->'steps'->u.idx AS d) sd
     ORDER BY u.id;
END $$;


-- What flowd_cycle did, with the new answer: outcomes applied, waits expired, the worker's lease
-- made sure of (see 0016), and steps claimed.
CREATE FUNCTION flowd_work(p_owner text, p_results jsonb, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_work_item
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_apply(p_owner, p_results);
    PERFORM flowd_expire_waits(100);
    IF p_want > 0 THEN
        INSERT INTO worker_leases AS w (owner, expires_at)
        VALUES (p_owner, clock_timestamp() + p_lease_ms * interval '1 millisecond')
        ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at
         WHERE w.expires_at < clock_timestamp() + p_lease_ms * interval '1 millisecond' / 2;
        RETURN QUERY SELECT * FROM flowd_claim_work(p_owner, p_want, p_lease_ms);
    END IF;
END $$;

-- The previous answer, for the previous version's workers.
CREATE FUNCTION flowd_claimed_of(c flowd_work_item) RETURNS flowd_claimed
LANGUAGE sql STABLE AS $$
    SELECT c.id, c.run_id, c.tenant_id, c.key, c.kind, c.attempts, c.ready_at_ms, c.now_ms,
           c.scheduled, w.def->'steps'->c.idx,
           jsonb_build_object('input', c.input,
                              'run', jsonb_build_object('id', c.run_id, 'workflow', c.workflow),
                              'steps', coalesce(c.steps, '{}'))
      FROM workflows w WHERE w.id = c.workflow_id
$$;

CREATE OR REPLACE FUNCTION flowd_claim(p_owner text, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_claimed
LANGUAGE sql AS $$
    SELECT o.* FROM flowd_claim_work(p_owner, p_want, p_lease_ms) c, flowd_claimed_of(c) o
$$;

CREATE OR REPLACE FUNCTION flowd_cycle(p_owner text, p_results jsonb, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_claimed
LANGUAGE sql AS $$
    SELECT o.* FROM flowd_work(p_owner, p_results, p_want, p_lease_ms) c, flowd_claimed_of(c) o
$$;
