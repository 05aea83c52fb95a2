-- A lost lease interrupts an attempt; it does not fail it. And an idle engine stays idle.
--
-- The reaper counted a lease that ran out (a killed process, a lost connection, a stalled worker)
-- as a used attempt, and kinds that default to one attempt (transform) failed their run: 51 of 300
-- runs after one kill -9 on a busy machine. Now such an attempt is an interruption: the step goes
-- back to ready with its attempt given back, and steps.interruptions counts it. A step that keeps
-- killing its worker is stopped after max_interruptions (5 unless its definition says otherwise)
-- and fails its run with the code `interrupted`, naming the step.
--
-- Giving the attempt back means a step re-claimed after an interruption runs under the attempt
-- number it had, so a worker handing back an attempt it stopped (flowd_worker_leases) can no
-- longer tell that attempt from a new claim of the same step by its number alone: the hand-back
-- also names the claim's time (steps.started_at, which each claim sets and the worker was told).
--
-- flowd_next_due_ms answered 0 when nothing was due at all (greatest(0, NULL) is 0), so every
-- idle worker asked again after 2 ms: hundreds of transactions a second with nothing to do. It
-- answers NULL now, and the workers wait for a NOTIFY, their next-due timer or the process's
-- once-a-second tick (flowd_tick), which also reaps lapsed leases.

ALTER TABLE steps ADD COLUMN interruptions integer NOT NULL DEFAULT 0;

