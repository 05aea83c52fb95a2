-- Leases held per worker, not per step, and renewals that tell a worker what it lost.
--
-- A worker renewed the lease of every step it was running, one row update each (a new row version,
-- never HOT: lease_expires_at was indexed): 10,000 LLM calls of a minute in flight cost 1,000 step
-- updates a second, several times the writes of the work itself. Now a worker renews one row of
-- worker_leases, and a running step is held for as long as the worker named in its lease_owner is:
-- the reaper hands back the steps of workers whose row has lapsed. steps.lease_expires_at keeps the
-- end of the lease the claim granted; it is no longer extended. A worker hands back itself what it
-- stopped without an outcome while its lease lived on, and what a lost round trip claimed in its
-- name (flowd_worker_leases).
--
-- A worker whose renewals did not land in time (a stalled process, a slow or cut connection) finds
-- its steps reaped and claimed again by someone else, or ended meanwhile (cancelled, deleted by
-- retention): the renewal names them, so that it stops their calls instead of paying for answers
-- no one will take.

CREATE TABLE worker_leases (
    owner      text PRIMARY KEY,
    expires_at timestamptz NOT NULL
) WITH (fillfactor = 50);  -- renewals rewrite the row in place (HOT): no index covers expires_at

-- Steps running when this migration runs stay held as long as their leases said.
INSERT INTO worker_leases (owner, expires_at)
SELECT lease_owner, max(lease_expires_at) FROM steps
 WHERE state = 'running' AND lease_owner IS NOT NULL
 GROUP BY lease_owner;

-- The reaper looks for running steps by worker now, not by expiry.
DROP INDEX steps_lease;
CREATE INDEX steps_running_owner ON steps (lease_owner) WHERE state = 'running';

-- Keeps p_owner's lease alive until p_lease_ms from now: the clock's now, not the transaction's
-- start, which a renewal held up for longer than the lease would leave behind.
CREATE FUNCTION flowd_worker_renew(p_owner text, p_lease_ms integer) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO worker_leases (owner, expires_at)
    VALUES (p_owner, clock_timestamp() + p_lease_ms * interval '1 millisecond')
    ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at
$$;

-- A claim makes sure its worker holds a lease before a step runs in its name (the row may be new,
-- or gone after a long stall), extending it when less than half is left. Otherwise the check only
-- locks the row, which also keeps the reaper from deleting it under this claim.
CREATE OR REPLACE FUNCTION flowd_cycle(p_owner text, p_results jsonb, p_want integer, p_lease_ms integer)
RETURNS SETOF flowd_claimed
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_apply(p_owner, p_results);
    PERFORM flowd_expire_waits(100);
    IF p_want > 0 THEN
        INSERT INTO worker_leases AS w (owner, expires_at)
        VALUES (p_owner, clock_timestamp() + p_lease_ms * interval '1 millisecond')
        ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at
         WHERE w.expires_at < clock_timestamp() + p_lease_ms * interval '1 millisecond' / 2;
        RETURN QUERY SELECT * FROM flowd_claim(p_owner, p_want, p_lease_ms);
    END IF;
END $$;

