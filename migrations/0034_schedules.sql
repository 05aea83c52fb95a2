-- Schedules: cron expressions (read in an IANA zone) and fixed intervals that start runs, exactly
-- once per tick however many processes serve the database; and runs that start later.
--
-- next_fire is the earliest tick not yet handled. The engine computes it in C (engine/cron.h has
-- the zone rules, through ICU; engine/schedule.h reads the rest) and a fire moves it forward in the same transaction that creates
-- the tick's runs, after checking it still holds the value the engine read: a crash at any point
-- leaves either both or neither, and a second process reading the same row finds it moved (or
-- locked) and does nothing. The run's idempotency key is "schedule:<id>:<fire ms>", so even a
-- row put back to an old tick cannot start that tick twice.
CREATE TABLE schedules (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants(id),
    name           text NOT NULL,
    workflow       text NOT NULL,           -- by name: each fire runs `version`, else the latest
    version        integer,
    cron           text,                    -- exactly one of cron and every ("30s", "15m")
    every          text,
    tz             text NOT NULL DEFAULT 'UTC',
    input          jsonb NOT NULL DEFAULT '{}',  -- template: {{schedule.name}}, .fire_time, ...
    overlap        text NOT NULL DEFAULT 'allow'
                   CHECK (overlap IN ('allow', 'skip', 'cancel_previous')),
    catchup        text NOT NULL DEFAULT 'none' CHECK (catchup IN ('none', 'latest', 'all')),
    catchup_window text NOT NULL DEFAULT '1d',  -- 'all': how far back missed ticks still run
    jitter         text NOT NULL DEFAULT '0s',  -- each run starts up to this long after its tick
    start_at       timestamptz,
    end_at         timestamptz,
    paused         boolean NOT NULL DEFAULT false,
    next_fire      timestamptz,             -- earliest tick not yet handled; NULL: none left
    last_fire      timestamptz,             -- the tick (scheduled instant) of the latest run made
    last_run_id    bigint,
    open_from      bigint NOT NULL DEFAULT 0, -- this schedule's runs below this id have finished
    fires          bigint NOT NULL DEFAULT 0, -- runs made
    skips          bigint NOT NULL DEFAULT 0, -- ticks passed over (overlap, missed, failed)
    last_skip      jsonb,                   -- {fire_time, reason, message?, at} of the latest
    created_at     timestamptz NOT NULL,        -- on the engine clock, set by the schedule functions
    updated_at     timestamptz NOT NULL,
    CHECK ((cron IS NULL) <> (every IS NULL)),
    UNIQUE (tenant_id, name)
);
-- What the engine's timer and fire passes read: only schedules that will fire.
CREATE INDEX schedules_due ON schedules (next_fire) WHERE NOT paused AND next_fire IS NOT NULL;

-- A run made by a schedule names it (overlap policies look for its unfinished runs), and a run
-- enqueued to start later keeps that time (its first steps wait for it; the API shows the run
-- as "scheduled" until then). Neither column ever changes after the insert, so run updates stay
-- HOT.
ALTER TABLE runs ADD COLUMN schedule_id bigint, ADD COLUMN start_at timestamptz;
CREATE INDEX runs_schedule ON runs (schedule_id, id) WHERE schedule_id IS NOT NULL;
