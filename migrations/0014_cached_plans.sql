-- Functions the workers call on every idle turn or heartbeat, in PL/pgSQL: a SQL-language function
-- whose body reads a table is not inlined, and PostgreSQL plans its body again on every call
-- (flowd_next_due_ms: ~1 ms per call that way, ~0.1 ms with the plan kept for the session).

CREATE OR REPLACE FUNCTION flowd_next_due_ms() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT greatest(0, (extract(epoch FROM (min(t) - flowd_now())) * 1000)::bigint)
              FROM (SELECT min(run_at) AS t FROM steps WHERE state = 'ready'
                    UNION ALL
                    SELECT min(run_at) FROM steps WHERE state = 'waiting' AND wait_event IS NOT NULL) x);
END $$;

CREATE OR REPLACE FUNCTION flowd_heartbeat(p_owner text, p_lease_ms integer, p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
BEGIN
    UPDATE steps SET lease_expires_at = now() + p_lease_ms * interval '1 millisecond'
     WHERE id = ANY (p_ids) AND state = 'running' AND lease_owner = p_owner;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END $$;

-- The engine clock, read at the start of every transition.
CREATE OR REPLACE FUNCTION flowd_now() RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN now() + (SELECT offset_ms FROM flowd_clock) * interval '1 millisecond';
END $$;