-- Hands the running steps among p_ids back (ready again, the attempt they used counted; failed
-- when it was their last) and returns how many.
CREATE FUNCTION flowd_reap_steps(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := flowd_now();
    v_n      integer;
    v_failed bigint[];
BEGIN
    IF cardinality(p_ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM runs
      WHERE id IN (SELECT s.run_id FROM steps s WHERE s.id = ANY (p_ids))
      ORDER BY id FOR UPDATE;
    WITH x AS (
        SELECT s.id FROM steps s
         WHERE s.id = ANY (p_ids) AND s.state = 'running'
           FOR UPDATE SKIP LOCKED),
    upd AS (
        UPDATE steps s
           SET state = CASE WHEN s.attempts < s.max_attempts THEN 'ready' ELSE 'failed' END,
               run_at = v_now, lease_owner = NULL, lease_expires_at = NULL,
               error = jsonb_build_object('code', 'lease_expired', 'attempt', s.attempts,
                                          'message', 'the worker running this attempt stopped'),
               finished_at = CASE WHEN s.attempts < s.max_attempts THEN NULL ELSE v_now END
          FROM x WHERE s.id = x.id
        RETURNING s.id, s.run_id, s.tenant_id, s.key, s.state, s.error),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT upd.run_id, upd.tenant_id, v_now,
               CASE WHEN upd.state = 'failed' THEN 'step.failed' ELSE 'step.retrying' END,
               upd.key, upd.error FROM upd)
    SELECT count(*), array_agg(DISTINCT upd.run_id) FILTER (WHERE upd.state = 'failed')
      INTO v_n, v_failed FROM upd;
    IF v_failed IS NOT NULL THEN
        PERFORM flowd_fail_runs(v_failed, jsonb_build_object('code', 'step_failed',
                                'message', 'a step ran out of attempts'));
    END IF;
    IF v_n > 0 THEN
        PERFORM pg_notify('flowd_ready', '');
    END IF;
    RETURN v_n;
END $$;

-- Hands back up to p_limit running steps of workers whose lease has lapsed, and forgets workers
-- gone for an hour with nothing left running.
CREATE OR REPLACE FUNCTION flowd_reap(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM worker_leases w
     WHERE w.expires_at < now() - interval '1 hour'
       AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.lease_owner = w.owner AND s.state = 'running');
    RETURN flowd_reap_steps(ARRAY(
        SELECT s.id FROM worker_leases w
          JOIN steps s ON s.lease_owner = w.owner AND s.state = 'running'
         WHERE w.expires_at < now()
         LIMIT p_limit));
END $$;

-- A worker's renewal: keeps its lease alive, hands back the attempts it stopped without an outcome
-- (steps p_release at attempts p_release_attempts: their lease had run out as far as it knew; a
-- step claimed again since is another attempt and stays) and, given p_fresh_pid, the steps
-- running in its name that a round trip on an earlier connection claimed but never delivered (it
-- holds p_ids; steps claimed on this connection are all delivered or still on their way). That
-- last part needs p_ids to describe this connection's worker: p_fresh_pid is the server process it
-- was prepared for, and on another connection (the renewal queued behind a lost one) it is
-- skipped. Returns the ids among p_ids it no longer holds: reaped after its lease lapsed, or ended
-- meanwhile (cancelled, deleted).
CREATE FUNCTION flowd_worker_leases(p_owner text, p_lease_ms integer, p_ids bigint[],
                                    p_release bigint[], p_release_attempts integer[],
                                    p_fresh_pid integer)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_conn_start timestamptz;
    v_unseen     bigint[] := '{}';
BEGIN
    PERFORM flowd_worker_renew(p_owner, p_lease_ms);
    IF p_fresh_pid = pg_backend_pid() THEN
        -- a claim set lease_expires_at to its now() plus the worker's lease, and nothing moves it
        SELECT a.backend_start INTO v_conn_start FROM pg_stat_activity a
         WHERE a.pid = pg_backend_pid();
        v_unseen := ARRAY(
            SELECT s.id FROM steps s
             WHERE s.lease_owner = p_owner AND s.state = 'running' AND s.id <> ALL (p_ids)
               AND s.lease_expires_at - p_lease_ms * interval '1 millisecond' < v_conn_start);
    END IF;
    PERFORM flowd_reap_steps(v_unseen || ARRAY(
        SELECT s.id FROM unnest(p_release, p_release_attempts) AS r(id, attempt)
          JOIN steps s ON s.id = r.id AND s.attempts = r.attempt
         WHERE s.state = 'running' AND s.lease_owner = p_owner));
    RETURN QUERY
    SELECT x.id FROM unnest(p_ids) AS x(id)
     WHERE NOT EXISTS (SELECT 1 FROM steps s
                        WHERE s.id = x.id AND s.state = 'running' AND s.lease_owner = p_owner);
END $$;

-- The previous version's renewal, for its processes during a rolling upgrade: it renews their
-- worker's lease too, so that the reaper leaves their steps alone.
CREATE OR REPLACE FUNCTION flowd_heartbeat(p_owner text, p_lease_ms integer, p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_worker_renew(p_owner, p_lease_ms);
    RETURN (SELECT count(*) FROM steps
             WHERE id = ANY (p_ids) AND state = 'running' AND lease_owner = p_owner);
END $$;
