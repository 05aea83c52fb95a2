-- The process registry: a row per `flowd serve` process using this database, written when it
-- starts and then every 10 seconds (engine/procreg.h), never per step. GET /v1/workers reads it
-- with worker_leases and the running steps of each worker. A process that stops cleanly sets
-- stopped_at; one that died just stops beating. Rows gone quiet for a day are deleted by the
-- beats of the others.
CREATE TABLE processes (
    id           text PRIMARY KEY,          -- "host:pid": its workers are "host:pid:0" and on
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    role         text NOT NULL,             -- all, api or worker (flowd serve --role)
    listen       text,                      -- the API's bound address, NULL without the API
    workers      integer NOT NULL,
    api_threads  integer NOT NULL,
    beat_ms      integer NOT NULL,          -- the period of its beats
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz
);
