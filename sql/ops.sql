-- sql/ops.sql: What operators watch: the process registry (processes, 0047) that GET /v1/workers
-- reads, and a tenant's queue for GET /v1/queue.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- A process's beat: its row written (a restarted process with the same host and pid takes the
-- row over), and the rows of processes quiet for a day dropped. Real time, not the engine clock a
-- test may move: worker leases run on real time too.
CREATE OR REPLACE FUNCTION flowd_process_beat(p_id text, p_host text, p_pid integer,
                                              p_version text, p_role text, p_listen text,
                                              p_workers integer, p_api_threads integer,
                                              p_beat_ms integer, p_started_ms bigint)
RETURNS void LANGUAGE sql AS $$
    DELETE FROM processes p WHERE p.heartbeat_at < now() - interval '1 day' AND p.id <> p_id;
    INSERT INTO processes AS p (id, host, pid, version, role, listen, workers, api_threads, beat_ms,
                                started_at, heartbeat_at)
    VALUES (p_id, p_host, p_pid, p_version, p_role, p_listen, p_workers, p_api_threads, p_beat_ms,
            to_timestamp(p_started_ms / 1000.0), now())
    ON CONFLICT (id) DO UPDATE
       SET host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,
           role = EXCLUDED.role, listen = EXCLUDED.listen, workers = EXCLUDED.workers,
           api_threads = EXCLUDED.api_threads, beat_ms = EXCLUDED.beat_ms,
           started_at = EXCLUDED.started_at, heartbeat_at = now(), stopped_at = NULL;
    -- the queue's hour needs no more (flowd_queue_json)
    DELETE FROM queue_minutes q WHERE q.minute < flowd_now() - interval '2 hours';
$$;

