-- sql/leases.sql: Worker leases: renewal, handing back the steps of workers whose lease lapsed, and
-- the process's maintenance tick.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

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

-- Keeps p_owner's lease alive until p_lease_ms from now: the clock's now, not the transaction's
-- start, which a renewal held up for longer than the lease would leave behind.
CREATE OR REPLACE FUNCTION flowd_worker_renew(p_owner text, p_lease_ms integer) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO worker_leases (owner, expires_at)
    VALUES (p_owner, clock_timestamp() + p_lease_ms * interval '1 millisecond')
    ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at
$$;

-- Hands the running steps among p_ids back: ready again with the attempt they were on given
-- back, or failed with `interrupted` once a step has been interrupted max_interruptions times,
-- which then fails its run or lets it go on as the step's on_failure says. Returns how many.
CREATE OR REPLACE FUNCTION flowd_reap_steps(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := flowd_now();
    v_n       integer;
    v_failed  jsonb;     -- steps given up on whose policy fails their run
    v_went_on bigint[];  -- given up on, on_failure "continue"
    v_cut     bigint[];  -- given up on, on_failure "skip_dependents"
    v_run     record;
BEGIN
    IF cardinality(p_ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM runs
      WHERE id IN (SELECT s.run_id FROM steps s WHERE s.id = ANY (p_ids))
      ORDER BY id FOR UPDATE;
    WITH x AS (
        SELECT s.id, s.interruptions + 1 < c.cap AS again, c.policy,
               CASE WHEN s.interruptions + 1 < c.cap THEN
                        jsonb_build_object('code', 'lease_expired', 'attempt', s.attempts,
                                           'interruptions', s.interruptions + 1,
                                           'message', 'the worker running this attempt stopped '
                                                      'or lost its lease; the attempt runs again')
                    ELSE jsonb_build_object('code', 'interrupted', 'attempt', s.attempts,
                                            'interruptions', s.interruptions + 1,
                                            'message', format('step %s was interrupted %s times '
                                                '(its worker stopped or lost its lease each time); '
                                                'giving up', s.key, s.interruptions + 1))
               END AS error
          FROM steps s JOIN runs r ON r.id = s.run_id JOIN workflows w ON w.id = r.workflow_id
         CROSS JOIN LATERAL (
               SELECT coalesce((w.def->'steps'->s.idx->>'max_interruptions')::integer, 5) AS cap,
                      flowd_on_failure(w.def->'steps'->s.idx) AS policy) c
         WHERE s.id = ANY (p_ids) AND s.state = 'running'
           FOR UPDATE OF s SKIP LOCKED),
    upd AS (
        UPDATE steps s
           SET state = CASE WHEN x.again THEN 'ready' ELSE 'failed' END,
               attempts = CASE WHEN x.again THEN s.attempts - 1 ELSE s.attempts END,
               interruptions = s.interruptions + 1,
               run_at = v_now, lease_owner = NULL, lease_expires_at = NULL,
               error = x.error,
               finished_at = CASE WHEN x.again THEN NULL ELSE v_now END,
               -- a step that may fail without failing its run exposes the error as its output
               output = CASE WHEN NOT x.again AND x.policy <> 'fail_run'
                             THEN jsonb_build_object('error', x.error) ELSE s.output END
          FROM x WHERE s.id = x.id
        RETURNING s.id, s.run_id, s.tenant_id, s.key, s.kind, s.state, s.error, x.policy),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT upd.run_id, upd.tenant_id, v_now,
               CASE WHEN upd.state = 'failed' THEN 'step.failed' ELSE 'step.interrupted' END,
               upd.key, upd.error FROM upd)
    SELECT count(*),
           jsonb_agg(jsonb_build_object('run', upd.run_id, 'step', upd.key, 'kind', upd.kind,
                                        'error', upd.error))
               FILTER (WHERE upd.state = 'failed' AND upd.policy = 'fail_run'),
           array_agg(upd.id) FILTER (WHERE upd.state = 'failed' AND upd.policy = 'continue'),
           array_agg(upd.id) FILTER (WHERE upd.state = 'failed' AND upd.policy = 'skip_dependents')
      INTO v_n, v_failed, v_went_on, v_cut FROM upd;
    PERFORM flowd_failed_steps_go_on(v_went_on, v_cut);
    -- each failed run is told which of its steps gave up
    FOR v_run IN SELECT DISTINCT ON ((f->>'run')::bigint) (f->>'run')::bigint AS id, f
                   FROM jsonb_array_elements(coalesce(v_failed, '[]')) f
    LOOP
        PERFORM flowd_fail_runs(ARRAY[v_run.id], jsonb_build_object(
            'code', 'interrupted', 'step', v_run.f->>'step', 'kind', v_run.f->>'kind',
            'attempt', v_run.f->'error'->'attempt',
            'message', v_run.f->'error'->>'message'));
    END LOOP;
    IF v_n > 0 THEN
        PERFORM pg_notify('flowd_ready', '');
    END IF;
    RETURN v_n;
END $$;

-- flowd_worker_leases of 0016, with the attempts to hand back named by step, attempt and the
-- claim's time in epoch milliseconds of the engine clock (what the claim answered as now_ms).
CREATE OR REPLACE FUNCTION flowd_worker_leases(p_owner text, p_lease_ms integer, p_ids bigint[],
                                    p_release bigint[], p_release_attempts integer[],
                                    p_release_claimed bigint[], p_fresh_pid integer)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_conn_start timestamptz;
    v_unseen     bigint[] := '{}';
BEGIN
    PERFORM flowd_worker_renew(p_owner, p_lease_ms);
    IF p_fresh_pid = pg_backend_pid() THEN
        SELECT a.backend_start INTO v_conn_start FROM pg_stat_activity a
         WHERE a.pid = pg_backend_pid();
        v_unseen := ARRAY(
            SELECT s.id FROM steps s
             WHERE s.lease_owner = p_owner AND s.state = 'running' AND s.id <> ALL (p_ids)
               AND s.lease_expires_at - p_lease_ms * interval '1 millisecond' < v_conn_start);
    END IF;
    PERFORM flowd_reap_steps(v_unseen || ARRAY(
        SELECT s.id FROM unnest(p_release, p_release_attempts, p_release_claimed)
                         AS r(id, attempt, claimed)
          JOIN steps s ON s.id = r.id AND s.attempts = r.attempt
         WHERE s.state = 'running' AND s.lease_owner = p_owner
           AND (extract(epoch FROM s.started_at) * 1000)::bigint = r.claimed));
    RETURN QUERY
    SELECT x.id FROM unnest(p_ids) AS x(id)
     WHERE NOT EXISTS (SELECT 1 FROM steps s
                        WHERE s.id = x.id AND s.state = 'running' AND s.lease_owner = p_owner);
END $$;

-- The process's maintenance tick, once a second from one worker: reaps lapsed leases (flowd_reap),
-- makes the steps a quota blocked ready again once its period has reset (flowd_quota_unblock), and
-- wakes the workers with a NOTIFY when a step is due that nobody has claimed (its enqueue's
-- NOTIFY skipped or missed, or its time reached while no worker's timer was set for it; see 0002
-- for why concurrent enqueues send one NOTIFY between them). Returns the number of steps reaped.
CREATE OR REPLACE FUNCTION flowd_tick(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := flowd_reap(p_limit);
BEGIN
    IF EXISTS (SELECT 1 FROM quota_blocked_steps WHERE run_at <= flowd_now()) THEN
        PERFORM flowd_quota_unblock(NULL);
    END IF;
    IF v_n = 0 AND (EXISTS (SELECT 1 FROM steps WHERE state = 'ready' AND run_at <= flowd_now())
                    OR EXISTS (SELECT 1 FROM steps WHERE state = 'waiting'
                                  AND wait_event IS NOT NULL AND run_at <= flowd_now())) THEN
        PERFORM pg_notify('flowd_ready', 'tick');
    END IF;
    RETURN v_n;
END $$;
