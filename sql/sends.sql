-- sql/sends.sql: The send ledger (exactly one provider call per message), the sandbox outbox,
-- delivery webhooks, and sends whose outcome is unknown: parked steps and their settlement.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Delivery states ordered; the failures are terminal and outrank everything.
CREATE OR REPLACE FUNCTION flowd_delivery_rank(p text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p WHEN 'queued' THEN 1 WHEN 'sent' THEN 2 WHEN 'delivered' THEN 3 WHEN 'read' THEN 4
                  WHEN 'failed' THEN 5 WHEN 'bounced' THEN 5 WHEN 'undelivered' THEN 5 ELSE 0 END
$$;

-- Decides what an attempt of a send step does. decision:
--   send        the caller owns the call now (row pending); call the provider
--   done        accepted earlier: result holds the recorded output; do not call
--   suppressed  the recipient is on the suppression list (reason); do not call
--   ambiguous   an earlier call may have gone out (at_most_once): resolve it, checks counts this
--   conflict    same key, different message: a bug in the definition or the engine
--   busy        another attempt created the row a moment ago: try again shortly
CREATE OR REPLACE FUNCTION flowd_send_claim(p_tenant bigint, p_key text, p_channel text, p_provider text,
                                 p_run bigint, p_step bigint, p_recipient text, p_hash text,
                                 p_policy text,
                                 OUT decision text, OUT state text, OUT message_id text,
                                 OUT result jsonb, OUT reason text, OUT checks integer,
                                 OUT calls integer, OUT created_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v sends%ROWTYPE;
BEGIN
    SELECT * INTO v FROM sends s WHERE s.tenant_id = p_tenant AND s.send_key = p_key FOR UPDATE;
    IF FOUND THEN
        state := v.state; message_id := v.provider_message_id; result := v.result;
        checks := v.checks; calls := v.calls;
        created_ms := (extract(epoch FROM v.created_at) * 1000)::bigint;
        IF v.state = 'accepted' THEN
            decision := 'done';
            RETURN;
        END IF;
        IF v.state IN ('pending', 'unknown') AND v.request_hash <> p_hash THEN
            decision := 'conflict';
            RETURN;
        END IF;
    END IF;

    SELECT x.reason INTO reason FROM suppressions x
     WHERE x.tenant_id = p_tenant AND x.channel = p_channel AND x.address = p_recipient;
    IF FOUND THEN
        decision := 'suppressed';
        RETURN;
    END IF;

    IF v.send_key IS NULL THEN
        INSERT INTO sends (tenant_id, send_key, channel, provider, run_id, step_id, recipient,
                           request_hash, policy)
        VALUES (p_tenant, p_key, p_channel, p_provider, p_run, p_step, p_recipient, p_hash,
                p_policy)
        ON CONFLICT DO NOTHING;
        decision := CASE WHEN FOUND THEN 'send' ELSE 'busy' END;
        state := 'pending'; checks := 0; calls := 1;
        created_ms := (extract(epoch FROM now()) * 1000)::bigint;
        RETURN;
    END IF;

    IF v.state = 'failed' OR p_policy = 'at_least_once' THEN
        -- failed: nothing went out. at_least_once: the step accepts a possible duplicate.
        UPDATE sends s SET state = 'pending', calls = s.calls + 1, request_hash = p_hash,
                           provider = p_provider, policy = p_policy, updated_at = now()
         WHERE s.tenant_id = p_tenant AND s.send_key = p_key
        RETURNING s.calls INTO calls;
        decision := 'send';
        state := 'pending';
        RETURN;
    END IF;

    -- pending (its attempt died or lost its lease) or unknown: never blindly resend.
    UPDATE sends s SET state = 'unknown', checks = s.checks + 1, updated_at = now()
     WHERE s.tenant_id = p_tenant AND s.send_key = p_key
    RETURNING s.checks INTO checks;
    decision := 'ambiguous';
    state := 'unknown';
END $$;

-- Records the outcome of a call made under flowd_send_claim. p_state: accepted, failed or unknown.
-- Never moves an accepted row back; an accepted outcome overrides a webhook's provisional result.
-- p_suppress (a reason) also puts the recipient on the suppression list, in the same transaction.
CREATE OR REPLACE FUNCTION flowd_send_record(p_tenant bigint, p_key text, p_state text, p_message_id text,
                                  p_result jsonb, p_error jsonb, p_suppress text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_was   text;
BEGIN
    SELECT s.state INTO v_was FROM sends s
     WHERE s.tenant_id = p_tenant AND s.send_key = p_key FOR UPDATE;
    UPDATE sends s
       SET state = p_state,
           provider_message_id = coalesce(p_message_id, s.provider_message_id),
           result = CASE WHEN p_state = 'accepted' THEN p_result ELSE s.result END,
           error = CASE WHEN p_state = 'accepted' THEN NULL ELSE p_error END,
           delivery = CASE WHEN p_state = 'accepted' AND s.delivery IS NULL THEN 'queued'
                           ELSE s.delivery END,
           updated_at = now()
     WHERE s.tenant_id = p_tenant AND s.send_key = p_key
       AND (s.state <> 'accepted' OR (p_state = 'accepted' AND s.result->>'resolved' = 'webhook'))
    RETURNING s.state INTO v_state;
    IF v_state = 'accepted' AND v_was IS DISTINCT FROM 'accepted' THEN
        PERFORM flowd_send_usage_add(p_tenant, p_key);
    END IF;
    IF p_suppress IS NOT NULL THEN
        INSERT INTO suppressions (tenant_id, channel, address, reason, source)
        SELECT s.tenant_id, s.channel, s.recipient, p_suppress, 'send' FROM sends s
         WHERE s.tenant_id = p_tenant AND s.send_key = p_key
        ON CONFLICT DO NOTHING;
    END IF;
    IF v_state IS NULL THEN
        SELECT s.state INTO v_state FROM sends s WHERE s.tenant_id = p_tenant AND s.send_key = p_key;
    END IF;
    RETURN v_state;
END $$;

-- The sandbox transport: records the message in the outbox and the send as accepted, atomically.
-- Returns the output (p_output plus message_id = the sandbox id), the same on every replay.
CREATE OR REPLACE FUNCTION flowd_sandbox_send(p_tenant bigint, p_key text, p_run bigint, p_step bigint,
                                   p_step_key text, p_channel text, p_provider text,
                                   p_recipient text, p_message jsonb, p_output jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_id  bigint;
    v_sid text;
    v_out jsonb;
BEGIN
    INSERT INTO outbox (tenant_id, send_key, run_id, step_id, step_key, channel, provider,
                        recipient, message, sandbox_id)
    VALUES (p_tenant, p_key, p_run, p_step, p_step_key, p_channel, p_provider, p_recipient,
            p_message, '')
    ON CONFLICT (tenant_id, send_key) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NOT NULL THEN
        v_sid := 'sandbox-' || p_channel || '-' || v_id;
        UPDATE outbox SET sandbox_id = v_sid WHERE id = v_id;
    ELSE
        SELECT o.sandbox_id INTO v_sid FROM outbox o
         WHERE o.tenant_id = p_tenant AND o.send_key = p_key;
    END IF;
    v_out := p_output || jsonb_build_object('message_id', v_sid);
    PERFORM flowd_send_record(p_tenant, p_key, 'accepted', v_sid, v_out, NULL, NULL);
    RETURN v_out;
END $$;

-- Applies the items of one verified webhook POST in one transaction. Each item (built by
-- api/routes_hooks.c) may carry: dedup (required), send_key and/or message_id (which send it is
-- about), delivery (a delivery state), error (jsonb), suppress / unsuppress ({channel, address,
-- reason}) and event ({name, key, data}). A dedup key seen before makes the item a no-op.
-- A webhook about a send whose call was ambiguous proves the provider accepted it.
CREATE OR REPLACE FUNCTION flowd_hooks_apply(p_tenant bigint, p_provider text, p_items jsonb,
                                  OUT applied integer, OUT duplicates integer, OUT events integer)
LANGUAGE plpgsql AS $$
DECLARE
    it     jsonb;
    v_key  text;
    v_mid  text;
    v_del  text;
BEGIN
    applied := 0; duplicates := 0; events := 0;
    FOR it IN SELECT * FROM jsonb_array_elements(p_items) LOOP
        INSERT INTO webhook_deliveries (tenant_id, provider, dedup_key)
        VALUES (p_tenant, p_provider, it->>'dedup') ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            duplicates := duplicates + 1;
            CONTINUE;
        END IF;
        applied := applied + 1;
        v_key := it->>'send_key';
        v_mid := it->>'message_id';
        v_del := it->>'delivery';
        IF v_key IS NULL AND v_mid IS NOT NULL THEN
            SELECT s.send_key INTO v_key FROM sends s
             WHERE s.tenant_id = p_tenant AND s.provider_message_id = v_mid;
        END IF;
        IF v_key IS NOT NULL THEN
            UPDATE sends s
               SET state = 'accepted',
                   provider_message_id = coalesce(s.provider_message_id, v_mid),
                   result = jsonb_build_object('message_id', coalesce(s.provider_message_id, v_mid),
                                               'provider', s.provider, 'to', s.recipient,
                                               'send_key', s.send_key, 'status', 'accepted',
                                               'resolved', 'webhook'),
                   error = NULL, updated_at = now()
             WHERE s.tenant_id = p_tenant AND s.send_key = v_key
               AND s.state IN ('pending', 'unknown') AND coalesce(s.provider_message_id, v_mid) IS NOT NULL;
            IF FOUND THEN
                PERFORM flowd_send_usage_add(p_tenant, v_key);
            END IF;
            IF v_del IS NOT NULL THEN
                UPDATE sends s
                   SET delivery = v_del,
                       delivery_error = coalesce(it->'error', s.delivery_error), updated_at = now()
                 WHERE s.tenant_id = p_tenant AND s.send_key = v_key
                   AND flowd_delivery_rank(s.delivery) < flowd_delivery_rank(v_del);
            END IF;
        END IF;
        IF it ? 'suppress' THEN
            INSERT INTO suppressions (tenant_id, channel, address, reason, source)
            VALUES (p_tenant, it->'suppress'->>'channel', it->'suppress'->>'address',
                    it->'suppress'->>'reason', p_provider)
            ON CONFLICT DO NOTHING;
        END IF;
        IF it ? 'unsuppress' THEN
            -- a START reply undoes a STOP reply, and nothing else
            DELETE FROM suppressions x
             WHERE x.tenant_id = p_tenant AND x.channel = it->'unsuppress'->>'channel'
               AND x.address = it->'unsuppress'->>'address' AND x.reason = 'stop';
        END IF;
        IF it ? 'event' THEN
            PERFORM flowd_event(p_tenant, it->'event'->>'name', it->'event'->>'key',
                                coalesce(it->'event'->'data', '{}'::jsonb));
            events := events + 1;
        END IF;
    END LOOP;
END $$;

-- The sandbox outbox of a tenant, oldest first, optionally of one run (NULL when that run is not
-- the tenant's).
CREATE OR REPLACE FUNCTION flowd_outbox_json(p_tenant bigint, p_run bigint, p_after bigint, p_limit integer)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_run IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs r
                                          WHERE r.id = p_run AND r.tenant_id = p_tenant) THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('messages', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'id', o.id, 'sandbox_id', o.sandbox_id, 'run_id', o.run_id,
                   'step', o.step_key, 'channel', o.channel, 'provider', o.provider,
                   'to', o.recipient, 'message', o.message, 'send_key', o.send_key,
                   'created_at', flowd_ms(o.created_at)) ORDER BY o.id)
          FROM (SELECT * FROM outbox x
                 WHERE x.tenant_id = p_tenant AND (p_run IS NULL OR x.run_id = p_run)
                   AND x.id > coalesce(p_after, 0)
                 ORDER BY x.id LIMIT p_limit) o), '[]'::jsonb));
