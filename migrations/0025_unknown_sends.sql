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
CREATE FUNCTION flowd_send_park(p_tenant bigint, p_key text, p_step bigint, p_owner text)
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
CREATE FUNCTION flowd_send_settled() RETURNS trigger
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

CREATE TRIGGER sends_settled AFTER UPDATE OF state ON sends
    FOR EACH ROW WHEN (OLD.state IN ('pending', 'unknown') AND NEW.state IN ('accepted', 'failed'))
    EXECUTE FUNCTION flowd_send_settled();

-- An operator's answer for an ambiguous send: p_outcome 'sent' (the provider accepted it; its id
-- p_message_id when known) or 'not_sent' (it never went out: the step sends it). Returns the send
-- as the API shows it, with "settled": false when it was already settled; NULL when the tenant has
-- no such send.
CREATE FUNCTION flowd_send_resolve(p_tenant bigint, p_key text, p_outcome text, p_message_id text)
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
    ELSE
        UPDATE sends s
           SET state = 'failed', updated_at = now(),
               error = jsonb_build_object('code', 'not_sent', 'resolved', 'operator',
                                          'message', 'an operator said it never went out')
         WHERE s.tenant_id = p_tenant AND s.send_key = p_key AND s.state IN ('pending', 'unknown');
    END IF;
    v_settled := FOUND;
    RETURN (SELECT jsonb_build_object(
                'send_key', s.send_key, 'channel', s.channel, 'provider', s.provider,
                'to', s.recipient, 'run', s.run_id, 'state', s.state,
                'message_id', s.provider_message_id, 'settled', v_settled)
              FROM sends s WHERE s.tenant_id = p_tenant AND s.send_key = p_key);
END $$;
