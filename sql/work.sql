-- sql/work.sql: The worker's round trip (flowd_work): outcomes applied to steps and runs, failure
-- policies, windows and waits, and the fair claim of the next steps. Runs are always locked in id
-- order before their steps are changed, so concurrent round trips never deadlock on each other.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- Fails the given runs for good: nothing of theirs that has not started will start. A step_failed
-- error is replaced by the failed step's own account (flowd_step_failure).
CREATE OR REPLACE FUNCTION flowd_fail_runs(p_runs bigint[], p_error jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_children bigint[];
    v_tenants  bigint[];
BEGIN
    WITH f AS (
        UPDATE runs SET state = 'failed', finished_at = v_now,
                        error = CASE WHEN p_error->>'code' = 'step_failed'
                                     THEN coalesce(flowd_step_failure(id), p_error)
                                     ELSE p_error END
         WHERE id = ANY (p_runs) AND state IN ('queued', 'running')
        RETURNING id, tenant_id, error),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, data)
        SELECT f.id, f.tenant_id, v_now, 'run.failed', f.error FROM f)
    SELECT array_agg(f.tenant_id) INTO v_tenants FROM f;
    IF v_tenants IS NOT NULL THEN
        PERFORM flowd_count_run_ends(v_tenants, 'failed');
    END IF;
    WITH c AS (
        UPDATE steps SET state = 'cancelled', finished_at = v_now
         WHERE run_id = ANY (p_runs) AND state IN ('pending', 'ready', 'waiting', 'blocked')
        RETURNING run_id, tenant_id, key)
    INSERT INTO run_events (run_id, tenant_id, at, type, step_key)
    SELECT c.run_id, c.tenant_id, v_now, 'step.cancelled', c.key FROM c;
    DELETE FROM run_cancel_on WHERE run_id = ANY (p_runs);
    SELECT array_agg(r.id) INTO v_children FROM runs r
     WHERE r.parent_step_id IN (SELECT s.id FROM steps s WHERE s.run_id = ANY (p_runs))
       AND r.state IN ('queued', 'running');
    IF v_children IS NOT NULL THEN
        PERFORM flowd_cancel_runs(v_children, jsonb_build_object('code', 'parent_failed'));
    END IF;
    PERFORM flowd_map_children_done(p_runs);
END $$;