END $$;

-- A send whose outcome is unknown waits for an answer instead of failing its run.
--
-- An at-most-once send whose call may have gone out (a crash or a lost lease mid-call, a provider
-- that accepted and then failed to answer) was looked up a few times and then failed its step with
-- `unknown`, and its run with it, although most such messages had been delivered: retrying the run
-- failed again at once. Now the step is parked: it waits (no timeout, visible with the error code
-- `unknown` and a step.unknown event) until the send is settled by the provider's delivery webhook
-- (flowd_hooks_apply marks it accepted), or by an operator (flowd_send_resolve: sent or not sent).
-- Settling the send wakes the step (trigger below, so every path that settles a send does), and
-- the step's next attempt finds the send accepted (it succeeds with that output) or failed
-- (nothing went out: it sends).

-- Parks the step p_step, running the ambiguous send p_key for p_owner: 'parked', or 'ready' when
-- the send was settled meanwhile (the step runs again at once), or 'gone' when the step is no
-- longer this owner's.
CREATE OR REPLACE FUNCTION flowd_send_park(p_tenant bigint, p_key text, p_step bigint, p_owner text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := flowd_now();
    v_send  text;
    v_step  record;
BEGIN
    SELECT s.run_id INTO v_step FROM steps s WHERE s.id = p_step;
    IF NOT FOUND THEN
        RETURN 'gone';
    END IF;
    PERFORM 1 FROM runs WHERE id = v_step.run_id FOR UPDATE;
    SELECT s.id, s.run_id, s.tenant_id, s.key INTO v_step FROM steps s
     WHERE s.id = p_step AND s.state = 'running' AND s.lease_owner = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'gone';
    END IF;
    -- locked, so that a webhook settling it now waits for this park and then wakes the step
    SELECT x.state INTO v_send FROM sends x
     WHERE x.tenant_id = p_tenant AND x.send_key = p_key FOR UPDATE;
    IF v_send IN ('pending', 'unknown') THEN
        UPDATE steps
           SET state = 'waiting', run_at = 'infinity', attempts = attempts - 1,
               lease_owner = NULL, lease_expires_at = NULL,
               error = jsonb_build_object(
                   'code', 'unknown', 'send_key', p_key,
                   'message', 'the provider may or may not have accepted this message; the step '
                              'waits for its delivery webhook or an operator '
                              '(POST /v1/sends/{send_key}/outcome)')
         WHERE id = p_step;
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        VALUES (v_step.run_id, v_step.tenant_id, v_now, 'step.unknown', v_step.key,
                jsonb_build_object('send_key', p_key));
        RETURN 'parked';
    END IF;
    UPDATE steps SET state = 'ready', run_at = v_now, attempts = attempts - 1,
                     lease_owner = NULL, lease_expires_at = NULL
     WHERE id = p_step;
    PERFORM pg_notify('flowd_ready', '');
    RETURN 'ready';
END $$;

-- A send settled (accepted or failed) wakes the step parked on it.
CREATE OR REPLACE FUNCTION flowd_send_settled() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_step record;
BEGIN
    UPDATE steps s SET state = 'ready', run_at = v_now
     WHERE s.id = NEW.step_id AND s.state = 'waiting' AND s.wait_event IS NULL
       AND s.error->>'code' = 'unknown' AND s.error->>'send_key' = NEW.send_key
    RETURNING s.run_id, s.tenant_id, s.key INTO v_step;
    IF FOUND THEN
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        VALUES (v_step.run_id, v_step.tenant_id, v_now, 'step.resolved', v_step.key,
                jsonb_build_object('send_key', NEW.send_key, 'state', NEW.state,
                                   'resolved', coalesce(NEW.result->>'resolved',
                                                        NEW.error->>'resolved')));
        PERFORM pg_notify('flowd_ready', '');
    END IF;
    RETURN NULL;
END $$;

-- An operator's answer for an ambiguous send: p_outcome 'sent' (the provider accepted it; its id
-- p_message_id when known) or 'not_sent' (it never went out: the step sends it). Returns the send
-- as the API shows it, with "settled": false when it was already settled; NULL when the tenant has
-- no such send.
CREATE OR REPLACE FUNCTION flowd_send_resolve(p_tenant bigint, p_key text, p_outcome text, p_message_id text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_settled boolean;
BEGIN
    IF p_outcome = 'sent' THEN
        UPDATE sends s
           SET state = 'accepted',
               provider_message_id = coalesce(p_message_id, s.provider_message_id),
               result = jsonb_build_object('message_id', coalesce(p_message_id,
                                                                  s.provider_message_id),
                                           'provider', s.provider, 'to', s.recipient,
                                           'send_key', s.send_key, 'status', 'accepted',
                                           'resolved', 'operator'),
               error = NULL, updated_at = now()
         WHERE s.tenant_id = p_tenant AND s.send_key = p_key AND s.state IN ('pending', 'unknown');
        v_settled := FOUND;
        IF v_settled THEN
            PERFORM flowd_send_usage_add(p_tenant, p_key);
        END IF;
    ELSE
        UPDATE sends s
           SET state = 'failed', updated_at = now(),
               error = jsonb_build_object('code', 'not_sent', 'resolved', 'operator',
                                          'message', 'an operator said it never went out')
         WHERE s.tenant_id = p_tenant AND s.send_key = p_key AND s.state IN ('pending', 'unknown');
        v_settled := FOUND;
    END IF;
    RETURN (SELECT jsonb_build_object(
                'send_key', s.send_key, 'channel', s.channel, 'provider', s.provider,
                'to', s.recipient, 'run', s.run_id, 'state', s.state,
                'message_id', s.provider_message_id, 'settled', v_settled)
              FROM sends s WHERE s.tenant_id = p_tenant AND s.send_key = p_key);
END $$;

-- A send whose attempt stopped before its request left is not ambiguous.
--
-- An attempt stopped in flight (its lease lost: a stalled worker, a lost connection) left its send
-- 'pending' in the ledger, and the next attempt treated it as possibly sent, although the worker
-- knew nothing had gone out: the ledger claim had committed but the provider call had not started,
-- or its connection (with TLS) was still being set up. The worker now records that: the send is
-- 'failed' (nothing went out) and the next attempt sends it. Only the claim that stopped is
-- answered for: p_calls is the ledger's call count that claim got, so a later attempt's own claim
-- of the same send is never touched.
CREATE OR REPLACE FUNCTION flowd_send_not_sent(p_tenant bigint, p_key text, p_calls integer) RETURNS boolean
LANGUAGE sql AS $$
    UPDATE sends s
       SET state = 'failed', updated_at = now(),
           error = jsonb_build_object('code', 'not_sent',
                                      'message', 'the attempt stopped before its request left')
     WHERE s.tenant_id = p_tenant AND s.send_key = p_key AND s.state = 'pending'
       AND s.calls = p_calls
    RETURNING true
$$;

-- The send ledger's rows of a run for GET /v1/runs/{id}/sends: every message its steps sent or
-- tried to, with the delivery state the provider's webhooks reported, oldest first; NULL when the
-- tenant has no such run.
CREATE OR REPLACE FUNCTION flowd_run_sends_json(p_tenant bigint, p_run bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('sends', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'send_key', s.send_key, 'step', st.key, 'channel', s.channel,
                   'provider', s.provider, 'to', s.recipient, 'state', s.state,
                   'delivery', s.delivery, 'provider_message_id', s.provider_message_id,
                   'calls', s.calls, 'error', s.error, 'delivery_error', s.delivery_error,
                   'created_at', flowd_ms(s.created_at), 'updated_at', flowd_ms(s.updated_at))
                   ORDER BY s.created_at, s.send_key)
          FROM sends s LEFT JOIN steps st ON st.id = s.step_id
         WHERE s.run_id = r.id AND s.tenant_id = p_tenant), '[]'))
      FROM runs r WHERE r.id = p_run AND r.tenant_id = p_tenant
$$;
