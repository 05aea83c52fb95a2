-- Say where a run failed, and let a sequence outlive one bad touch.
--
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
CREATE FUNCTION flowd_on_failure(p_def jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(p_def->>'on_failure',
                    CASE WHEN (p_def->>'continue_on_failure')::boolean THEN 'continue'
                         ELSE 'fail_run' END)
$$;

-- The error of a run that a step failed: the step that failed it last (its policy "fail_run"),
-- with its key, kind, attempt and own error; NULL when no such step is found.
CREATE FUNCTION flowd_step_failure(p_run bigint) RETURNS jsonb
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

-- As in 0002; a step_failed error is replaced by the failed step's own account (flowd_step_failure).
CREATE OR REPLACE FUNCTION flowd_fail_runs(p_runs bigint[], p_error jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_children bigint[];
BEGIN
    WITH f AS (
        UPDATE runs SET state = 'failed', finished_at = v_now,
                        error = CASE WHEN p_error->>'code' = 'step_failed'
                                     THEN coalesce(flowd_step_failure(id), p_error)
                                     ELSE p_error END
         WHERE id = ANY (p_runs) AND state IN ('queued', 'running')
        RETURNING id, tenant_id, error)
    INSERT INTO run_events (run_id, tenant_id, at, type, data)
    SELECT f.id, f.tenant_id, v_now, 'run.failed', f.error FROM f;
    WITH c AS (
        UPDATE steps SET state = 'cancelled', finished_at = v_now
         WHERE run_id = ANY (p_runs) AND state IN ('pending', 'ready', 'waiting')
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

-- As in 0002, with the step's failure policy (flowd_on_failure).
CREATE OR REPLACE FUNCTION flowd_apply(p_owner text, p_results jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := flowd_now();
    v_runs     bigint[];
    v_kinds    text[];     -- the kinds of outcome in this batch
    v_finished bigint[];
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
    WITH r AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(p_results)
            AS x(id bigint, s text, o jsonb, e jsonb, permanent boolean, after_ms bigint,
                 at_ms bigint, sched boolean)),
    fin AS (
        UPDATE steps st
           SET state = CASE WHEN r.s = 'ok' THEN 'succeeded' ELSE 'skipped' END,
               output = coalesce(r.o, '{}'), error = NULL, finished_at = v_now,
               lease_owner = NULL, lease_expires_at = NULL
          FROM r
         WHERE r.s IN ('ok', 'skip') AND st.id = r.id
           AND (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE
        RETURNING st.id, st.run_id, st.tenant_id, st.key, st.state, st.output),
    ev AS (
        INSERT INTO run_events (run_id, tenant_id, at, type, step_key, data)
        SELECT fin.run_id, fin.tenant_id, v_now, 'step.' || fin.state, fin.key,
               CASE WHEN fin.state = 'skipped' THEN fin.output END
          FROM fin)
    SELECT array_agg(fin.id) INTO v_finished FROM fin;

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

    -- what needs a step that failed with "skip_dependents" cannot run: skip it (the steps that need
    -- it too), whatever its other needs; every such step is still pending, as its need had not
    -- finished
    IF v_cut IS NOT NULL THEN
        WITH RECURSIVE t(run_id, idx, cause) AS (
            SELECT s.run_id, d.idx, s.key
              FROM steps s CROSS JOIN LATERAL unnest(s.dependents) AS d(idx)
             WHERE s.id = ANY (v_cut)
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
    END IF;

    IF 'snooze' = ANY (v_kinds) THEN
        WITH r AS MATERIALIZED (
            SELECT * FROM jsonb_to_recordset(p_results) AS x(id bigint, s text, at_ms bigint, sched boolean)
             WHERE x.s = 'snooze')
        UPDATE steps st
           SET state = 'ready', attempts = st.attempts - 1,
               run_at = to_timestamp(r.at_ms / 1000.0), scheduled = coalesce(r.sched, st.scheduled),
               lease_owner = NULL, lease_expires_at = NULL
          FROM r
         WHERE st.id = r.id AND (st.state = 'running' AND st.lease_owner = p_owner) IS TRUE;
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

    IF v_finished IS NOT NULL OR v_went_on IS NOT NULL OR v_cut IS NOT NULL THEN
        PERFORM flowd_finish_steps(coalesce(v_finished, '{}') || coalesce(v_went_on, '{}')
                                   || coalesce(v_cut, '{}') || coalesce(v_skipped, '{}'));
    END IF;
    IF v_failed IS NOT NULL THEN
        PERFORM flowd_fail_runs(v_failed, jsonb_build_object('code', 'step_failed',
                                'message', 'a step failed for good'));
    END IF;
END $$;