-- Counts runs that just finished in p_state, one element of p_tenants per run, into
-- queue_minutes (0056) at the minute of flowd_now(), in the row of this server process: no other
-- transaction writes it, so concurrent workers never wait on each other here. Called by the
-- three places runs finish (flowd_steps_finished, flowd_fail_runs, flowd_cancel_runs).
-- (PL/pgSQL: its plan is kept for the session, where an SQL function's would be made per call)
CREATE OR REPLACE FUNCTION flowd_count_run_ends(p_tenants bigint[], p_state text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_minute timestamptz := date_trunc('minute', flowd_now());  -- once, not per run
BEGIN
    INSERT INTO queue_minutes AS q (tenant_id, minute, shard, succeeded, failed, cancelled)
    SELECT t.id, v_minute, pg_backend_pid(),
           CASE WHEN p_state = 'succeeded' THEN t.n ELSE 0 END,
           CASE WHEN p_state = 'failed' THEN t.n ELSE 0 END,
           CASE WHEN p_state = 'cancelled' THEN t.n ELSE 0 END
      FROM (-- a batch of one tenant, the usual case, is counted without a row per run: grouped,
            -- the count cost a one-step run 1.0% more instructions, this way 0.6%
            -- (bench/run instructions)
            SELECT p_tenants[1] AS id, cardinality(p_tenants) AS n
             WHERE p_tenants[1] = ALL (p_tenants)
            UNION ALL
            SELECT u.id, count(*) FROM unnest(p_tenants) AS u(id)
             WHERE p_tenants[1] <> ANY (p_tenants)
             GROUP BY u.id) t
    ON CONFLICT (tenant_id, minute, shard) DO UPDATE
       SET succeeded = q.succeeded + EXCLUDED.succeeded, failed = q.failed + EXCLUDED.failed,
           cancelled = q.cancelled + EXCLUDED.cancelled;
END $$;

CREATE OR REPLACE FUNCTION flowd_process_stopped(p_id text) RETURNS void
LANGUAGE sql AS $$
    UPDATE processes SET stopped_at = now() WHERE id = p_id;
$$;

-- The registry with each worker's lease and steps in flight (steps_running_owner), newest
-- process first. A process is "stopped" when it said so, "missing" once three beats did not come
-- (killed, or cut off from the database), else "up". A worker's lease is "held" (renewed in time),
-- "lapsed" (not renewed while steps run in its name: the reaper hands them back) or "idle" (no
-- step held, so nothing to renew: an idle worker does not renew). NULL unless p_tenant is the
-- operator's "default" tenant: processes are shared by every tenant.
-- jit is off for this and flowd_queue_json: generate_series and the per-worker counts inflate the
-- estimates past jit_above_cost, and compiling took 500 ms of a statement that runs in 1.
CREATE OR REPLACE FUNCTION flowd_workers_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT jsonb_build_object('processes', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'id', p.id, 'host', p.host, 'pid', p.pid, 'version', p.version, 'role', p.role,
                   'listen', p.listen, 'api_threads', p.api_threads,
                   'state', CASE WHEN p.stopped_at IS NOT NULL THEN 'stopped'
                                 WHEN p.heartbeat_at < now() - 3 * p.beat_ms * interval '1 millisecond'
                                 THEN 'missing' ELSE 'up' END,
                   'started_at', flowd_ms(p.started_at), 'heartbeat_at', flowd_ms(p.heartbeat_at),
                   'stopped_at', flowd_ms(p.stopped_at), 'beat_ms', p.beat_ms,
                   'webhooks', p.workers > 0,
                   'steps_in_flight', coalesce((SELECT sum((w->>'steps_in_flight')::bigint)
                                                  FROM jsonb_array_elements(ws.workers) w), 0),
                   'workers', ws.workers)
                   ORDER BY p.started_at DESC, p.id)
          FROM processes p
         CROSS JOIN LATERAL (
               SELECT coalesce(jsonb_agg(jsonb_build_object(
                          'owner', o.owner, 'tick', o.i = 0,
                          'steps_in_flight', f.n,
                          'lease', CASE WHEN l.expires_at > clock_timestamp() THEN 'held'
                                        WHEN f.n > 0 THEN 'lapsed' ELSE 'idle' END,
                          'lease_expires_at', flowd_ms(l.expires_at))
                          ORDER BY o.i), '[]') AS workers
                 FROM (SELECT i, p.id || ':' || i AS owner
                         FROM generate_series(0, p.workers - 1) AS i) o
                 LEFT JOIN worker_leases l ON l.owner = o.owner
                 CROSS JOIN LATERAL (SELECT count(*) AS n FROM steps s
                                      WHERE s.state = 'running' AND s.lease_owner = o.owner) f) ws), '[]'))
      FROM tenants t WHERE t.id = p_tenant AND t.name = 'default'
$$;

