-- Claims are fair across tenants. flowd_claim_work took the first ready steps in one order for
-- everybody (priority, due time, id): a tenant's batch of 20,000 runs took every claim until it
-- was through, and any tenant could jump every queue with a high priority. Now each claim takes
-- the tenants' ready steps in turns (see below), so priority orders a tenant's own steps and a
-- tenant's share of the workers does not depend on how much it queued. steps_claim_tenant lets a
-- claim find each tenant's ready steps without walking the others'.

CREATE INDEX steps_claim_tenant ON steps (tenant_id, priority DESC, run_at, id) WHERE state = 'ready';

-- As in 0018, with the fair choice of steps.
CREATE OR REPLACE FUNCTION flowd_claim_work(p_owner text, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_work_item
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_caps jsonb;        -- {tenant: steps it may still start} for tenants with max_running
    v_ids  bigint[];
    v_late bigint[];
    v_tenants bigint[]; -- tenants with ready steps (and room under their cap)
    v_share integer;     -- how many steps each of them may offer this claim
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
    -- Tenants with ready steps, found by a skip scan of steps_claim_tenant (a probe per tenant,
    -- however many steps each has ready).
    WITH RECURSIVE rt AS (
        (SELECT s.tenant_id FROM steps s WHERE s.state = 'ready' ORDER BY s.tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT s.tenant_id FROM steps s
                 WHERE s.state = 'ready' AND s.tenant_id > rt.tenant_id
                 ORDER BY s.tenant_id LIMIT 1)
          FROM rt WHERE rt.tenant_id IS NOT NULL)
    SELECT array_agg(rt.tenant_id) INTO v_tenants FROM rt
     WHERE rt.tenant_id IS NOT NULL
       AND (v_caps IS NULL OR coalesce((v_caps->>(rt.tenant_id::text))::integer, 1) > 0);
    IF v_tenants IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(v_tenants) = 1 THEN
        -- one tenant has work: its steps in its order, as before
        SELECT array_agg(c.id) INTO v_ids FROM (
            SELECT s.id FROM steps s
             WHERE s.tenant_id = v_tenants[1] AND s.state = 'ready' AND s.run_at <= v_now
               AND (s.ckey IS NULL OR NOT EXISTS (
                        SELECT 1 FROM steps o
                         WHERE o.tenant_id = s.tenant_id AND o.ckey = s.ckey AND o.id <> s.id
                           AND o.state IN ('pending', 'ready', 'running', 'waiting')
                           AND (o.id < s.id OR o.state = 'running')))
             ORDER BY s.priority DESC, s.run_at, s.id
             LIMIT least(p_want, coalesce((v_caps->>(v_tenants[1]::text))::integer, p_want))
               FOR UPDATE SKIP LOCKED) c;
    ELSE
        -- Round robin: each tenant's steps in its own order (priority, then due time), and the
        -- claim takes the first of every tenant, then the second of every tenant, and so on.
        -- Each tenant offers at most an even share of the claim (rounded up), so rows are locked
        -- for about what is claimed.
        v_share := (p_want + cardinality(v_tenants) - 1) / cardinality(v_tenants);
        WITH c0 AS MATERIALIZED (
            SELECT c.id, c.priority, c.run_at,
                   row_number() OVER (PARTITION BY t.tenant_id
                                      ORDER BY c.priority DESC, c.run_at, c.id) AS rn
              FROM unnest(v_tenants) AS t(tenant_id) CROSS JOIN LATERAL (
                SELECT s.id, s.priority, s.run_at FROM steps s
                 WHERE s.tenant_id = t.tenant_id AND s.state = 'ready' AND s.run_at <= v_now
                   AND (s.ckey IS NULL OR NOT EXISTS (
                            SELECT 1 FROM steps o
                             WHERE o.tenant_id = s.tenant_id AND o.ckey = s.ckey AND o.id <> s.id
                               AND o.state IN ('pending', 'ready', 'running', 'waiting')
                               AND (o.id < s.id OR o.state = 'running')))
                 ORDER BY s.priority DESC, s.run_at, s.id
                 LIMIT least(v_share, coalesce((v_caps->>(t.tenant_id::text))::integer, v_share))
                   FOR UPDATE SKIP LOCKED) c)
        SELECT array_agg(x.id) INTO v_ids FROM (
            SELECT c0.id FROM c0 ORDER BY c0.rn, c0.priority DESC, c0.run_at, c0.id
             LIMIT p_want) x;
    END IF;
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
