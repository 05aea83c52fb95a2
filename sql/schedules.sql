-- sql/schedules.sql: Schedules (the table is in migrations/0034_schedules.sql): what the API
-- reads and writes, and the engine's fire passes (engine/scheduler.c). The ticks themselves are
-- computed in C (engine/schedule.h, ICU for the zones); SQL stores the next one and moves a
-- schedule to it in the same transaction that creates the tick's runs.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md).

-- A schedule as the API shows it. Its definition members are also what engine/schedule.h parses.
CREATE OR REPLACE FUNCTION flowd_schedule_json(s schedules) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'name', s.name, 'workflow', s.workflow, 'version', s.version, 'cron', s.cron,
        'every', s.every, 'tz', s.tz, 'input', s.input, 'overlap', s.overlap,
        'catchup', s.catchup, 'catchup_window', s.catchup_window, 'jitter', s.jitter,
        'start_at', flowd_ms(s.start_at), 'end_at', flowd_ms(s.end_at), 'paused', s.paused,
        'next_fire', flowd_ms(s.next_fire), 'last_fire', flowd_ms(s.last_fire),
        'last_run', (SELECT jsonb_build_object('id', r.id,
                                               'state', flowd_run_state(r.state, r.start_at))
                       FROM runs r WHERE r.id = s.last_run_id AND r.tenant_id = s.tenant_id),
        'fires', s.fires, 'skips', s.skips, 'last_skip', s.last_skip,
        'created_at', flowd_ms(s.created_at), 'updated_at', flowd_ms(s.updated_at))
$$;

-- The input check of the version a run of (workflow, version or the latest) would get:
-- (found, version, input_check); found is false when there is no such workflow.
CREATE OR REPLACE FUNCTION flowd_schedule_workflow(p_tenant bigint, p_workflow text, p_version integer,
                                        OUT found boolean, OUT version integer,
                                        OUT input_check jsonb)
LANGUAGE sql STABLE AS $$
    SELECT count(c.*) > 0, max(c.version), (array_agg(c.input_check))[1]
      FROM flowd_input_check(p_tenant, p_workflow, p_version) c
$$;

