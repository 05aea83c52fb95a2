-- sql/webhooks.sql: Outbound webhooks: writing messages (the triggers of migrations/0039 call these
-- inside the transaction that makes the change), claiming and settling deliveries
-- (engine/webhook.c), and the API's endpoint and delivery functions (api/routes_webhooks.c).
-- Every API function takes the caller's tenant first; what it cannot see reads as NULL (404).
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). The tables are in
-- migrations/0038.

-- Whether anything subscribes to an event of this type, workflow and run: an endpoint that is not
-- disabled, the run's own callback, or its batch's. Cheap (index probes), so triggers ask it
-- before rendering.
CREATE OR REPLACE FUNCTION flowd_webhook_wanted(p_tenant bigint, p_type text, p_workflow text,
                                                p_run bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM webhook_endpoints e
                    WHERE e.tenant_id = p_tenant AND e.url IS NOT NULL AND e.state <> 'disabled'
                      AND (e.events IS NULL OR p_type = ANY (e.events))
                      AND (e.workflows IS NULL OR p_workflow = ANY (e.workflows)))
        OR (p_run IS NOT NULL AND EXISTS (
               SELECT 1 FROM run_callbacks c
                WHERE c.run_id = p_run AND (c.events IS NULL OR p_type = ANY (c.events))))
        OR (p_run IS NOT NULL AND EXISTS (
               SELECT 1 FROM runs r JOIN batch_callbacks c ON c.batch_id = r.batch_id
                WHERE r.id = p_run AND (c.events IS NULL OR p_type = ANY (c.events))))
$$;