-- Hands the running steps among p_ids back: ready again with the attempt they were on given
-- back, or failed with `interrupted` once a step has been interrupted max_interruptions times.
-- Returns how many.
CREATE OR REPLACE FUNCTION flowd_reap_steps(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := flowd_now();
    v_n      integer;
    v_failed jsonb;
    v_run    record;
BEGIN
    IF cardinality(p_ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM runs
      WHERE id IN (SELECT s.run_id FROM steps s WHERE s.id = ANY (p_ids))
      ORDER BY id FOR UPDATE;
    WITH x AS (
        SELECT s.id, coalesce((w.def->'steps'->s.idx->>'max_interruptions')::integer, 5) AS cap
          FROM steps s JOIN runs r ON r.id = s.run_id JOIN workflows w ON w.id = r.workflow_id
         WHERE s.id = ANY (p_ids) AND s.state = 'running'
           FOR UPDATE OF s SKIP LOCKED),
    upd AS (
        UPDATE steps s
           SET state = CASE WHEN s.interruptions + 1 < x.cap THEN 'ready' ELSE 'failed' END,
               attempts = CASE WHEN s.interruptions + 1 < x.cap THEN s.attempts - 1
                               ELSE s.attempts END,
               interruptions = s.interruptions + 1,
               run_at = v_now, lease_owner = NULL, lease_expires_at = NULL,
               error = CASE
                   WHEN s.interruptions + 1 < x.cap THEN
                       jsonb_build_object('code', 'lease_expired', 'attempt', s.attempts,
                                          'interruptions', s.interruptions + 1,
                                          'message', 'the worker running this attempt stopped '
                                                     'or lost its lease; the attempt runs again')
                   ELSE jsonb_build_object('code', 'interrupted', 'attempt', s.attempts,
                                           'interruptions', s.interruptions + 1,
                                           'message', format('step %s was interrupted %s times '
                                               '(its worker stopped or lost its lease each time); '
                                               'giving up', s.key, s.interruptions + 1))
               END,
               finished_at = CASE WHEN s.interruptions + 1 < x.cap THEN NULL ELSE v_now END
          FROM x WHERE s.id = x.id
        RETURNING s.id, s.run_id, s.tenant_id, s.key, s.kind, s.state, s.error),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT upd.run_id, upd.tenant_id, v_now,
               CASE WHEN upd.state = 'failed' THEN 'step.failed' ELSE 'step.interrupted' END,
               upd.key, upd.error FROM upd)
    SELECT count(*),
           jsonb_agg(jsonb_build_object('run', upd.run_id, 'step', upd.key, 'kind', upd.kind,
                                        'error', upd.error))
               FILTER (WHERE upd.state = 'failed')
      INTO v_n, v_failed FROM upd;
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
CREATE FUNCTION flowd_worker_leases(p_owner text, p_lease_ms integer, p_ids bigint[],
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

-- Milliseconds until the earliest ready or waiting step is due (0 when one is due now), or NULL
-- when none is: an idle worker then sleeps until a NOTIFY or the process's tick.
CREATE OR REPLACE FUNCTION flowd_next_due_ms() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT CASE WHEN min(t) IS NOT NULL
                        THEN greatest(0, (extract(epoch FROM (min(t) - flowd_now())) * 1000)::bigint)
                   END
              FROM (SELECT min(run_at) AS t FROM steps WHERE state = 'ready'
                    UNION ALL
                    SELECT min(run_at) FROM steps WHERE state = 'waiting' AND wait_event IS NOT NULL) x);
END $$;

-- The process's maintenance tick, once a second from one worker: reaps lapsed leases (flowd_reap)
-- and wakes the workers with a NOTIFY when a step is due that nobody has claimed (its enqueue's
-- NOTIFY skipped or missed, or its time reached while no worker's timer was set for it; see 0002
-- for why concurrent enqueues send one NOTIFY between them). Returns the number of steps reaped.
CREATE FUNCTION flowd_tick(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := flowd_reap(p_limit);
BEGIN
    IF v_n = 0 AND (EXISTS (SELECT 1 FROM steps WHERE state = 'ready' AND run_at <= flowd_now())
                    OR EXISTS (SELECT 1 FROM steps WHERE state = 'waiting'
                                  AND wait_event IS NOT NULL AND run_at <= flowd_now())) THEN
        PERFORM pg_notify('flowd_ready', 'tick');
    END IF;
    RETURN v_n;
END $$;

-- The run's steps show their interruptions.
CREATE OR REPLACE FUNCTION flowd_run_json(p_tenant bigint, p_run bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
        'id', r.id,
        'workflow', w.name,
        'version', w.version,
        'state', r.state,
        'priority', r.priority,
        'batch', r.batch_id,
        'progress', jsonb_build_object(
            'done', r.steps_done, 'total', r.steps_total,
            'percent', CASE WHEN r.steps_total = 0 THEN 100
                            ELSE floor(100.0 * r.steps_done / r.steps_total)::integer END),
        'phase', st.phase,
        'current_steps', st.current,
        'input', r.input,
        'output', CASE WHEN r.state = 'succeeded' THEN flowd_run_output(r.id) END,
        'error', r.error,
        'created_at', flowd_ms(r.created_at),
        'started_at', flowd_ms(r.started_at),
        'finished_at', flowd_ms(r.finished_at),
        'steps', st.list)
      FROM runs r JOIN workflows w ON w.id = r.workflow_id
      -- one pass over the run's steps for the list, the steps running now and the current phase
      CROSS JOIN LATERAL (
          SELECT jsonb_agg(jsonb_build_object(
                     'key', s.key, 'kind', s.kind, 'state', s.state, 'phase', s.phase,
                     'attempts', s.attempts, 'max_attempts', s.max_attempts,
                     'interruptions', s.interruptions,
                     'run_at', CASE WHEN s.state IN ('ready', 'pending') THEN flowd_ms(s.run_at) END,
                     'started_at', flowd_ms(s.started_at),
                     'finished_at', flowd_ms(s.finished_at),
                     'output', s.output, 'error', s.error)
                     -- fan-out progress of a map step: its children by state
                     || CASE WHEN s.kind = 'map' THEN jsonb_build_object('items', (
                            SELECT jsonb_build_object(
                                'total', count(*),
                                'done', count(*) FILTER (WHERE mi.state IN
                                        ('succeeded', 'failed', 'cancelled')),
                                'succeeded', count(*) FILTER (WHERE mi.state = 'succeeded'),
                                'failed', count(*) FILTER (WHERE mi.state IN
                                          ('failed', 'cancelled')),
                                'running', count(*) FILTER (WHERE mi.state = 'running'))
                              FROM map_items mi WHERE mi.step_id = s.id))
                        ELSE '{}'::jsonb END ORDER BY s.idx) AS list,
                 coalesce(jsonb_agg(s.key ORDER BY s.idx) FILTER (WHERE s.state = 'running'),
                          '[]') AS current,
                 (array_agg(s.phase ORDER BY s.idx)
                      FILTER (WHERE s.state IN ('ready', 'running', 'waiting')
                                AND s.phase IS NOT NULL))[1] AS phase
            FROM steps s WHERE s.run_id = r.id) st
     WHERE r.id = p_run AND r.tenant_id = p_tenant);
END $$;