-- What PUT and GET need besides the request: the engine clock, the schedule as stored (NULL when
-- new) with its next tick, and the input check of the workflow (of p_workflow, or the stored
-- schedule's when NULL).
CREATE OR REPLACE FUNCTION flowd_schedule_get(p_tenant bigint, p_name text, p_workflow text,
                                   p_version integer,
                                   OUT now_ms bigint, OUT schedule jsonb,
                                   OUT workflow_found boolean, OUT input_check jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s schedules;
BEGIN
    now_ms := flowd_ms_of(flowd_now());
    SELECT * INTO s FROM schedules x WHERE x.tenant_id = p_tenant AND x.name = p_name;
    IF FOUND THEN
        schedule := flowd_schedule_json(s);
    END IF;
    IF p_workflow IS NOT NULL OR s.id IS NOT NULL THEN
        SELECT w.found, w.input_check INTO workflow_found, input_check
          FROM flowd_schedule_workflow(p_tenant, coalesce(p_workflow, s.workflow),
                                       CASE WHEN p_workflow IS NULL THEN s.version
                                            ELSE p_version END) w;
    END IF;
END $$;

-- Creates or replaces the schedule p_name from its definition p_def (checked by the caller). With
-- p_reset its next tick becomes p_next_ms (NULL: none left); without, a stored schedule keeps its
-- next tick. `paused` left out of p_def keeps the stored state. Runs it made ahead of ticks still
-- to come are taken back when what they would be changes. Wakes every process's scheduler.
CREATE OR REPLACE FUNCTION flowd_schedule_put(p_tenant bigint, p_name text, p_def jsonb, p_next_ms bigint,
                                   p_reset boolean, OUT created boolean, OUT schedule jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    s schedules;
    v_now timestamptz := flowd_now();
    v_old schedules;
BEGIN
    SELECT * INTO v_old FROM schedules x WHERE x.tenant_id = p_tenant AND x.name = p_name
       FOR UPDATE;
    created := NOT FOUND;
    IF NOT created AND (p_reset OR v_old.workflow IS DISTINCT FROM p_def->>'workflow'
                        OR v_old.version IS DISTINCT FROM (p_def->>'version')::integer
                        OR v_old.input IS DISTINCT FROM coalesce(p_def->'input', '{}')
                        OR v_old.jitter IS DISTINCT FROM coalesce(p_def->>'jitter', '0s')
                        OR v_old.overlap IS DISTINCT FROM coalesce(p_def->>'overlap', 'allow')
                        OR coalesce((p_def->>'paused')::boolean, false)) THEN
        PERFORM flowd_schedule_withdraw(v_old.id, 'schedule_changed');
    END IF;
    INSERT INTO schedules AS x (tenant_id, name, workflow, version, cron, every, tz, input,
                                overlap, catchup, catchup_window, jitter, start_at, end_at,
                                paused, next_fire, created_at, updated_at)
    VALUES (p_tenant, p_name, p_def->>'workflow', (p_def->>'version')::integer, p_def->>'cron',
            p_def->>'every', coalesce(p_def->>'tz', 'UTC'), coalesce(p_def->'input', '{}'),
            coalesce(p_def->>'overlap', 'allow'), coalesce(p_def->>'catchup', 'none'),
            coalesce(p_def->>'catchup_window', '1d'), coalesce(p_def->>'jitter', '0s'),
            (p_def->>'start_at')::timestamptz, (p_def->>'end_at')::timestamptz,
            coalesce((p_def->>'paused')::boolean, false), flowd_epoch_ms(p_next_ms), v_now, v_now)
    ON CONFLICT (tenant_id, name) DO UPDATE
       SET workflow = EXCLUDED.workflow, version = EXCLUDED.version, cron = EXCLUDED.cron,
           every = EXCLUDED.every, tz = EXCLUDED.tz, input = EXCLUDED.input,
           overlap = EXCLUDED.overlap, catchup = EXCLUDED.catchup,
           catchup_window = EXCLUDED.catchup_window, jitter = EXCLUDED.jitter,
           start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,
           paused = coalesce((p_def->>'paused')::boolean, x.paused),
           next_fire = CASE WHEN p_reset THEN EXCLUDED.next_fire ELSE x.next_fire END,
           updated_at = v_now
    RETURNING * INTO s;
    schedule := flowd_schedule_json(s);
    PERFORM pg_notify('flowd_schedules', 'put');
END $$;

CREATE OR REPLACE FUNCTION flowd_schedules_json(p_tenant bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('schedules', coalesce(jsonb_agg(flowd_schedule_json(s)
                                                              ORDER BY s.name), '[]'))
      FROM schedules s WHERE s.tenant_id = p_tenant
$$;

CREATE OR REPLACE FUNCTION flowd_schedule_delete(p_tenant bigint, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT id INTO v_id FROM schedules WHERE tenant_id = p_tenant AND name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM flowd_schedule_withdraw(v_id, 'schedule_deleted');
    DELETE FROM schedules WHERE id = v_id;
    PERFORM pg_notify('flowd_schedules', 'delete');
    RETURN true;
END $$;

-- Takes back what schedule p_id made ahead of ticks still to come, when a pause, a change or its
-- deletion comes between the making and the tick: those runs have not started; they are cancelled
-- with p_code, their ticks' idempotency keys are freed and the schedule's next tick goes back to
-- the earliest of them, so that the schedule as it now stands decides again what those ticks do.
CREATE OR REPLACE FUNCTION flowd_schedule_withdraw(p_id bigint, p_code text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_ids       bigint[];
    v_tick      bigint;
    v_last      bigint;
    v_last_tick bigint;
BEGIN
    -- runs made ahead are the schedule's newest but for those triggered since: at most
    -- lead / (the shortest `every`) + 1 of them
    SELECT array_agg(r.id), min(r.tick) INTO v_ids, v_tick
      FROM (SELECT x.id, x.state, x.start_at,
                   split_part(x.idempotency_key, ':', 3)::bigint AS tick
              FROM runs x WHERE x.schedule_id = p_id AND x.idempotency_key IS NOT NULL
             ORDER BY x.id DESC LIMIT 64) r
     WHERE r.state = 'queued' AND r.start_at > flowd_now() AND r.tick > flowd_ms_of(flowd_now());
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    UPDATE runs SET idempotency_key = NULL WHERE id = ANY (v_ids);
    PERFORM flowd_cancel_runs(v_ids, jsonb_build_object(
        'code', p_code, 'message', 'made ahead of its tick, and taken back when its schedule '
                                   || CASE p_code WHEN 'schedule_paused' THEN 'was paused'
                                                  WHEN 'schedule_deleted' THEN 'was deleted'
                                                  ELSE 'changed' END));
    -- the latest run left stands as the schedule's last (none: NULL)
    SELECT x.id, split_part(x.idempotency_key, ':', 3)::bigint INTO v_last, v_last_tick
      FROM runs x WHERE x.schedule_id = p_id AND x.idempotency_key IS NOT NULL
     ORDER BY x.id DESC LIMIT 1;
    UPDATE schedules
       SET next_fire = least(next_fire, flowd_epoch_ms(v_tick)),
           fires = fires - cardinality(v_ids),
           last_run_id = v_last, last_fire = flowd_epoch_ms(v_last_tick)
     WHERE id = p_id;
END $$;

-- Pauses or resumes; a resumed schedule catches up on the ticks it missed by its policy. NULL
-- when the tenant has no such schedule.
CREATE OR REPLACE FUNCTION flowd_schedule_pause(p_tenant bigint, p_name text, p_paused boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s schedules;
BEGIN
    UPDATE schedules SET paused = p_paused, updated_at = flowd_now()
     WHERE tenant_id = p_tenant AND name = p_name RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_paused THEN
        PERFORM flowd_schedule_withdraw(s.id, 'schedule_paused');
        SELECT * INTO s FROM schedules WHERE id = s.id;
    END IF;
    PERFORM pg_notify('flowd_schedules', 'pause');
    RETURN flowd_schedule_json(s);
END $$;

-- How long before its tick a schedule whose runs may overlap (overlap: allow) makes the tick's
-- run: the run waits as a delayed start, so a burst of ticks in one second is created before it
-- and starts on time. Schedules with another overlap policy are made at their tick, when whether
-- a previous run is unfinished can be known. See flowd_schedule_withdraw for what a change to a
-- schedule does to the runs it made ahead.
CREATE OR REPLACE FUNCTION flowd_schedule_lead() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT interval '2 seconds' $$;

-- Milliseconds until a fire pass has something to make (0 when due), NULL when nothing will.
CREATE OR REPLACE FUNCTION flowd_schedule_next_due_ms() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN t.at IS NOT NULL  -- (greatest() would turn NULL into 0)
                THEN greatest(0, flowd_ms_of(t.at) - flowd_ms_of(flowd_now())) END
      FROM (SELECT least(
                (SELECT s.next_fire - flowd_schedule_lead() FROM schedules s
                  WHERE NOT s.paused AND s.next_fire IS NOT NULL AND s.overlap = 'allow'
                  ORDER BY s.next_fire LIMIT 1),
                (SELECT s.next_fire FROM schedules s
                  WHERE NOT s.paused AND s.next_fire IS NOT NULL AND s.overlap <> 'allow'
                  ORDER BY s.next_fire LIMIT 1)) AS at) t
$$;

-- The schedules due now, and those made ahead (flowd_schedule_lead), earliest first, with what
-- the engine needs to plan their fires: the definition (the members engine/schedule.h reads), the
-- tick of the previous run, and the workflow's input check (looked up once per workflow of the
-- page, not once per schedule).
CREATE OR REPLACE FUNCTION flowd_schedules_due(p_limit integer)
RETURNS TABLE (id bigint, name text, def jsonb, next_ms bigint, last_ms bigint, now_ms bigint,
               workflow_found boolean, input_check jsonb)
LANGUAGE sql STABLE AS $$
    WITH page AS MATERIALIZED (
        SELECT s.* FROM schedules s
         WHERE NOT s.paused AND s.next_fire <= flowd_now() + flowd_schedule_lead()
           AND (s.next_fire <= flowd_now() OR s.overlap = 'allow')
         ORDER BY s.next_fire LIMIT p_limit),
    wf AS (
        SELECT k.tenant_id, k.workflow, k.version, w.found, w.input_check
          FROM (SELECT DISTINCT p.tenant_id, p.workflow, p.version FROM page p) k
         CROSS JOIN LATERAL flowd_schedule_workflow(k.tenant_id, k.workflow, k.version) w)
    SELECT p.id, p.name,
           jsonb_build_object('workflow', p.workflow, 'version', p.version, 'cron', p.cron,
                              'every', p.every, 'tz', p.tz, 'input', p.input,
                              'catchup', p.catchup, 'catchup_window', p.catchup_window,
                              'jitter', p.jitter, 'start_at', flowd_ms(p.start_at),
                              'end_at', flowd_ms(p.end_at)),
           flowd_ms_of(p.next_fire), flowd_ms_of(p.last_fire), flowd_ms_of(flowd_now()),
           wf.found, wf.input_check
      FROM page p
      JOIN wf ON wf.tenant_id = p.tenant_id AND wf.workflow = p.workflow
             AND wf.version IS NOT DISTINCT FROM p.version
     ORDER BY p.next_fire
$$;

-- Whether a new run of schedule p_id may start by its overlap policy, with the row locked:
-- `skip` says no while one of its runs is unfinished, `cancel_previous` cancels those. Keeps
-- open_from (below it every run of the schedule has finished) so the search stays short.
CREATE OR REPLACE FUNCTION flowd_schedule_overlap(p_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s      schedules;
    v_open bigint[];
BEGIN
    SELECT * INTO s FROM schedules WHERE id = p_id;
    IF s.overlap = 'allow' THEN
        RETURN true;
    END IF;
    SELECT array_agg(r.id ORDER BY r.id) INTO v_open FROM runs r
     WHERE r.schedule_id = p_id AND r.id >= s.open_from AND r.state IN ('queued', 'running');
    UPDATE schedules SET open_from = coalesce(v_open[1], coalesce(s.last_run_id, 0) + 1)
     WHERE id = p_id;
    IF v_open IS NULL THEN
        RETURN true;
    END IF;
    IF s.overlap = 'skip' THEN
        RETURN false;
    END IF;
    PERFORM flowd_cancel_runs(v_open, jsonb_build_object(
        'code', 'schedule_overlap', 'message', 'cancelled by a later run of its schedule'));
    RETURN true;
END $$;

-- One fire pass, in one transaction: p_orders is a JSON array of
--   {"id", "expect": ms, "next": ms | null, "fires": [{"at": ms, "input", "start": ms | null}],
--    "missed": n, "error": {"fire_time", "code", "message"} | null}
-- as planned by the engine from what flowd_schedules_due answered. A schedule is fired only if
-- its next tick is still `expect` and no other pass holds it (SKIP LOCKED): then its runs are
-- created (idempotency key "schedule:<id>:<tick ms>", by its overlap policy, grouped into one
-- flowd_create_runs per workflow) and its next tick becomes `next`, all or nothing. Answers per
-- order: outcome "fired", "busy" (another pass holds it: look again shortly) or "moved" (already
-- handled, paused or gone), with the runs made and the ticks skipped by overlap, by an existing
-- run of the same tick, for want of the workflow, and because the tenant's runs_per_month had no
-- room for them (the runs of one workflow in a pass fit all together or not at all).
CREATE OR REPLACE FUNCTION flowd_schedules_fire(p_orders jsonb)
RETURNS TABLE (id bigint, outcome text, runs integer, overlap integer, duplicate integer,
               missing integer, quota integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := flowd_now();
    v_orders  bigint[];  -- the orders' schedules and the ticks they expect
    v_expects bigint[];
    v_locked  bigint[];
    v_skip    bigint[] := '{}';  -- overlap: every fire of the pass skipped
    v_first   bigint[] := '{}';  -- overlap skip: only the first fire of the pass
    v_last    bigint[] := '{}';  -- overlap cancel_previous: only the last
    v_missing bigint[] := '{}';
    v_quota   bigint[] := '{}';  -- ticks runs_per_month had no room for
    v_refusal jsonb;             -- the quota's refusal (flowd_quota_take_runs)
    v_sids    bigint[] := '{}';  -- runs made: schedule, tick, run
    v_ats     bigint[] := '{}';
    v_runs    bigint[] := '{}';
    v_wf      bigint;
    v_ids     bigint[];
    r         record;
BEGIN
    SELECT array_agg(o.id), array_agg(o.expect) INTO v_orders, v_expects
      FROM jsonb_to_recordset(p_orders) AS o(id bigint, expect bigint);
    SELECT array_agg(x.id) INTO v_locked FROM (
        SELECT s.id FROM schedules s
          JOIN unnest(v_orders, v_expects) AS o(id, expect) ON o.id = s.id
         WHERE s.id = ANY (v_orders)  -- (the primary key's index, whatever the join is estimated)
           AND s.next_fire = flowd_epoch_ms(o.expect) AND NOT s.paused
         ORDER BY s.id
           FOR UPDATE OF s SKIP LOCKED) x;
    v_locked := coalesce(v_locked, '{}');

    FOR r IN SELECT s.id, s.overlap FROM schedules s
               JOIN jsonb_to_recordset(p_orders) AS o(id bigint, fires jsonb) ON o.id = s.id
              WHERE s.id = ANY (v_locked) AND s.overlap <> 'allow'
                AND jsonb_array_length(o.fires) > 0
              ORDER BY s.id LOOP
        IF NOT flowd_schedule_overlap(r.id) THEN
            v_skip := v_skip || r.id;
        ELSIF r.overlap = 'skip' THEN
            v_first := v_first || r.id;
        ELSE
            v_last := v_last || r.id;
        END IF;
    END LOOP;

    FOR r IN
        WITH fx AS (
            SELECT s.id AS sid, s.tenant_id, s.workflow, s.version, f.value, f.ord,
                   (f.value->>'at')::bigint AS at_ms,
                   jsonb_array_length(o.fires) AS n
              FROM jsonb_to_recordset(p_orders) AS o(id bigint, fires jsonb)
              JOIN schedules s ON s.id = o.id
             CROSS JOIN jsonb_array_elements(o.fires) WITH ORDINALITY AS f(value, ord)
             WHERE s.id = ANY (v_locked) AND NOT s.id = ANY (v_skip)
               AND (NOT s.id = ANY (v_first) OR f.ord = 1)
               AND (NOT s.id = ANY (v_last) OR f.ord = jsonb_array_length(o.fires))),
        fresh AS (
            SELECT fx.*, 'schedule:' || fx.sid || ':' || fx.at_ms AS key FROM fx
             WHERE NOT EXISTS (SELECT 1 FROM runs x
                                WHERE x.tenant_id = fx.tenant_id
                                  AND x.idempotency_key = 'schedule:' || fx.sid || ':' || fx.at_ms))
        SELECT f.tenant_id, f.workflow, f.version,
               jsonb_agg(f.value->'input' ORDER BY f.sid, f.at_ms) AS inputs,
               array_agg(f.key ORDER BY f.sid, f.at_ms) AS keys,
               array_agg(flowd_epoch_ms((f.value->>'start')::bigint) ORDER BY f.sid, f.at_ms)
                   AS starts,
               array_agg(f.sid ORDER BY f.sid, f.at_ms) AS sids,
               array_agg(f.at_ms ORDER BY f.sid, f.at_ms) AS ats
          FROM fresh f GROUP BY f.tenant_id, f.workflow, f.version
    LOOP
        SELECT w.id INTO v_wf FROM workflows w
         WHERE w.tenant_id = r.tenant_id AND w.name = r.workflow
           AND (r.version IS NULL OR w.version = r.version)
         ORDER BY w.version DESC LIMIT 1;
        IF NOT FOUND THEN
            v_missing := v_missing || r.sids;
            CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM tenant_quotas q
                    WHERE q.tenant_id = r.tenant_id AND q.runs_per_month IS NOT NULL) THEN
            BEGIN
                PERFORM flowd_quota_take_runs(r.tenant_id, cardinality(r.sids));
            EXCEPTION WHEN SQLSTATE 'FL429' THEN
                v_quota := v_quota || r.sids;
                v_refusal := SQLERRM::jsonb;
                CONTINUE;
            END;
        END IF;
        v_ids := flowd_create_runs(r.tenant_id, v_wf, r.inputs, 0, NULL, NULL, NULL, NULL, r.keys,
                                   r.starts, r.sids);
        v_sids := v_sids || r.sids;
        v_ats := v_ats || r.ats;
        v_runs := v_runs || v_ids;
    END LOOP;

    RETURN QUERY
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(p_orders)
                   AS o(id bigint, expect bigint, next bigint, fires jsonb, missed bigint,
                        error jsonb)),
    made AS (
        SELECT u.sid, count(*)::integer AS n, max(u.at) AS last_at,
               (array_agg(u.run ORDER BY u.at DESC))[1] AS last_run
          FROM unnest(v_sids, v_ats, v_runs) AS u(sid, at, run) GROUP BY u.sid),
    miss AS (
        SELECT m.sid, count(*)::integer AS n FROM unnest(v_missing) AS m(sid) GROUP BY m.sid),
    over AS (
        SELECT m.sid, count(*)::integer AS n FROM unnest(v_quota) AS m(sid) GROUP BY m.sid),
    tally AS (
        SELECT o.*, coalesce(made.n, 0) AS made_n, made.last_at, made.last_run,
               coalesce(miss.n, 0) AS missing_n, coalesce(over.n, 0) AS quota_n,
               CASE WHEN o.id = ANY (v_skip) THEN jsonb_array_length(o.fires)
                    WHEN o.id = ANY (v_first) OR o.id = ANY (v_last)
                    THEN jsonb_array_length(o.fires) - 1 ELSE 0 END AS overlap_n
          FROM o LEFT JOIN made ON made.sid = o.id LEFT JOIN miss ON miss.sid = o.id
          LEFT JOIN over ON over.sid = o.id
         WHERE o.id = ANY (v_locked)),
    upd AS (
        UPDATE schedules s
           SET next_fire = flowd_epoch_ms(t.next),
               last_fire = coalesce(flowd_epoch_ms(t.last_at), s.last_fire),
               last_run_id = coalesce(t.last_run, s.last_run_id),
               fires = s.fires + t.made_n,
               skips = s.skips + coalesce(t.missed, 0) + jsonb_array_length(t.fires) - t.made_n
                       + CASE WHEN t.error IS NOT NULL THEN 1 ELSE 0 END,
               last_skip = CASE
                   WHEN t.error IS NOT NULL
                   THEN t.error || jsonb_build_object('at', flowd_ms(v_now))
                   WHEN t.quota_n > 0
                   THEN (v_refusal || jsonb_build_object('reason', 'quota', 'at', flowd_ms(v_now)))
                        - 'retry_after_s'
                   WHEN t.missing_n > 0
                   THEN jsonb_build_object('reason', 'workflow_missing', 'at', flowd_ms(v_now),
                                           'message', 'no workflow ' || s.workflow
                                                      || coalesce(' version ' || s.version, ''))
                   WHEN t.overlap_n > 0
                   THEN jsonb_build_object('reason', 'overlap', 'at', flowd_ms(v_now))
                   WHEN coalesce(t.missed, 0) > 0
                   THEN jsonb_build_object('reason', 'missed', 'at', flowd_ms(v_now),
                                           'ticks', t.missed)
                   WHEN jsonb_array_length(t.fires) - t.made_n > 0
                   THEN jsonb_build_object('reason', 'duplicate', 'at', flowd_ms(v_now))
                   ELSE s.last_skip END,
               updated_at = v_now
          FROM tally t WHERE s.id = t.id
        RETURNING s.id)
    SELECT o.id,
           CASE WHEN o.id = ANY (v_locked) THEN 'fired'
                WHEN EXISTS (SELECT 1 FROM schedules s
                              WHERE s.id = o.id AND NOT s.paused
                                AND s.next_fire = flowd_epoch_ms(o.expect)) THEN 'busy'
                ELSE 'moved' END,
           coalesce(t.made_n, 0), coalesce(t.overlap_n, 0),
           coalesce(jsonb_array_length(t.fires) - t.made_n - t.overlap_n - t.missing_n
                    - t.quota_n, 0),
           coalesce(t.missing_n, 0), coalesce(t.quota_n, 0)
      FROM o LEFT JOIN tally t ON t.id = o.id;
END $$;

-- Fires schedule p_name once now (POST .../trigger): the run of tick p_at_ms with p_input
-- (rendered and checked by the caller), by the overlap policy (55000 when `skip` finds a run
-- unfinished), counted as the schedule's latest run. The schedule's next tick stays. NULL when
-- the tenant has no such schedule.
CREATE OR REPLACE FUNCTION flowd_schedule_trigger(p_tenant bigint, p_name text, p_at_ms bigint,
                                       p_input jsonb, p_start_ms bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s     schedules;
    v_wf  bigint;
    v_ids bigint[];
    v_key text;
BEGIN
    SELECT * INTO s FROM schedules WHERE tenant_id = p_tenant AND name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_key := 'schedule:' || s.id || ':' || p_at_ms;
    SELECT array_agg(r.id) INTO v_ids FROM runs r
     WHERE r.tenant_id = p_tenant AND r.idempotency_key = v_key;
    IF v_ids IS NOT NULL THEN
        RETURN flowd_run_json(p_tenant, v_ids[1]);
    END IF;
    IF NOT flowd_schedule_overlap(s.id) THEN
        RAISE EXCEPTION 'a run of schedule % has not finished (overlap: skip)', p_name
              USING ERRCODE = '55000';
    END IF;
    SELECT w.id INTO v_wf FROM workflows w
     WHERE w.tenant_id = p_tenant AND w.name = s.workflow
       AND (s.version IS NULL OR w.version = s.version)
     ORDER BY w.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', s.workflow || coalesce(' version ' || s.version, '')
            USING ERRCODE = 'P0002';
    END IF;
    PERFORM flowd_quota_take_runs(p_tenant, 1);
    v_ids := flowd_create_runs(p_tenant, v_wf, jsonb_build_array(p_input), 0, NULL, NULL, NULL,
                               NULL, ARRAY[v_key], ARRAY[flowd_epoch_ms(p_start_ms)],
                               ARRAY[s.id]);
    UPDATE schedules SET last_fire = flowd_epoch_ms(p_at_ms), last_run_id = v_ids[1],
                         fires = fires + 1, updated_at = flowd_now()
     WHERE id = s.id;
    RETURN flowd_run_json(p_tenant, v_ids[1]);
END $$;
