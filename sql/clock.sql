-- sql/clock.sql: The engine clock (real time plus an offset that only test mode moves) and the
-- timestamps the API answers in.
--
-- Functions only, each defined once, CREATE OR REPLACE, edited in place: the migration runner
-- applies this file again whenever its checksum changes (sql/README.md). A four-digit number names
-- the migration in migrations/ where a function or a table was first written or changed (history).

-- The engine clock, read at the start of every transition.
CREATE OR REPLACE FUNCTION flowd_now() RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN now() + (SELECT offset_ms FROM flowd_clock) * interval '1 millisecond';
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

-- Moves every process's clock forward; only on a database in test mode. The schedulers of every
-- process re-read their next tick too (0034).
CREATE OR REPLACE FUNCTION flowd_clock_advance(p_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_offset bigint;
BEGIN
    IF p_ms < 0 THEN
        RAISE EXCEPTION 'the clock only moves forward' USING ERRCODE = 'P0001';
    END IF;
    UPDATE flowd_clock SET offset_ms = offset_ms + p_ms WHERE test_mode
    RETURNING offset_ms INTO v_offset;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the engine clock only moves on a database in test mode (served by '
                        '`flowd serve` with FLOWD_TEST_CLOCK=1)'
              USING ERRCODE = '55000';
    END IF;
    PERFORM pg_notify('flowd_ready', 'clock');
    PERFORM pg_notify('flowd_schedules', 'clock');
    RETURN v_offset;
END $$;

-- Timestamps in the JSON the API answers (a run's JSON has 3 + 3 per step). Declared IMMUTABLE in
-- 0003, flowd_ms could not be inlined (to_char is STABLE), so every call site ran it as a SQL
-- function, parsed and planned again on every execution: half of flowd_run_json's time, which
-- every POST /v1/runs pays. As STABLE it is inlined into the caller's cached plan.
CREATE OR REPLACE FUNCTION flowd_ms(t timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- Called by every `flowd serve` at start with its own mode; answers {test_mode, offset_ms}.
-- 55000 when a server without test mode meets a clock that test mode left ahead.
CREATE OR REPLACE FUNCTION flowd_clock_start(p_test_mode boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_offset bigint;
BEGIN
    SELECT offset_ms INTO v_offset FROM flowd_clock FOR UPDATE;
    IF NOT p_test_mode AND v_offset <> 0 THEN
        RAISE EXCEPTION 'the engine clock of this database is % ahead of real time (left by '
                        'test mode, FLOWD_TEST_CLOCK=1): run `flowd clock reset` to go back to '
                        'real time, or start with a new --data folder',
                        justify_hours(date_trunc('second', v_offset * interval '1 millisecond'))
              USING ERRCODE = '55000';
    END IF;
    UPDATE flowd_clock SET test_mode = p_test_mode;
    RETURN jsonb_build_object('test_mode', p_test_mode, 'offset_ms', v_offset);
END $$;

-- Moves the clock to the earliest step or timer due later than now (a delayed or retried step,
-- a sending window's opening, a wait's timeout, a quota's reset, a schedule's tick): {offset_ms,
-- advanced_ms, due_at}, due_at NULL and nothing moved when nothing is scheduled later.
CREATE OR REPLACE FUNCTION flowd_clock_advance_to_next_due() RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := flowd_now();
    v_due timestamptz;
    v_ms  bigint := 0;
BEGIN
    SELECT min(t) INTO v_due
      FROM (SELECT min(run_at) AS t FROM steps WHERE state = 'ready' AND run_at > v_now
            UNION ALL
            SELECT min(run_at) FROM steps
             WHERE state = 'waiting' AND wait_event IS NOT NULL AND run_at > v_now
            UNION ALL
            SELECT min(b.run_at) FROM quota_blocked_steps b
             WHERE b.run_at > v_now
               AND EXISTS (SELECT 1 FROM steps s WHERE s.id = b.step_id AND s.state = 'blocked')
            UNION ALL
            SELECT min(next_fire) FROM schedules
             WHERE NOT paused AND next_fire IS NOT NULL AND next_fire > v_now) x;
    IF v_due IS NOT NULL THEN
        v_ms := ceil(extract(epoch FROM v_due - v_now) * 1000)::bigint;
    END IF;
    RETURN jsonb_build_object('offset_ms', flowd_clock_advance(v_ms), 'advanced_ms', v_ms,
                              'due_at', flowd_ms(v_due));
END $$;

-- Brings the clock back to real time (the way out of test mode); returns the offset it had.
CREATE OR REPLACE FUNCTION flowd_clock_reset() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_old bigint;
BEGIN
    SELECT offset_ms INTO v_old FROM flowd_clock FOR UPDATE;
    UPDATE flowd_clock SET offset_ms = 0;
    PERFORM pg_notify('flowd_ready', 'clock');
    PERFORM pg_notify('flowd_schedules', 'clock');
    RETURN v_old;
END $$;

-- Epoch milliseconds (as the engine computes ticks) to a timestamp and back.
-- (STABLE like the timestamptz arithmetic it does, so that it is inlined into its callers: an
-- IMMUTABLE label over a STABLE body made every call a function call of its own.)
CREATE OR REPLACE FUNCTION flowd_epoch_ms(p_ms bigint) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT timestamptz 'epoch' + p_ms * interval '1 millisecond'
$$;


CREATE OR REPLACE FUNCTION flowd_ms_of(p_t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (extract(epoch FROM p_t) * 1000)::bigint
$$;