-- Marks steps finished (succeeded, skipped, or failed with continue_on_failure) and carries the
-- consequences (flowd_steps_finished), for callers that know only the steps' ids.
CREATE OR REPLACE FUNCTION flowd_finish_steps(p_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_parents bigint[];
    v_runs    bigint[];
BEGIN
    SELECT array_agg(s.id) FILTER (WHERE cardinality(s.dependents) > 0), array_agg(s.run_id)
      INTO v_parents, v_runs FROM steps s WHERE s.id = ANY (p_ids);
    PERFORM flowd_steps_finished(v_parents, v_runs);
END $$;

-- The consequences of steps that just finished, given what their caller already holds: p_parents,
-- those of them that have dependents, and p_runs, the run of each of them (one element per step),
-- so that a step nothing depends on is not read again. Dependents whose needs are all met become
-- ready (or skipped, when every need was skipped), and runs whose steps are all finished succeed.
-- Loops because skipping propagates. The runs must already be locked. A run's output is not
-- written: readers gather it (flowd_run_output). A run that succeeds here logs no row: its
-- run.succeeded is read from the run (finish_seq, the view run_log).
CREATE OR REPLACE FUNCTION flowd_steps_finished(p_parents bigint[], p_runs bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_ids  bigint[] := p_parents;
    v_runs bigint[] := p_runs;  -- the run of every step finished here, skipped dependents included
    v_more bigint[];
    v_tenants bigint[];
BEGIN
    WHILE v_ids IS NOT NULL AND cardinality(v_ids) > 0 LOOP
        WITH grouped AS (
            SELECT f.run_id, dep AS didx, count(*) AS n,
                   count(*) FILTER (WHERE f.state = 'skipped') AS nskipped
              FROM steps f CROSS JOIN unnest(f.dependents) AS dep
             WHERE f.id = ANY (v_ids) AND cardinality(f.dependents) > 0
             GROUP BY f.run_id, dep),
        deps AS (
            -- a dependent that becomes ready now and has a window SQL can place is placed in it
            SELECT g.*, CASE WHEN d.send_window IS NOT NULL AND d.needs_left = g.n
                             THEN flowd_window_next(v_now + d.delay_ms * interval '1 millisecond',
                                                    d.send_window) END AS at
              FROM grouped g JOIN steps d ON d.run_id = g.run_id AND d.idx = g.didx),
        upd AS (
            UPDATE steps s
               SET needs_left = s.needs_left - deps.n,
                   needs_skipped = s.needs_skipped + deps.nskipped,
                   state = CASE WHEN s.needs_left - deps.n > 0 THEN 'pending'
                                WHEN s.needs_skipped + deps.nskipped = s.nneeds THEN 'skipped'
                                ELSE 'ready' END,
                   output = CASE WHEN s.needs_left - deps.n = 0
                                  AND s.needs_skipped + deps.nskipped = s.nneeds
                                 THEN '{"reason":"needs skipped"}'::jsonb END,
                   ready_at = CASE WHEN s.needs_left - deps.n = 0 THEN v_now END,
                   finished_at = CASE WHEN s.needs_left - deps.n = 0
                                       AND s.needs_skipped + deps.nskipped = s.nneeds
                                      THEN v_now END,
                   run_at = coalesce(deps.at, v_now + s.delay_ms * interval '1 millisecond'),
                   scheduled = deps.at IS NOT NULL
              FROM deps
             WHERE s.run_id = deps.run_id AND s.idx = deps.didx AND s.state = 'pending'
            RETURNING s.id, s.state, s.run_id, s.tenant_id, s.key, s.run_at, s.scheduled,
                      s.delay_ms, s.send_window, s.dependents, s.output),
        pushed AS (
            -- dependents their window moved past their natural start get a step.scheduled event
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT upd.run_id, upd.tenant_id, v_now, 'step.scheduled', upd.key,
                   jsonb_build_object('run_at', flowd_ms(upd.run_at), 'tz', upd.send_window->>'tz')
              FROM upd
             WHERE upd.scheduled AND upd.run_at > v_now + upd.delay_ms * interval '1 millisecond'),
        skipped AS (
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT upd.run_id, upd.tenant_id, v_now, 'step.skipped', upd.key, upd.output
              FROM upd WHERE upd.state = 'skipped')
        SELECT array_agg(upd.id) FILTER (WHERE upd.state = 'skipped'
                                           AND cardinality(upd.dependents) > 0),
               array_agg(upd.run_id) FILTER (WHERE upd.state = 'skipped')
          INTO v_ids, v_more FROM upd;
        v_runs := v_runs || v_more;
    END LOOP;

    -- progress and completion of the runs involved: each step finishes exactly once, so the
    -- count moves by what finished here
    WITH counts AS (
        SELECT c.run_id, count(*) AS n FROM unnest(v_runs) AS c(run_id) GROUP BY c.run_id),
    upd AS (
        UPDATE runs r
           SET steps_done = r.steps_done + c.n,
               state = CASE WHEN r.steps_done + c.n >= r.steps_total
                             AND r.state IN ('queued', 'running') THEN 'succeeded' ELSE r.state END,
               finished_at = CASE WHEN r.steps_done + c.n >= r.steps_total
                                   AND r.state IN ('queued', 'running') THEN v_now
                                  ELSE r.finished_at END,
               finish_seq = CASE WHEN r.steps_done + c.n >= r.steps_total
                                  AND r.state IN ('queued', 'running')
                                 THEN nextval('run_events_id_seq') ELSE r.finish_seq END
          FROM counts c
         WHERE r.id = c.run_id
        RETURNING r.id, r.tenant_id, r.state, r.finished_at)
    SELECT array_agg(upd.id) FILTER (WHERE upd.state = 'succeeded' AND upd.finished_at = v_now),
           array_agg(upd.tenant_id) FILTER (WHERE upd.state = 'succeeded'
                                              AND upd.finished_at = v_now)
      INTO v_ids, v_tenants FROM upd;
    IF v_ids IS NOT NULL THEN
        PERFORM flowd_count_run_ends(v_tenants, 'succeeded');
        DELETE FROM run_cancel_on WHERE run_id = ANY (v_ids);
        PERFORM flowd_map_children_done(v_ids);
    END IF;
END $$;

-- Applies a batch of attempt outcomes reported by one worker (their format:
-- docs/internals/outcomes.md). p_results is a JSON array of objects with the step's "id" and its
-- run "r", and
--   {"id": step, "s": "ok", "o": output}
--   {"id": step, "s": "skip", "o": {"reason": ...}}                 (condition false, suppressed)
--   {"id": step, "s": "fail", "e": {"code", "message"}, "permanent": bool, "after_ms": n}
--   {"id": step, "s": "snooze", "at_ms": epoch ms, "sched": bool}  (durable timers, `at`)
--   {"id": step, "s": "snooze", "at_ms": epoch ms, "rate_limit": name}  (no budget: step.rate_limited)
--   {"id": step, "s": "window", "after_ms", "tz", "start_min", "end_min", "days"}  (sending hours)
--   {"id": step, "s": "wait", "event", "key", "until_ms"}           (wait_event)
--   {"id": step, "s": "map", "workflow" | "def"+"digest", "inputs", "concurrency", "allow_failures"}
-- Outcomes of steps this owner no longer holds (lease lost, run cancelled) are ignored. A final
-- failure does what the step's failure policy says (flowd_on_failure).
CREATE OR REPLACE FUNCTION flowd_apply(p_owner text, p_results jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_runs     bigint[];
    v_kinds    text[];     -- the kinds of outcome in this batch
    v_finished bigint[];
    v_fin_parents bigint[]; -- those of v_finished that have dependents
    v_fin_runs bigint[];   -- the run of each of v_finished
    v_failed   bigint[];
    v_went_on  bigint[];   -- failed for good, on_failure "continue": dependents go on
    v_cut      bigint[];   -- failed for good, on_failure "skip_dependents"
    v_skipped  bigint[];   -- the pending steps that need a v_cut step (transitively)
BEGIN
    IF p_results IS NULL OR jsonb_array_length(p_results) = 0 THEN
        RETURN;
    END IF;
    -- workers report each step's run ("r"), so the runs are locked (in id order) without a lookup
    SELECT array_agg(DISTINCT (x->>'r')::bigint), array_agg(DISTINCT x->>'s')
      INTO v_runs, v_kinds FROM jsonb_array_elements(p_results) x;
    PERFORM 1 FROM runs WHERE id = ANY (v_runs) ORDER BY id FOR UPDATE;

    -- "(...) IS TRUE" keeps the planner from driving these updates through the partial index on
    -- running steps (it would re-scan the whole batch per row); the primary key drives them.
    -- Their step.succeeded / step.skipped is read from the step (finish_seq, the view run_log).
    WITH r AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(p_results)
            AS x(id bigint, s text, o jsonb, e jsonb, permanent boolean, after_ms bigint,
                 at_ms bigint, sched boolean)),
    fin AS (
        UPDATE steps st
           SET state = CASE WHEN r.s = 'ok' THEN 'succeeded' ELSE 'skipped' END,
               output = coalesce(r.o, '{}'), error = NULL, finished_at = v_now,
               finish_seq = nextval('run_events_id_seq'),
               lease_owner = NULL, lease_expires_at = NULL
          FROM r
         WHERE r.s IN ('ok', 'skip') AND st.id = r.id
           AND (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE
        RETURNING st.id, st.run_id, st.dependents)
    SELECT array_agg(fin.id), array_agg(fin.id) FILTER (WHERE cardinality(fin.dependents) > 0),
           array_agg(fin.run_id)
      INTO v_finished, v_fin_parents, v_fin_runs FROM fin;

    -- each kind of outcome costs a pass over the batch only when the batch has it
    IF 'fail' = ANY (v_kinds) THEN
        WITH r AS MATERIALIZED (
            SELECT * FROM jsonb_to_recordset(p_results)
                AS x(id bigint, s text, e jsonb, permanent boolean, after_ms bigint)
             WHERE x.s = 'fail'),
        cur AS (
            SELECT st.id, w.def->'steps'->st.idx AS d, st.attempts, st.max_attempts,
                   r.e, coalesce(r.permanent, false) AS permanent, coalesce(r.after_ms, 0) AS after_ms,
                   flowd_on_failure(w.def->'steps'->st.idx) AS policy
              FROM r JOIN steps st ON st.id = r.id
              JOIN runs ru ON ru.id = st.run_id JOIN workflows w ON w.id = ru.workflow_id
             WHERE (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE),
        upd AS (
            UPDATE steps st
               SET state = CASE WHEN NOT cur.permanent AND cur.attempts < cur.max_attempts
                                THEN 'ready' ELSE 'failed' END,
                   error = cur.e || jsonb_build_object('attempt', cur.attempts),
                   run_at = v_now + greatest(
                       cur.after_ms,
                       least((cur.d->>'backoff_max_ms')::double precision,
                             (cur.d->>'backoff_initial_ms')::double precision
                             * power((cur.d->>'backoff_multiplier')::double precision, cur.attempts - 1))
                       * (1 + (cur.d->>'jitter')::double precision * (2 * random() - 1))
                   ) * interval '1 millisecond',
                   finished_at = CASE WHEN NOT cur.permanent AND cur.attempts < cur.max_attempts
                                      THEN NULL ELSE v_now END,
                   -- a step that may fail without failing its run exposes the error as its output
                   output = CASE WHEN cur.policy <> 'fail_run'
                                 THEN jsonb_build_object('error', cur.e) END,
                   lease_owner = NULL, lease_expires_at = NULL
              FROM cur WHERE st.id = cur.id
            RETURNING st.id, st.run_id, st.tenant_id, st.key, st.state, st.error, st.run_at,
                      cur.policy),
        ev AS (
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            SELECT upd.run_id, upd.tenant_id, v_now,
                   CASE WHEN upd.state = 'failed' THEN 'step.failed' ELSE 'step.retrying' END,
                   upd.key,
                   CASE WHEN upd.state = 'failed' THEN upd.error
                        ELSE upd.error || jsonb_build_object('retry_at', upd.run_at) END
              FROM upd)
        SELECT array_agg(DISTINCT upd.run_id)
                   FILTER (WHERE upd.state = 'failed' AND upd.policy = 'fail_run'),
               array_agg(upd.id) FILTER (WHERE upd.state = 'failed' AND upd.policy = 'continue'),
               array_agg(upd.id) FILTER (WHERE upd.state = 'failed' AND upd.policy = 'skip_dependents')
          INTO v_failed, v_went_on, v_cut FROM upd;
    END IF;

    v_skipped := flowd_skip_dependents(v_cut);

    IF 'snooze' = ANY (v_kinds) THEN
        WITH r AS MATERIALIZED (
            SELECT * FROM jsonb_to_recordset(p_results)
                AS x(id bigint, s text, at_ms bigint, sched boolean, rate_limit text)
             WHERE x.s = 'snooze'),
        u AS (
            UPDATE steps st
               SET state = 'ready', attempts = st.attempts - 1,
                   run_at = to_timestamp(r.at_ms / 1000.0), scheduled = coalesce(r.sched, st.scheduled),
                   lease_owner = NULL, lease_expires_at = NULL
              FROM r
             WHERE st.id = r.id AND (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE
            RETURNING st.run_id, st.tenant_id, st.key, st.run_at, r.rate_limit)
        -- a step its rate limit held back says so: nothing else tells that wait from the queue
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT u.run_id, u.tenant_id, v_now, 'step.rate_limited', u.key,
               jsonb_build_object('rate_limit', u.rate_limit, 'run_at', flowd_ms(u.run_at))
          FROM u WHERE u.rate_limit IS NOT NULL;
    END IF;

    IF 'window' = ANY (v_kinds) THEN
        PERFORM flowd_window_steps(p_owner, p_results);
    END IF;
    IF 'wait' = ANY (v_kinds) THEN
        PERFORM flowd_wait_steps(p_owner, p_results);
    END IF;
    IF 'map' = ANY (v_kinds) THEN
        PERFORM flowd_map_start(p_owner, x) FROM jsonb_array_elements(p_results) AS x
          WHERE x->>'s' = 'map';
    END IF;

    IF v_went_on IS NOT NULL OR v_cut IS NOT NULL THEN
        PERFORM flowd_finish_steps(coalesce(v_finished, '{}') || coalesce(v_went_on, '{}')
                                   || coalesce(v_cut, '{}') || coalesce(v_skipped, '{}'));
    ELSIF v_finished IS NOT NULL THEN
        -- the usual batch: what the update above returned is all the consequences need
        PERFORM flowd_steps_finished(v_fin_parents, v_fin_runs);
    END IF;
    IF v_failed IS NOT NULL THEN
        PERFORM flowd_fail_runs(v_failed, jsonb_build_object('code', 'step_failed',
                                'message', 'a step failed for good'));
    END IF;
END $$;

-- Skips what needs a step that failed for good with on_failure "skip_dependents" (p_cut), and
-- what needs those, transitively, whatever their other needs; every such step is still pending, as
-- its need had not finished. Returns the skipped steps (NULL: none), which the caller finishes
-- with the failed ones (flowd_finish_steps). The runs must already be locked.
CREATE OR REPLACE FUNCTION flowd_skip_dependents(p_cut bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := flowd_now();
    v_skipped bigint[];
BEGIN
    IF p_cut IS NULL THEN
        RETURN NULL;
    END IF;
    WITH RECURSIVE t(run_id, idx, cause) AS (
        SELECT s.run_id, d.idx, s.key
          FROM steps s CROSS JOIN LATERAL unnest(s.dependents) AS d(idx)
         WHERE s.id = ANY (p_cut)
        UNION
        SELECT s.run_id, d.idx, t.cause
          FROM t JOIN steps s ON s.run_id = t.run_id AND s.idx = t.idx
         CROSS JOIN LATERAL unnest(s.dependents) AS d(idx)),
    one AS (
        SELECT DISTINCT ON (t.run_id, t.idx) t.run_id, t.idx, t.cause FROM t
         ORDER BY t.run_id, t.idx, t.cause),
    upd AS (
        UPDATE steps s
           SET state = 'skipped', finished_at = v_now,
               output = jsonb_build_object('reason', 'needs failed', 'step', one.cause)
          FROM one
         WHERE s.run_id = one.run_id AND s.idx = one.idx AND s.state = 'pending'
        RETURNING s.id, s.run_id, s.tenant_id, s.key, s.output),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT upd.run_id, upd.tenant_id, v_now, 'step.skipped', upd.key, upd.output FROM upd)
    SELECT array_agg(upd.id) INTO v_skipped FROM upd;
    RETURN v_skipped;
END $$;

-- Carries on after steps of locked runs failed for good with a policy other than "fail_run":
-- "continue" (p_went_on) lets their dependents run, "skip_dependents" (p_cut) skips what needs
-- them. For the failures outside flowd_apply (the reaper's, a window's, a map's).
CREATE OR REPLACE FUNCTION flowd_failed_steps_go_on(p_went_on bigint[], p_cut bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_went_on IS NOT NULL OR p_cut IS NOT NULL THEN
        PERFORM flowd_finish_steps(coalesce(p_went_on, '{}') || coalesce(p_cut, '{}')
                                   || coalesce(flowd_skip_dependents(p_cut), '{}'));
    END IF;
END $$;

-- Fails one running (or waiting) step of p_owner for good, then applies its failure policy:
-- its run fails ("fail_run"), or the run goes on (flowd_failed_steps_go_on).
CREATE OR REPLACE FUNCTION flowd_fail_step(p_owner text, p_step bigint, p_error jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_run    bigint;
    v_policy text;
BEGIN
    SELECT flowd_on_failure(w.def->'steps'->s.idx) INTO v_policy
      FROM steps s JOIN runs r ON r.id = s.run_id JOIN workflows w ON w.id = r.workflow_id
     WHERE s.id = p_step;
    UPDATE steps SET state = 'failed', error = p_error, finished_at = flowd_now(),
                     lease_owner = NULL, lease_expires_at = NULL,
                     output = CASE WHEN v_policy <> 'fail_run'
                                   THEN jsonb_build_object('error', p_error) END
     WHERE id = p_step AND state IN ('running', 'waiting')
       AND (p_owner IS NULL OR lease_owner = p_owner)
    RETURNING run_id INTO v_run;
    IF v_run IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
    SELECT s.run_id, s.tenant_id, flowd_now(), 'step.failed', s.key, p_error FROM steps s WHERE s.id = p_step;
    IF v_policy = 'fail_run' THEN
        PERFORM flowd_fail_runs(ARRAY[v_run], jsonb_build_object('code', 'step_failed',
                                'message', 'a step failed for good'));
    ELSE
        PERFORM 1 FROM runs WHERE id = v_run FOR UPDATE;
        PERFORM flowd_failed_steps_go_on(CASE WHEN v_policy = 'continue' THEN ARRAY[p_step] END,
                                         CASE WHEN v_policy = 'skip_dependents' THEN ARRAY[p_step] END);
    END IF;
END $$;

-- Window outcomes: put each step back to sleep until its window opens (attempt not counted).
CREATE OR REPLACE FUNCTION flowd_window_steps(p_owner text, p_results jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r   record;
    v_t timestamptz;
BEGIN
    FOR r IN SELECT * FROM jsonb_to_recordset(p_results)
                 AS x(id bigint, s text, after_ms bigint, tz text, start_min integer,
                      end_min integer, days integer[])
              WHERE x.s = 'window' LOOP
        BEGIN
            v_t := flowd_window_next(to_timestamp(r.after_ms / 1000.0), jsonb_build_object(
                                     'tz', r.tz, 'start_min', r.start_min, 'end_min', r.end_min,
                                     'days', to_jsonb(r.days)));
        EXCEPTION WHEN others THEN
            PERFORM flowd_fail_step(p_owner, r.id, jsonb_build_object('code', 'window',
                                    'message', SQLERRM, 'field', '/window/tz'));
            CONTINUE;
        END;
        IF v_t IS NULL THEN
            PERFORM flowd_fail_step(p_owner, r.id, jsonb_build_object('code', 'window',
                                    'message', 'the window never opens'));
            CONTINUE;
        END IF;
        WITH u AS (
            UPDATE steps SET state = 'ready', attempts = attempts - 1, run_at = v_t, scheduled = true,
                             send_window = jsonb_build_object('tz', r.tz, 'start_min', r.start_min,
                                                              'end_min', r.end_min,
                                                              'days', to_jsonb(r.days)),
                             lease_owner = NULL, lease_expires_at = NULL
             WHERE id = r.id AND state = 'running' AND lease_owner = p_owner
            RETURNING run_id, tenant_id, key)
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT u.run_id, u.tenant_id, flowd_now(), 'step.scheduled', u.key,
               jsonb_build_object('run_at', flowd_ms(v_t), 'tz', r.tz) FROM u;
    END LOOP;
END $$;

-- Wait outcomes: finish at once with an event that already arrived for this run, else sleep in
-- 'waiting' until the event or the timeout (run_at).
CREATE OR REPLACE FUNCTION flowd_wait_steps(p_owner text, p_results jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r      record;
    v_step record;
    v_data jsonb;
    v_now  timestamptz := flowd_now();
    v_fin  bigint[] := '{}';
BEGIN
    FOR r IN SELECT * FROM jsonb_to_recordset(p_results)
                 AS x(id bigint, s text, event text, key text, until_ms bigint)
              WHERE x.s = 'wait' LOOP
        SELECT st.id, st.run_id, st.tenant_id, st.key, ru.created_at INTO v_step
          FROM steps st JOIN runs ru ON ru.id = st.run_id
         WHERE st.id = r.id AND st.state = 'running' AND st.lease_owner = p_owner;
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        SELECT e.data INTO v_data FROM events e
         WHERE e.tenant_id = v_step.tenant_id AND e.name = r.event AND e.key = r.key
           AND e.received_at >= v_step.created_at
         ORDER BY e.id LIMIT 1;
        IF FOUND THEN
            UPDATE steps SET state = 'succeeded', output = v_data, finished_at = v_now,
                             lease_owner = NULL, lease_expires_at = NULL
             WHERE id = r.id;
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key)
            VALUES (v_step.run_id, v_step.tenant_id, v_now, 'step.succeeded', v_step.key);
            v_fin := v_fin || r.id;
        ELSE
            UPDATE steps SET state = 'waiting', wait_event = r.event, wait_key = r.key,
                             run_at = CASE WHEN r.until_ms IS NULL THEN 'infinity'
                                           ELSE to_timestamp(r.until_ms / 1000.0) END,
                             lease_owner = NULL, lease_expires_at = NULL
             WHERE id = r.id;
            INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
            VALUES (v_step.run_id, v_step.tenant_id, v_now, 'step.waiting', v_step.key,
                    jsonb_build_object('event', r.event, 'key', r.key));
        END IF;
    END LOOP;
    IF cardinality(v_fin) > 0 THEN
        PERFORM flowd_finish_steps(v_fin);
    END IF;
END $$;

-- Claims up to p_want due steps for p_owner, choosing fairly between tenants and oldest first
-- within priority, skipping rows other claimers hold. A claim updates and answers in one
-- statement: what a worker needs to run each step (flowd_work_item). Its step.started and
-- run.started are read from the rows (start_seq, the view run_log), not logged. Steps of the kinds
-- in p_pure are only locked, not written: their row says pure, and the worker computes them inside
-- this transaction and reports them with flowd_finish_pure before it commits (a transaction that
-- does not commit leaves them ready, as they were).
CREATE OR REPLACE FUNCTION flowd_claim_work(p_owner text, p_want integer, p_lease_ms integer,
                                            p_pure text[])
RETURNS SETOF flowd_work_item
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := flowd_now();
    v_pure text[] := coalesce(p_pure, '{}');
    v_caps jsonb;        -- {tenant: steps it may still start} for tenants with max_running
    v_ids  bigint[];
    v_runs bigint[];     -- the run of each of v_ids
    v_again bigint[];    -- those of v_ids that started before (their start is read from the row)
    v_held bigint[];     -- the runs of v_ids this claim holds
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
        SELECT array_agg(c.id), array_agg(c.run_id),
               array_agg(c.id) FILTER (WHERE c.start_seq IS NOT NULL)
          INTO v_ids, v_runs, v_again FROM (
            SELECT s.id, s.run_id, s.start_seq FROM steps s
             WHERE s.tenant_id = v_tenants[1] AND s.state = 'ready' AND s.run_at <= v_now
               AND (s.ckey IS NULL OR NOT EXISTS (
                        SELECT 1 FROM steps o
                         WHERE o.tenant_id = s.tenant_id AND o.ckey = s.ckey AND o.id <> s.id
                           AND o.state IN ('pending', 'ready', 'running', 'waiting', 'blocked')
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
            SELECT c.id, c.run_id, c.start_seq, c.priority, c.run_at,
                   row_number() OVER (PARTITION BY t.tenant_id
                                      ORDER BY c.priority DESC, c.run_at, c.id) AS rn
              FROM unnest(v_tenants) AS t(tenant_id) CROSS JOIN LATERAL (
                SELECT s.id, s.run_id, s.start_seq, s.priority, s.run_at FROM steps s
                 WHERE s.tenant_id = t.tenant_id AND s.state = 'ready' AND s.run_at <= v_now
                   AND (s.ckey IS NULL OR NOT EXISTS (
                            SELECT 1 FROM steps o
                             WHERE o.tenant_id = s.tenant_id AND o.ckey = s.ckey AND o.id <> s.id
                               AND o.state IN ('pending', 'ready', 'running', 'waiting', 'blocked')
                               AND (o.id < s.id OR o.state = 'running')))
                 ORDER BY s.priority DESC, s.run_at, s.id
                 LIMIT least(v_share, coalesce((v_caps->>(t.tenant_id::text))::integer, v_share))
                   FOR UPDATE SKIP LOCKED) c)
        SELECT array_agg(x.id), array_agg(x.run_id),
               array_agg(x.id) FILTER (WHERE x.start_seq IS NOT NULL)
          INTO v_ids, v_runs, v_again FROM (
            SELECT c0.id, c0.run_id, c0.start_seq FROM c0
             ORDER BY c0.rn, c0.priority DESC, c0.run_at, c0.id
             LIMIT p_want) x;
    END IF;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;

    -- Events of a run take their positions in its log only in transactions that hold the run (as
    -- every other writer of the log does), so positions commit in order and a reader's cursor never
    -- passes one still to come. A step whose run another transaction holds (finishing a step of
    -- it, say) is left for a later claim.
    SELECT array_agg(x.id) INTO v_held FROM (
        SELECT r.id FROM runs r WHERE r.id = ANY (v_runs) ORDER BY r.id FOR UPDATE SKIP LOCKED) x;
    IF v_held IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(v_held) < (SELECT count(DISTINCT x.run) FROM unnest(v_runs) AS x(run)) THEN
        SELECT array_agg(x.id), array_agg(x.run), array_agg(x.id) FILTER (WHERE x.id = ANY (v_again))
          INTO v_ids, v_runs, v_again
          FROM unnest(v_ids, v_runs) AS x(id, run) WHERE x.run = ANY (v_held);
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
            SELECT array_agg(s.run_id), array_agg(s.id) FILTER (WHERE s.start_seq IS NOT NULL)
              INTO v_runs, v_again FROM steps s WHERE s.id = ANY (v_ids);
        END IF;
    END IF;

    -- A step's row holds the start of its latest attempt only: the start of the one before goes
    -- to the log, under the position readers already know it by.
    IF v_again IS NOT NULL THEN
        INSERT INTO run_events (id, run_id, tenant_id, at, type, step_key, data)
        OVERRIDING SYSTEM VALUE
        SELECT s.start_seq, s.run_id, s.tenant_id, s.started_at, 'step.started', s.key,
               jsonb_build_object('attempt', s.start_attempt)
          FROM steps s WHERE s.id = ANY (v_again);
    END IF;

    -- Runs start before their steps, so run.started comes first in the log (run_log reads both
    -- events from the rows).
    UPDATE runs r SET state = 'running', started_at = v_now, start_seq = nextval('run_events_id_seq')
     WHERE r.id = ANY (v_runs) AND r.state = 'queued';

    -- Claim and answer in one statement: the answer comes from the update's RETURNING instead of
    -- reading every claimed step again. Pure steps are answered as they are, with the attempt
    -- they will count; flowd_finish_pure writes their start with their outcome.
    RETURN QUERY
    WITH u AS (
        UPDATE steps s
           SET state = 'running', attempts = s.attempts + 1, lease_owner = p_owner,
               lease_expires_at = now() + p_lease_ms * interval '1 millisecond', started_at = v_now,
               start_seq = nextval('run_events_id_seq'), start_attempt = s.attempts + 1
         WHERE s.id = ANY (v_ids) AND s.kind <> ALL (v_pure)
        RETURNING s.id, s.run_id, s.tenant_id, s.idx, s.key, s.kind, s.attempts, s.ready_at,
                  s.scheduled),
    a AS (
        SELECT u.*, false AS pure FROM u
        UNION ALL
        SELECT s.id, s.run_id, s.tenant_id, s.idx, s.key, s.kind, s.attempts + 1, s.ready_at,
               s.scheduled, true
          FROM steps s WHERE s.id = ANY (v_ids) AND s.kind = ANY (v_pure))
    SELECT a.id, a.run_id, a.tenant_id, a.key, a.kind, a.attempts,
           (extract(epoch FROM coalesce(a.ready_at, v_now)) * 1000)::bigint,
           (extract(epoch FROM v_now) * 1000)::bigint,
           a.scheduled, ru.workflow_id, a.idx,
           CASE WHEN row_number() OVER (PARTITION BY ru.workflow_id, a.idx ORDER BY a.id) = 1
                THEN sd.d END,
           ru.input, w.name,
           CASE WHEN jsonb_array_length(sd.d->'deps') > 0 THEN (
               SELECT coalesce(jsonb_object_agg(d.key, jsonb_build_object('output', d.output)), '{}')
                 FROM steps d
                WHERE d.run_id = a.run_id AND d.state IN ('succeeded', 'failed')
                  AND d.key IN (SELECT jsonb_array_elements_text(sd.d->'deps'))) END,
           a.pure
      FROM a JOIN runs ru ON ru.id = a.run_id JOIN workflows w ON w.id = ru.workflow_id
      CROSS JOIN LATERAL (SELECT w.def->'steps'->a.idx AS d) sd
     ORDER BY a.id;
END $$;

-- The worker's round trip: applies the outcomes it reports (flowd_apply), expires waits, makes
-- sure its worker holds a lease before a step runs in its name (the row may be new, or gone after
-- a long stall; it is extended when less than half is left), and claims up to p_want steps
-- (flowd_claim_work), those of the kinds in p_pure only locked. The answer's rows:
-- docs/internals/claim-row.md.
CREATE OR REPLACE FUNCTION flowd_work(p_owner text, p_results jsonb, p_want integer, p_lease_ms integer,
                                      p_pure text[])
RETURNS SETOF flowd_work_item
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flowd_apply(p_owner, p_results);
    PERFORM flowd_expire_waits(100);
    IF p_want > 0 AND p_pure IS NOT NULL THEN
        -- the worker keeps this transaction open while it computes the pure steps: one cut off
        -- from the server meanwhile must not hold their rows for longer than a lease
        PERFORM set_config('idle_in_transaction_session_timeout', p_lease_ms::text, true);
    END IF;
    IF p_want > 0 THEN
        INSERT INTO worker_leases AS w (owner, expires_at)
        VALUES (p_owner, clock_timestamp() + p_lease_ms * interval '1 millisecond')
        ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at
         WHERE w.expires_at < clock_timestamp() + p_lease_ms * interval '1 millisecond' / 2;
        RETURN QUERY SELECT * FROM flowd_claim_work(p_owner, p_want, p_lease_ms, p_pure);
    END IF;
END $$;

-- Finishes the pure steps this transaction's claim locked (flowd_claim_work, p_pure), with the
-- outcomes the worker computed for them (p_results, as for flowd_apply), before the transaction
-- commits: a step that succeeds or is skipped is written once, from ready to finished, with its
-- attempt counted and its start and outcome placed in the log (start_seq, finish_seq: the view
-- run_log); any other outcome (a failure, a window, a snooze) first takes the claim's running
-- write and then goes the usual way (flowd_apply). Only rows this transaction holds are changed:
-- the claim locked the steps, and the runs of the steps it chose.
CREATE OR REPLACE FUNCTION flowd_finish_pure(p_owner text, p_results jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_other    jsonb;      -- the outcomes that take the usual way
    v_finished bigint[];
    v_fin_parents bigint[];
    v_fin_runs bigint[];
BEGIN
    IF p_results IS NULL OR jsonb_array_length(p_results) = 0 THEN
        RETURN;
    END IF;
    -- the row lock this transaction's claim took is what says the step is still ours: its xmax;
    -- the start takes its position before the outcome
    WITH r AS MATERIALIZED (
        SELECT x.*, nextval('run_events_id_seq') AS start_seq
          FROM jsonb_to_recordset(p_results) AS x(id bigint, s text, o jsonb)
         WHERE x.s IN ('ok', 'skip')),
    fin AS (
        UPDATE steps st
           SET state = CASE WHEN r.s = 'ok' THEN 'succeeded' ELSE 'skipped' END,
               output = coalesce(r.o, '{}'), error = NULL, attempts = st.attempts + 1,
               started_at = v_now, finished_at = v_now, start_seq = r.start_seq,
               start_attempt = st.attempts + 1, finish_seq = nextval('run_events_id_seq')
          FROM r
         WHERE st.id = r.id
           AND (st.state = 'ready' AND st.xmax = pg_current_xact_id()::xid) IS TRUE
        RETURNING st.id, st.run_id, st.dependents)
    SELECT array_agg(fin.id), array_agg(fin.id) FILTER (WHERE cardinality(fin.dependents) > 0),
           array_agg(fin.run_id)
      INTO v_finished, v_fin_parents, v_fin_runs FROM fin;
    IF v_finished IS NOT NULL THEN
        PERFORM flowd_steps_finished(v_fin_parents, v_fin_runs);
    END IF;

    SELECT jsonb_agg(x) INTO v_other FROM jsonb_array_elements(p_results) x
     WHERE x->>'s' NOT IN ('ok', 'skip');
    IF v_other IS NOT NULL THEN
        UPDATE steps st
           SET state = 'running', attempts = st.attempts + 1, lease_owner = p_owner,
               lease_expires_at = now(), started_at = v_now,
               start_seq = nextval('run_events_id_seq'), start_attempt = st.attempts + 1
         WHERE st.id IN (SELECT (x->>'id')::bigint FROM jsonb_array_elements(v_other) x)
           AND (st.state = 'ready' AND st.xmax = pg_current_xact_id()::xid) IS TRUE;
        PERFORM flowd_apply(p_owner, v_other);
    END IF;
END $$;

-- A run that fails because a step failed for good carried {"code": "step_failed", "message": "a
-- step failed for good"}, so a batch of 1,000 runs needed 1,000 reads to learn what failed. Its
-- error now names the step, its kind, the attempt and the step's own error.
--
-- A step's failure policy (the definition's "on_failure", with the older "continue_on_failure"
-- read as "continue"): "fail_run" (the default) fails the run and cancels what has not started,
-- "continue" lets its dependents run with {"error": ...} as its output, "skip_dependents" skips
-- what needs it (transitively) while the rest of the run goes on.

-- The failure policy of a normalized step; definitions stored before on_failure existed say
-- continue_on_failure.
CREATE OR REPLACE FUNCTION flowd_on_failure(p_def jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(p_def->>'on_failure',
                    CASE WHEN (p_def->>'continue_on_failure')::boolean THEN 'continue'
                         ELSE 'fail_run' END)
$$;

-- The error of a run that a step failed: the step that failed it last (its policy "fail_run"),
-- with its key, kind, attempt and own error; NULL when no such step is found.
CREATE OR REPLACE FUNCTION flowd_step_failure(p_run bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
               'code', 'step_failed',
               'message', format('step "%s" (%s) failed for good on attempt %s: %s%s',
                                 s.key, s.kind, coalesce(s.error->>'attempt', s.attempts::text),
                                 coalesce(s.error->>'code', 'error'),
                                 ': ' || (s.error->>'message')),
               'step', s.key,
               'kind', s.kind,
               'attempt', coalesce((s.error->>'attempt')::integer, s.attempts),
               'step_error', jsonb_build_object('code', s.error->'code',
                                                'message', s.error->'message'))
      FROM steps s JOIN runs r ON r.id = s.run_id JOIN workflows w ON w.id = r.workflow_id
     WHERE s.run_id = p_run AND s.state = 'failed'
       AND flowd_on_failure(w.def->'steps'->s.idx) = 'fail_run'
     ORDER BY s.finished_at DESC, s.idx
     LIMIT 1
$$;
