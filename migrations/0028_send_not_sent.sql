-- A send whose attempt stopped before its request left is not ambiguous.
--
-- An attempt stopped in flight (its lease lost: a stalled worker, a lost connection) left its send
-- 'pending' in the ledger, and the next attempt treated it as possibly sent, although the worker
-- knew nothing had gone out: the ledger claim had committed but the provider call had not started,
-- or its connection (with TLS) was still being set up. The worker now records that: the send is
-- 'failed' (nothing went out) and the next attempt sends it. Only the claim that stopped is
-- answered for: p_calls is the ledger's call count that claim got, so a later attempt's own claim
-- of the same send is never touched.

CREATE FUNCTION flowd_send_not_sent(p_tenant bigint, p_key text, p_calls integer) RETURNS boolean
LANGUAGE sql AS $$
    UPDATE sends s
       SET state = 'failed', updated_at = now(),
           error = jsonb_build_object('code', 'not_sent',
                                      'message', 'the attempt stopped before its request left')
     WHERE s.tenant_id = p_tenant AND s.send_key = p_key AND s.state = 'pending'
       AND s.calls = p_calls
    RETURNING true
$$;