-- A tenant's queue: its due steps (ready, their time come) by workflow with the age of the
-- longest-waiting one, steps delayed to later, steps running and steps a quota blocked by
-- workflow, and for each minute of the last hour the runs created in it and the runs that
-- finished in it (however long ago they were created; counted as they finish, queue_minutes).
-- Each part reads a partial index of unfinished steps (steps_claim_tenant, steps_running_owner),
-- quota_blocked_steps, the runs created since the hour's bound (flowd_runs_created_bound, then
-- runs_tenant_recent) or the hour's counts, so the cost follows what is queued and what the hour
-- made, not the size of the tables; the due, delayed and blocked counts stop at
-- 100,001 (a backlog that deep is reported as "at least").
CREATE OR REPLACE FUNCTION flowd_queue_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE SET jit = off AS $$
    WITH now AS (SELECT flowd_now() AS t),
    -- (SELECT ...) of a CTE is read once, and can bound an index scan
    due AS (SELECT s.run_id, s.run_at FROM steps s
             WHERE s.tenant_id = p_tenant AND s.state = 'ready' AND s.run_at <= (SELECT t FROM now)
             LIMIT 100001),
    -- each step's run looked up by id (a join could scan all runs)
    -- steps a quota stopped, found through their own small table (0043)
    blocked AS (SELECT s.run_id FROM quota_blocked_steps q JOIN steps s ON s.id = q.step_id
                 WHERE q.tenant_id = p_tenant AND s.state = 'blocked'
                 LIMIT 100001),
    per_run AS (SELECT (SELECT r.workflow_id FROM runs r WHERE r.id = d.run_id) AS wf,
                       1 AS due, d.run_at AS due_at, 0 AS running, 0 AS blocked
                  FROM due d
                UNION ALL
                SELECT (SELECT r.workflow_id FROM runs r WHERE r.id = s.run_id), 0, NULL, 1, 0
                  FROM steps s WHERE s.state = 'running' AND s.tenant_id = p_tenant
                UNION ALL
                SELECT (SELECT r.workflow_id FROM runs r WHERE r.id = b.run_id), 0, NULL, 0, 1
                  FROM blocked b),
    by_wf AS (SELECT w.name, sum(x.due) AS due, min(x.due_at) AS oldest,
                     sum(x.running) AS running, sum(x.blocked) AS blocked
                FROM per_run x JOIN workflows w ON w.id = x.wf
               GROUP BY w.name),
    delayed AS (SELECT count(*) AS n FROM (
                    SELECT 1 FROM steps s
                     WHERE s.tenant_id = p_tenant AND s.state = 'ready'
                       AND s.run_at > (SELECT t FROM now)
                     LIMIT 100001) x),
    bound AS (SELECT flowd_runs_created_bound(t - interval '1 hour') AS id FROM now),
    hour AS (SELECT r.created_at FROM runs r
              WHERE r.tenant_id = p_tenant AND r.id >= (SELECT id FROM bound)
                AND r.created_at >= (SELECT t FROM now) - interval '1 hour'),
    made AS (SELECT date_trunc('minute', h.created_at) AS m, count(*) AS n FROM hour h GROUP BY 1),
    -- every run that finished in the hour, however old (flowd_count_run_ends)
    ended AS (SELECT q.minute AS m, sum(q.succeeded) AS succeeded, sum(q.failed) AS failed,
                     sum(q.cancelled) AS cancelled
                FROM queue_minutes q
               WHERE q.tenant_id = p_tenant
                 AND q.minute >= date_trunc('minute', (SELECT t FROM now)) - interval '59 minutes'
               GROUP BY 1),
    minutes AS (SELECT m FROM now, generate_series(date_trunc('minute', now.t) - interval '59 minutes',
                                                 date_trunc('minute', now.t), interval '1 minute') m)
    SELECT jsonb_build_object(
        'at', flowd_ms(now.t),
        'due', (SELECT count(*) FROM due),
        'delayed', (SELECT n FROM delayed),
        'running', (SELECT coalesce(sum(running), 0) FROM by_wf),
        'blocked', (SELECT count(*) FROM blocked),
        'oldest_due_age_ms', (SELECT (extract(epoch FROM now.t - min(d.run_at)) * 1000)::bigint
                                FROM due d),
        'workflows', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                   'workflow', b.name, 'due', b.due,
                                   'oldest_due_age_ms',
                                       (extract(epoch FROM now.t - b.oldest) * 1000)::bigint,
                                   'running', b.running, 'blocked', b.blocked)
                                   ORDER BY b.due DESC, b.running DESC, b.name)
                                 FROM by_wf b), '[]'),
        'minutes', (SELECT jsonb_agg(jsonb_build_object(
                        'at', flowd_ms(mi.m), 'created', coalesce(c.n, 0),
                        'succeeded', coalesce(e.succeeded, 0), 'failed', coalesce(e.failed, 0),
                        'cancelled', coalesce(e.cancelled, 0))
                        ORDER BY mi.m)
                      FROM minutes mi LEFT JOIN made c ON c.m = mi.m LEFT JOIN ended e ON e.m = mi.m))
      FROM now
$$;