-- Writes one message and a delivery for each subscriber (see flowd_webhook_wanted; for
-- batch.completed, whose p_data is the batch, also the batch's own callback), and wakes the
-- dispatchers. The body is rendered once here: every attempt sends the same bytes.
CREATE OR REPLACE FUNCTION flowd_webhook_emit(p_tenant bigint, p_type text, p_workflow text,
                                              p_run bigint, p_data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_msg bigint;
    v_now timestamptz := flowd_now();
BEGIN
    INSERT INTO webhook_messages (tenant_id, type, run_id, body, created_at)
    VALUES (p_tenant, p_type, p_run,
            jsonb_build_object('type', p_type, 'timestamp', flowd_ms(v_now), 'data', p_data)::text,
            v_now)
    RETURNING id INTO v_msg;
    INSERT INTO webhook_sends (tenant_id, message_id, endpoint_id, next_at, created_at)
    SELECT p_tenant, v_msg, e.id, v_now, v_now FROM webhook_endpoints e
     WHERE e.tenant_id = p_tenant AND e.url IS NOT NULL AND e.state <> 'disabled'
       AND (e.events IS NULL OR p_type = ANY (e.events))
       AND (e.workflows IS NULL OR p_workflow = ANY (e.workflows));
    IF p_run IS NOT NULL THEN
        INSERT INTO webhook_sends (tenant_id, message_id, endpoint_id, url, next_at, created_at)
        SELECT p_tenant, v_msg, s.id, c.url, v_now, v_now
          FROM run_callbacks c
          JOIN webhook_endpoints s ON s.tenant_id = p_tenant AND s.url IS NULL
         WHERE c.run_id = p_run AND (c.events IS NULL OR p_type = ANY (c.events));
    END IF;
    INSERT INTO webhook_sends (tenant_id, message_id, endpoint_id, url, next_at, created_at)
    SELECT p_tenant, v_msg, s.id, c.url, v_now, v_now
      FROM batch_callbacks c
      JOIN webhook_endpoints s ON s.tenant_id = p_tenant AND s.url IS NULL
     WHERE c.batch_id = CASE WHEN p_type = 'batch.completed' THEN (p_data->>'id')::bigint
                             ELSE (SELECT r.batch_id FROM runs r WHERE r.id = p_run) END
       AND (c.events IS NULL OR p_type = ANY (c.events));
    PERFORM pg_notify('flowd_webhooks', '');
END $$;

-- Writes batch.completed once per batch, when none of its runs is queued or running any more.
-- Two transactions finishing a batch's last runs at once may each still see the other's run open;
-- flowd_webhook_sweep then writes it.
CREATE OR REPLACE FUNCTION flowd_webhook_batch_check(p_tenant bigint, p_batch bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_wf text;
    v_ins integer;
BEGIN
    SELECT w.name INTO v_wf FROM batches b JOIN workflows w ON w.id = b.workflow_id
     WHERE b.id = p_batch AND b.tenant_id = p_tenant;
    IF NOT FOUND
       OR NOT (flowd_webhook_wanted(p_tenant, 'batch.completed', v_wf, NULL)
               OR EXISTS (SELECT 1 FROM batch_callbacks c
                           WHERE c.batch_id = p_batch
                             AND (c.events IS NULL OR 'batch.completed' = ANY (c.events))))
       OR EXISTS (SELECT 1 FROM runs r WHERE r.batch_id = p_batch
                                         AND r.state IN ('queued', 'running')) THEN
        RETURN;
    END IF;
    INSERT INTO webhook_batches_done (batch_id) VALUES (p_batch) ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    IF v_ins = 1 THEN
        PERFORM flowd_webhook_emit(p_tenant, 'batch.completed', v_wf, NULL,
                                   flowd_batch_json(p_tenant, p_batch));
    END IF;
END $$;

-- run.<state> for a run that reached succeeded, failed or cancelled, and batch.completed when it
-- was its batch's last open run.
CREATE OR REPLACE FUNCTION flowd_webhook_run_end(p_tenant bigint, p_run bigint, p_state text,
                                                 p_batch bigint, p_workflow text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF flowd_webhook_wanted(p_tenant, 'run.' || p_state, p_workflow, p_run) THEN
        PERFORM flowd_webhook_emit(p_tenant, 'run.' || p_state, p_workflow, p_run,
                                   flowd_run_json(p_tenant, p_run));
    END IF;
    IF p_batch IS NOT NULL THEN
        PERFORM flowd_webhook_batch_check(p_tenant, p_batch);
    END IF;
END $$;

-- Trigger on runs: a statement trigger (0042) reading the transition tables old_runs and new_runs,
-- so finishing a batch of runs is one call instead of one per run, and when nobody listens (no
-- endpoint, no run or batch callback) it returns after a query or two. Runs are reported in id
-- order. Until 0042 replaces it (it is applied after this file), 0039's row trigger calls it for
-- each run ending.
CREATE OR REPLACE FUNCTION flowd_webhook_run_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.url IS NOT NULL
                                                       AND e.state <> 'disabled')
       AND NOT EXISTS (SELECT 1 FROM run_callbacks)
       AND NOT EXISTS (SELECT 1 FROM batch_callbacks) THEN
        RETURN NULL;
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        PERFORM flowd_webhook_run_end(NEW.tenant_id, NEW.id, NEW.state, NEW.batch_id,
                                      (SELECT w.name FROM workflows w WHERE w.id = NEW.workflow_id));
        RETURN NULL;
    END IF;
    FOR r IN SELECT n.id, n.tenant_id, n.state, n.batch_id, w.name AS workflow
               FROM new_runs n JOIN old_runs o ON o.id = n.id
               JOIN workflows w ON w.id = n.workflow_id
              WHERE n.state IN ('succeeded', 'failed', 'cancelled')
                AND o.state IS DISTINCT FROM n.state
                AND (EXISTS (SELECT 1 FROM webhook_endpoints e
                              WHERE e.tenant_id = n.tenant_id AND e.url IS NOT NULL
                                AND e.state <> 'disabled')
                     OR EXISTS (SELECT 1 FROM run_callbacks c WHERE c.run_id = n.id)
                     OR EXISTS (SELECT 1 FROM batch_callbacks c WHERE c.batch_id = n.batch_id))
              ORDER BY n.id LOOP
        PERFORM flowd_webhook_run_end(r.tenant_id, r.id, r.state, r.batch_id, r.workflow);
    END LOOP;
    RETURN NULL;
END $$;

-- Trigger on steps that failed for good (retries are 'ready' again, never 'failed'): step.failed.
CREATE OR REPLACE FUNCTION flowd_webhook_step_failed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_wf text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                    WHERE e.tenant_id = NEW.tenant_id AND e.url IS NOT NULL
                      AND e.state <> 'disabled')
       AND NOT EXISTS (SELECT 1 FROM run_callbacks c WHERE c.run_id = NEW.run_id)
       AND NOT EXISTS (SELECT 1 FROM runs r JOIN batch_callbacks c ON c.batch_id = r.batch_id
                        WHERE r.id = NEW.run_id) THEN
        RETURN NULL;
    END IF;
    SELECT w.name INTO v_wf FROM runs r JOIN workflows w ON w.id = r.workflow_id
     WHERE r.id = NEW.run_id;
    IF flowd_webhook_wanted(NEW.tenant_id, 'step.failed', v_wf, NEW.run_id) THEN
        PERFORM flowd_webhook_emit(NEW.tenant_id, 'step.failed', v_wf, NEW.run_id,
            jsonb_build_object('run', NEW.run_id, 'workflow', v_wf, 'key', NEW.key,
                               'kind', NEW.kind, 'state', NEW.state, 'phase', NEW.phase,
                               'attempts', NEW.attempts, 'max_attempts', NEW.max_attempts,
                               'interruptions', NEW.interruptions,
                               'started_at', flowd_ms(NEW.started_at),
                               'finished_at', flowd_ms(NEW.finished_at), 'error', NEW.error));
    END IF;
    RETURN NULL;
END $$;

-- Trigger on sends whose delivery became delivered or bounced (what the providers' webhooks
-- said): send.delivered, send.bounced.
CREATE OR REPLACE FUNCTION flowd_webhook_send_outcome() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_wf text;
    v_type text := 'send.' || NEW.delivery;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                    WHERE e.tenant_id = NEW.tenant_id AND e.url IS NOT NULL
                      AND e.state <> 'disabled')
       AND NOT EXISTS (SELECT 1 FROM run_callbacks c WHERE c.run_id = NEW.run_id)
       AND NOT EXISTS (SELECT 1 FROM runs r JOIN batch_callbacks c ON c.batch_id = r.batch_id
                        WHERE r.id = NEW.run_id) THEN
        RETURN NULL;
    END IF;
    SELECT w.name INTO v_wf FROM runs r JOIN workflows w ON w.id = r.workflow_id
     WHERE r.id = NEW.run_id;
    IF flowd_webhook_wanted(NEW.tenant_id, v_type, v_wf, NEW.run_id) THEN
        PERFORM flowd_webhook_emit(NEW.tenant_id, v_type, v_wf, NEW.run_id,
            jsonb_build_object('send_key', NEW.send_key, 'channel', NEW.channel,
                               'provider', NEW.provider, 'run', NEW.run_id,
                               'recipient', NEW.recipient, 'state', NEW.state,
                               'delivery', NEW.delivery, 'delivery_error', NEW.delivery_error,
                               'provider_message_id', NEW.provider_message_id,
                               'updated_at', flowd_ms(NEW.updated_at)));
    END IF;
    RETURN NULL;
END $$;

-- Trigger on schedules whose fire made runs (a tick's pass, or POST .../trigger): schedule.fired,
-- with the schedule as GET /v1/schedules/{name} returns it (its last_run is the fire's latest run).
CREATE OR REPLACE FUNCTION flowd_webhook_schedule_fired() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF flowd_webhook_wanted(NEW.tenant_id, 'schedule.fired', NEW.workflow, NULL) THEN
        PERFORM flowd_webhook_emit(NEW.tenant_id, 'schedule.fired', NEW.workflow, NULL,
                                   flowd_schedule_json(NEW));
    END IF;
    RETURN NULL;
END $$;

-- The dispatcher's periodic pass: batch.completed for batches the race in
-- flowd_webhook_batch_check left out (created after a subscribing endpoint or with their own
-- callback, none of their runs open, not yet written). Returns how many were written.
CREATE OR REPLACE FUNCTION flowd_webhook_sweep() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_n integer := 0;
BEGIN
    FOR v IN
        SELECT b.tenant_id, b.id FROM batches b
         WHERE (EXISTS (SELECT 1 FROM webhook_endpoints e
                         WHERE e.tenant_id = b.tenant_id AND e.url IS NOT NULL
                           AND e.state <> 'disabled' AND e.created_at <= b.created_at
                           AND (e.events IS NULL OR 'batch.completed' = ANY (e.events)))
                OR EXISTS (SELECT 1 FROM batch_callbacks c
                            WHERE c.batch_id = b.id
                              AND (c.events IS NULL OR 'batch.completed' = ANY (c.events))))
           AND NOT EXISTS (SELECT 1 FROM webhook_batches_done d WHERE d.batch_id = b.id)
           AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.batch_id = b.id
                                                  AND r.state IN ('queued', 'running'))
         LIMIT 100
    LOOP
        PERFORM flowd_webhook_batch_check(v.tenant_id, v.id);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END $$;

-- Claims up to p_limit due deliveries of active endpoints for p_lease_ms, at most p_cap in flight
-- per endpoint (counting leases held by every process), each endpoint's oldest first. A claim
-- counts as an attempt: a process that dies mid-call still used it. secrets are the endpoint's
-- current secret and, during the rotation overlap, the previous one.
CREATE OR REPLACE FUNCTION flowd_webhook_claim(p_limit integer, p_cap integer, p_lease_ms bigint)
RETURNS TABLE (id bigint, attempt integer, url text, uid text, body text, secrets text[],
               endpoint_id bigint, tenant_id bigint, created_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := flowd_now();
    v_until timestamptz := flowd_now() + p_lease_ms * interval '1 millisecond';
BEGIN
    RETURN QUERY
    WITH cand AS (
        SELECT d.id FROM webhook_endpoints e
         CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM webhook_sends x
             WHERE x.endpoint_id = e.id AND x.state = 'pending' AND x.leased_until > v_now) busy
         CROSS JOIN LATERAL (
            SELECT x.id FROM webhook_sends x
             WHERE x.endpoint_id = e.id AND x.state = 'pending' AND x.next_at <= v_now
             ORDER BY x.next_at, x.id LIMIT greatest(p_cap - busy.n, 0)) d
         WHERE e.state = 'active'
         LIMIT p_limit
    ), locked AS (
        SELECT x.id FROM webhook_sends x
         WHERE x.id IN (SELECT cand.id FROM cand) AND x.state = 'pending' AND x.next_at <= v_now
           FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE webhook_sends x SET attempts = x.attempts + 1, next_at = v_until,
                                   leased_until = v_until
          FROM locked l WHERE x.id = l.id
        RETURNING x.id, x.attempts, x.url, x.message_id, x.endpoint_id, x.tenant_id
    )
    SELECT u.id, u.attempts, coalesce(u.url, e.url), m.uid, m.body,
           CASE WHEN e.previous_secret IS NOT NULL AND e.previous_until > v_now
                THEN ARRAY[e.secret, e.previous_secret] ELSE ARRAY[e.secret] END,
           u.endpoint_id, u.tenant_id, (extract(epoch FROM m.created_at) * 1000)::bigint
      FROM upd u
      JOIN webhook_messages m ON m.id = u.message_id
      JOIN webhook_endpoints e ON e.id = u.endpoint_id;
END $$;

-- The delay before attempt p_attempt + 1 when attempt p_attempt failed (the Standard Webhooks
-- authors' schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h); NULL after the last.
CREATE OR REPLACE FUNCTION flowd_webhook_backoff_ms(p_attempt integer) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (ARRAY[5000, 300000, 1800000, 7200000, 18000000, 36000000,
                  36000000]::bigint[])[p_attempt]
$$;

-- Settles attempt p_attempt of delivery p_id: records it, then
--   sent       a 2xx answer: the delivery succeeded (and the endpoint is healthy again)
--   retry      it is due again after the schedule's delay with +-10 % jitter, or the answer's
--              Retry-After (p_retry_after_ms) when that is longer (at most a day)
--   failed     the last attempt of the schedule failed
--   disabled   410 Gone, or the endpoint has been failing for 5 days: the endpoint is disabled
--              with a reason (its pending deliveries wait until it is enabled again)
--   stale      another claim took the delivery over (its lease had lapsed): only recorded
-- lag_ms is the time from the message to this success.
CREATE OR REPLACE FUNCTION flowd_webhook_result(p_id bigint, p_attempt integer, p_status integer,
                                                p_latency_ms integer, p_response text,
                                                p_error text, p_retry_after_ms bigint,
                                                OUT outcome text, OUT lag_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v webhook_sends%ROWTYPE;
    v_e webhook_endpoints%ROWTYPE;
    v_now timestamptz := flowd_now();
    v_delay bigint;
BEGIN
    SELECT * INTO v FROM webhook_sends s WHERE s.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'stale';
        RETURN;
    END IF;
    INSERT INTO webhook_attempts (send_id, at, status, latency_ms, response, error)
    VALUES (p_id, v_now, p_status, p_latency_ms, p_response, p_error);
    SELECT * INTO v_e FROM webhook_endpoints e WHERE e.id = v.endpoint_id FOR UPDATE;
    IF p_status BETWEEN 200 AND 299 THEN
        UPDATE webhook_sends s SET state = 'succeeded', finished_at = v_now, leased_until = NULL,
                                   last_status = p_status, last_error = NULL
         WHERE s.id = p_id;
        IF v_e.failing_since IS NOT NULL THEN
            UPDATE webhook_endpoints e SET failing_since = NULL WHERE e.id = v_e.id;
        END IF;
        outcome := 'sent';
        lag_ms := (extract(epoch FROM v_now - (SELECT m.created_at FROM webhook_messages m
                                                 WHERE m.id = v.message_id)) * 1000)::bigint;
        RETURN;
    END IF;
    IF v.state <> 'pending' OR v.attempts <> p_attempt THEN
        outcome := 'stale';
        RETURN;
    END IF;
    UPDATE webhook_sends s SET last_status = p_status, last_error = p_error WHERE s.id = p_id;
    IF v_e.url IS NOT NULL THEN
        UPDATE webhook_endpoints e SET failing_since = coalesce(e.failing_since, v_now)
         WHERE e.id = v_e.id RETURNING * INTO v_e;
        IF p_status = 410 OR v_e.failing_since <= v_now - interval '5 days' THEN
            UPDATE webhook_endpoints e
               SET state = 'disabled', updated_at = v_now,
                   disabled_reason = CASE WHEN p_status = 410
                       THEN 'the endpoint answered 410 Gone'
                       ELSE 'every delivery failed since ' || flowd_ms(v_e.failing_since)
                            || ' (5 days)' END
             WHERE e.id = v_e.id;
            UPDATE webhook_sends s SET state = 'failed', finished_at = v_now, leased_until = NULL
             WHERE s.id = p_id;
            outcome := 'disabled';
            RETURN;
        END IF;
    END IF;
    v_delay := flowd_webhook_backoff_ms(p_attempt);
    IF v_delay IS NULL OR p_status = 410 THEN
        UPDATE webhook_sends s SET state = 'failed', finished_at = v_now, leased_until = NULL
         WHERE s.id = p_id;
        outcome := 'failed';
        RETURN;
    END IF;
    v_delay := (v_delay * (0.9 + 0.2 * random()))::bigint;
    IF p_retry_after_ms IS NOT NULL AND p_retry_after_ms > v_delay THEN
        v_delay := least(p_retry_after_ms, 86400000);
    END IF;
    UPDATE webhook_sends s SET next_at = v_now + v_delay * interval '1 millisecond',
                               leased_until = NULL
     WHERE s.id = p_id;
    outcome := 'retry';
END $$;

-- Settles a batch of attempts in one transaction (one commit for all): p_attempts is an array of
-- {id, endpoint, attempt, status?, latency_ms, response?, error?, retry_after_ms?}. They are taken
-- in (endpoint, id) order, the order every process locks endpoints and deliveries in, so
-- concurrent batches never deadlock. One row per attempt (see flowd_webhook_result).
CREATE OR REPLACE FUNCTION flowd_webhook_results(p_attempts jsonb)
RETURNS TABLE (id bigint, outcome text, lag_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
    r record;
BEGIN
    FOR v IN SELECT x FROM jsonb_array_elements(p_attempts) x
              ORDER BY (x->>'endpoint')::bigint, (x->>'id')::bigint LOOP
        SELECT * INTO r FROM flowd_webhook_result((v->>'id')::bigint, (v->>'attempt')::integer,
                                                  (v->>'status')::integer,
                                                  (v->>'latency_ms')::integer, v->>'response',
                                                  v->>'error', (v->>'retry_after_ms')::bigint);
        id := (v->>'id')::bigint;
        outcome := r.outcome;
        lag_ms := r.lag_ms;
        RETURN NEXT;
    END LOOP;
END $$;

-- The earliest time a pending delivery of an active endpoint is due, in ms from now (0 when one
-- is due), NULL when none: the dispatcher sleeps until then or a NOTIFY.
CREATE OR REPLACE FUNCTION flowd_webhook_next_due_ms() RETURNS bigint
LANGUAGE sql STABLE AS $$
    -- greatest() skips a NULL: none due must stay NULL
    SELECT CASE WHEN min(d.next_at) IS NOT NULL
                THEN greatest(0, (extract(epoch FROM min(d.next_at) - flowd_now()) * 1000)::bigint)
           END
      FROM webhook_endpoints e
     CROSS JOIN LATERAL (SELECT x.next_at FROM webhook_sends x
                          WHERE x.endpoint_id = e.id AND x.state = 'pending'
                          ORDER BY x.next_at LIMIT 1) d
     WHERE e.state = 'active'
$$;

-- ---------------------------------------------------------------------------------- API --

CREATE OR REPLACE FUNCTION flowd_webhook_endpoint_obj(e webhook_endpoints) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', e.id, 'url', e.url, 'events', to_jsonb(e.events), 'workflows', to_jsonb(e.workflows),
        'description', e.description, 'state', e.state, 'disabled_reason', e.disabled_reason,
        'failing_since', flowd_ms(e.failing_since),
        'previous_secret_expires_at',
            CASE WHEN e.previous_until > flowd_now() THEN flowd_ms(e.previous_until) END,
        'created_at', flowd_ms(e.created_at), 'updated_at', flowd_ms(e.updated_at))
$$;

-- Creates an endpoint and returns it. p_secret is what is kept: sealed by the caller when the
-- operator set a key; the caller shows its plain value once.
CREATE OR REPLACE FUNCTION flowd_webhook_endpoint_create(p_tenant bigint, p_url text,
                                                         p_events text[], p_workflows text[],
                                                         p_description text, p_secret text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v webhook_endpoints%ROWTYPE;
BEGIN
    INSERT INTO webhook_endpoints (tenant_id, url, events, workflows, description, secret,
                                   created_at, updated_at)
    VALUES (p_tenant, p_url, p_events, p_workflows, p_description, p_secret, flowd_now(),
            flowd_now())
    RETURNING * INTO v;
    RETURN flowd_webhook_endpoint_obj(v);
END $$;

CREATE OR REPLACE FUNCTION flowd_webhook_endpoints_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('endpoints', coalesce(jsonb_agg(flowd_webhook_endpoint_obj(e)
                                                             ORDER BY e.id), '[]'))
      FROM webhook_endpoints e WHERE e.tenant_id = p_tenant AND e.url IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION flowd_webhook_endpoint_json(p_tenant bigint, p_id bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT flowd_webhook_endpoint_obj(e) FROM webhook_endpoints e
     WHERE e.id = p_id AND e.tenant_id = p_tenant AND e.url IS NOT NULL
$$;

-- Changes the fields given (p_set names them: url, events, workflows, description; a named field
-- with a NULL value is cleared, except url). NULL when there is no such endpoint.
CREATE OR REPLACE FUNCTION flowd_webhook_endpoint_update(p_tenant bigint, p_id bigint,
                                                         p_set text[], p_url text,
                                                         p_events text[], p_workflows text[],
                                                         p_description text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v webhook_endpoints%ROWTYPE;
BEGIN
    UPDATE webhook_endpoints e
       SET url = CASE WHEN 'url' = ANY (p_set) THEN p_url ELSE e.url END,
           events = CASE WHEN 'events' = ANY (p_set) THEN p_events ELSE e.events END,
           workflows = CASE WHEN 'workflows' = ANY (p_set) THEN p_workflows ELSE e.workflows END,
           description = CASE WHEN 'description' = ANY (p_set) THEN p_description
                              ELSE e.description END,
           updated_at = flowd_now()
     WHERE e.id = p_id AND e.tenant_id = p_tenant AND e.url IS NOT NULL
    RETURNING * INTO v;
    RETURN CASE WHEN FOUND THEN flowd_webhook_endpoint_obj(v) END;
END $$;

-- pause: deliveries wait (nothing new is lost: messages keep being written). resume: active
-- again, also after the engine disabled it, and its waiting deliveries go out.
CREATE OR REPLACE FUNCTION flowd_webhook_endpoint_state(p_tenant bigint, p_id bigint,
                                                        p_state text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v webhook_endpoints%ROWTYPE;
BEGIN
    UPDATE webhook_endpoints e
       SET state = p_state, updated_at = flowd_now(),
           disabled_reason = CASE WHEN p_state = 'active' THEN NULL ELSE e.disabled_reason END,
           failing_since = CASE WHEN p_state = 'active' THEN NULL ELSE e.failing_since END
     WHERE e.id = p_id AND e.tenant_id = p_tenant AND e.url IS NOT NULL
    RETURNING * INTO v;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_state = 'active' THEN
        PERFORM pg_notify('flowd_webhooks', '');
    END IF;
    RETURN flowd_webhook_endpoint_obj(v);
END $$;

CREATE OR REPLACE FUNCTION flowd_webhook_endpoint_delete(p_tenant bigint, p_id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_endpoints e WHERE e.id = p_id AND e.tenant_id = p_tenant
                                      AND e.url IS NOT NULL;
    RETURN FOUND;
END $$;

-- A new secret; the current one keeps signing alongside it for 24 hours. p_id NULL rotates (or
-- creates) the tenant's callback signer. Returns the endpoint (the caller shows the new secret).
CREATE OR REPLACE FUNCTION flowd_webhook_endpoint_rotate(p_tenant bigint, p_id bigint,
                                                         p_secret text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v webhook_endpoints%ROWTYPE;
BEGIN
    IF p_id IS NULL THEN
        INSERT INTO webhook_endpoints (tenant_id, secret, description, created_at, updated_at)
        VALUES (p_tenant, p_secret, 'signs the one-off callbacks of runs', flowd_now(),
                flowd_now())
        ON CONFLICT (tenant_id) WHERE url IS NULL DO UPDATE
           SET previous_secret = webhook_endpoints.secret,
               previous_until = flowd_now() + interval '24 hours',
               secret = EXCLUDED.secret, updated_at = flowd_now()
        RETURNING * INTO v;
    ELSE
        UPDATE webhook_endpoints e
           SET previous_secret = e.secret, previous_until = flowd_now() + interval '24 hours',
               secret = p_secret, updated_at = flowd_now()
         WHERE e.id = p_id AND e.tenant_id = p_tenant AND e.url IS NOT NULL
        RETURNING * INTO v;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    RETURN flowd_webhook_endpoint_obj(v);
END $$;

CREATE OR REPLACE FUNCTION flowd_webhook_send_obj(s webhook_sends) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'endpoint', CASE WHEN e.url IS NOT NULL THEN s.endpoint_id END,
        'url', coalesce(s.url, e.url), 'webhook_id', m.uid, 'type', m.type, 'run', m.run_id,
        'state', s.state, 'attempts', s.attempts,
        'next_attempt_at', CASE WHEN s.state = 'pending' THEN flowd_ms(s.next_at) END,
        'created_at', flowd_ms(s.created_at), 'finished_at', flowd_ms(s.finished_at),
        'attempt_log', coalesce((
            SELECT jsonb_agg(jsonb_build_object('at', flowd_ms(a.at), 'status', a.status,
                                                'latency_ms', a.latency_ms,
                                                'response', a.response, 'error', a.error)
                             ORDER BY a.id)
              FROM webhook_attempts a WHERE a.send_id = s.id), '[]'))
      FROM webhook_messages m, webhook_endpoints e
     WHERE m.id = s.message_id AND e.id = s.endpoint_id
$$;

-- The tenant's deliveries, newest first, filtered by endpoint, run and state, after (below) id
-- p_before for paging.
CREATE OR REPLACE FUNCTION flowd_webhook_sends_json(p_tenant bigint, p_endpoint bigint,
                                                    p_run bigint, p_state text,
                                                    p_before bigint, p_limit integer)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT s FROM webhook_sends s
         WHERE s.tenant_id = p_tenant
           AND (p_endpoint IS NULL OR s.endpoint_id = p_endpoint)
           AND (p_state IS NULL OR s.state = p_state)
           AND (p_run IS NULL OR s.message_id IN (SELECT m.id FROM webhook_messages m
                                                   WHERE m.run_id = p_run
                                                     AND m.tenant_id = p_tenant))
           AND (p_before IS NULL OR s.id < p_before)
         ORDER BY s.id DESC LIMIT p_limit
    )
    SELECT jsonb_build_object('deliveries', coalesce(jsonb_agg(flowd_webhook_send_obj(p.s)
                                                               ORDER BY (p.s).id DESC), '[]'))
      FROM page p
$$;

-- Sends a delivery again, now, with the same webhook-id: its attempts start over (the earlier
-- ones stay in its log). NULL when there is no such delivery; 55000 when its endpoint is not
-- active (resume it first).
CREATE OR REPLACE FUNCTION flowd_webhook_redeliver(p_tenant bigint, p_id bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v webhook_sends%ROWTYPE;
    v_state text;
BEGIN
    SELECT e.state INTO v_state FROM webhook_sends s JOIN webhook_endpoints e ON e.id = s.endpoint_id
     WHERE s.id = p_id AND s.tenant_id = p_tenant;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_state <> 'active' THEN
        RAISE EXCEPTION 'the endpoint is %: resume it first', v_state
              USING ERRCODE = '55000';
    END IF;
    UPDATE webhook_sends s SET state = 'pending', attempts = 0, next_at = flowd_now(),
                               leased_until = NULL, finished_at = NULL
     WHERE s.id = p_id RETURNING * INTO v;
    PERFORM pg_notify('flowd_webhooks', '');
    RETURN flowd_webhook_send_obj(v);
END $$;

-- Checks that the tenant's callback signer (the endpoint row without a URL whose secret signs
-- one-off callbacks of runs and batches) exists: 55000 naming the request's `webhook` otherwise.
CREATE OR REPLACE FUNCTION flowd_callback_signer(p_tenant bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.tenant_id = p_tenant
                                                       AND e.url IS NULL) THEN
        RAISE EXCEPTION 'the tenant has no callback secret yet: POST /v1/webhook-callback-secret'
              USING ERRCODE = '55000', COLUMN = 'webhook';
    END IF;
END $$;

-- Gives run p_run a one-off callback (in the transaction that creates it). The tenant's callback
-- signer must exist: 55000 otherwise.
CREATE OR REPLACE FUNCTION flowd_run_callback_set(p_tenant bigint, p_run bigint, p_url text,
                                                  p_events text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_callback_signer(p_tenant);
    INSERT INTO run_callbacks (run_id, tenant_id, url, events)
    VALUES (p_run, p_tenant, p_url, p_events)
    ON CONFLICT (run_id) DO NOTHING;
END $$;

-- Gives batch p_batch a one-off callback (in the transaction that creates it; a repeated request
-- with the batch's idempotency key keeps the first). The tenant's callback signer must exist:
-- 55000 otherwise.
CREATE OR REPLACE FUNCTION flowd_batch_callback_set(p_tenant bigint, p_batch bigint, p_url text,
                                                    p_events text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_callback_signer(p_tenant);
    INSERT INTO batch_callbacks (batch_id, tenant_id, url, events)
    VALUES (p_batch, p_tenant, p_url, p_events)
    ON CONFLICT (batch_id) DO NOTHING;
END $$;
