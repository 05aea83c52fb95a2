#!/usr/bin/env node
// The peer baseline for `bench/run queue`: graphile-worker's no-op throughput with its batching on,
// on the same PostgreSQL. Same shape as bench_queue: N jobs enqueued first (addJobs, --enqueue-batch
// per call), then worked by one worker pool in this process, timed from the pool's start until every
// job's completion is committed (runner.stop() flushes the batched completions before it resolves).
//
//   node driver.js trial --database CONN [--jobs 20000] [--enqueue-batch 1000] --concurrency N
//                        --local-queue N --complete-delay MS --fail-delay MS [--pool N]
//                        [--sleep-ms MS]
//   node driver.js sweep --database CONN [--jobs 20000] [--repeat 3]
//   node driver.js enqueue --database CONN [--jobs 20000] [--in-flight 64] [--enqueue-batch 1000]
//                          [--batch-jobs 100000] [--batch-in-flight 8] [--pool N]
//   node driver.js latency --database CONN [--jobs 500] [--interval-ms 10] [--concurrency 2]
//
// --sleep-ms makes each job wait that long before it completes (a timer, no CPU), the peer of
// flowd's `llm` steps waiting on a mock provider (bench/run versus, W3).
//
// enqueue is the peer figure for `bench/run http`: a client enqueuing through graphile-worker's own
// library, one job per call (WorkerUtils.addJob with --in-flight calls outstanding over its pool,
// as concurrent HTTP clients would) and in batches (addJobs of --enqueue-batch specs per call,
// --batch-in-flight calls outstanding, as bench/run http's POST /v1/batches connections).
// Its JSON has enqueue_single_per_s and enqueue_batch_per_s (jobs per second). A sweep runs it too,
// once per repeat over pool sizes 10 (graphile-worker's default) and 32, and reports the best.
//
// latency is the peer of bench_queue's latency phase (bench/run versus, W2): an idle pool, one job
// every --interval-ms added by the SQL function graphile_worker.add_job on one connection (flowd's
// side calls flowd_enqueue the same way), enqueue-to-start being the job's locked_at (the claim's
// time) less its created_at, both by the database's clock. Completed jobs are deleted, so a trigger
// on their deletion keeps the two times; it runs at completion, after the start was measured.
// Its JSON has latency_p50_ms, latency_p99_ms, latency_max_ms and latency_avg_ms.
//
// CONN is a postgres:// URL or a libpq keyword string ("host=/dir dbname=postgres user=postgres").
// Each trial runs in a fresh database (created next to CONN's, dropped at the end) and in a fresh Node
// process, so one trial's JIT warm-up, pool or bloat does not help or hurt the next. A sweep prints one
// JSON object for the best trial with every trial's figure in "trials"; logs go to stderr.
"use strict";

const { execFileSync } = require("node:child_process");
const { EventEmitter } = require("node:events");
const os = require("node:os");
const { Pool } = require("pg");
const gw = require("graphile-worker");

function parseArgs(argv, mode) {
  const o = { jobs: mode === "latency" ? 500 : 20000, enqueueBatch: 1000, repeat: 3, inFlight: 64, batchJobs: 100000,
              batchInFlight: 8 };
  const keys = {
    "--database": ["database", String],
    "--jobs": ["jobs", Number],
    "--enqueue-batch": ["enqueueBatch", Number],
    "--concurrency": ["concurrency", Number],
    "--local-queue": ["localQueue", Number],
    "--complete-delay": ["completeDelay", Number],
    "--fail-delay": ["failDelay", Number],
    "--pool": ["pool", Number],
    "--repeat": ["repeat", Number],
    "--in-flight": ["inFlight", Number],
    "--batch-jobs": ["batchJobs", Number],
    "--batch-in-flight": ["batchInFlight", Number],
    "--sleep-ms": ["sleepMs", Number],
    "--interval-ms": ["intervalMs", Number],
  };
  for (let i = 0; i < argv.length; i += 2) {
    const k = keys[argv[i]];
    if (!k || i + 1 >= argv.length) usage(`bad argument ${argv[i]}`);
    const v = k[1](argv[i + 1]);
    if (k[1] === Number && !Number.isFinite(v)) usage(`${argv[i]} wants a number`);
    o[k[0]] = v;
  }
  if (!o.database) usage("--database is required");
  return o;
}

function usage(why) {
  process.stderr.write(`driver.js: ${why}\nusage: driver.js trial|sweep|enqueue|latency --database CONN [options]\n`);
  process.exit(2);
}

const isUrl = (conn) => /^postgres(ql)?:\/\//.test(conn);

// By hand, not with WHATWG URL: libpq's "postgresql://user@/db?host=/socket/dir" has an empty host,
// which URL refuses; node-postgres's own parser takes it.
function urlWithDb(conn, dbname) {
  const m = /^(postgres(?:ql)?:\/\/[^/?#]*)(\/[^?#]*)?(.*)$/.exec(conn);
  return `${m[1]}/${dbname}${m[3]}`;
}

// libpq keyword strings are what bench/run hands bench_queue; node-postgres only parses URLs.
function pgConfig(conn, dbname) {
  if (isUrl(conn)) return { connectionString: dbname ? urlWithDb(conn, dbname) : conn };
  const cfg = {};
  const re = /(\w+)\s*=\s*('((?:[^'\\]|\\.)*)'|\S+)/g;
  let m;
  while ((m = re.exec(conn))) {
    const v = m[3] !== undefined ? m[3].replace(/\\(.)/g, "$1") : m[2];
    const name = { dbname: "database", host: "host", port: "port", user: "user", password: "password" }[m[1]];
    if (name) cfg[name] = name === "port" ? Number(v) : v;
  }
  if (dbname) cfg.database = dbname;
  return cfg;
}

// graphile-worker builds its pool (maxPoolSize, its own error handlers) from a URL; keyword-form
// connections are turned into one, the socket directory going into the `host` query parameter.
function connectionUrl(conn, dbname) {
  if (isUrl(conn)) return urlWithDb(conn, dbname);
  const c = pgConfig(conn);
  const auth = c.user ? encodeURIComponent(c.user) + (c.password ? ":" + encodeURIComponent(c.password) : "") + "@" : "";
  const q = new URLSearchParams();
  if (c.host) q.set("host", c.host);
  if (c.port) q.set("port", String(c.port));
  return `postgresql://${auth}/${dbname}?${q}`;
}

const quiet = new gw.Logger(() => (level, message) => {
  if (level === "error" || level === "warning") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

async function scalar(pool, sql, params) {
  const r = await pool.query(sql, params);
  return r.rows[0] ? Object.values(r.rows[0])[0] : null;
}

async function trial(o) {
  for (const k of ["concurrency", "localQueue", "completeDelay", "failDelay"])
    if (o[k] === undefined) usage(`trial needs --${k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}`);
  const admin = new Pool({ ...pgConfig(o.database), max: 1 });
  const dbname = `peer_graphile_${process.pid}_${Date.now()}`;
  await admin.query(`CREATE DATABASE ${dbname}`); // our own generated identifier
  const poolSize = o.pool || o.concurrency + 2;
  const connectionString = connectionUrl(o.database, dbname);
  const settings = {
    concurrentJobs: o.concurrency,
    maxPoolSize: poolSize,
    localQueue: { size: o.localQueue },
    completeJobBatchDelay: o.completeDelay,
    failJobBatchDelay: o.failDelay,
  };
  const check = new Pool({ ...pgConfig(o.database, dbname), max: 1 });
  check.on("error", (e) => process.stderr.write(`driver.js: idle client error: ${e.message}\n`));
  try {
    // The local queue announces itself; counting that proves the option reached the pool.
    const events = new EventEmitter();
    let localQueues = 0;
    events.on("localQueue:init", () => localQueues++);
    const common = { connectionString, logger: quiet, events, preset: { worker: { ...settings } } };
    await gw.runMigrations(common);

    const utils = await gw.makeWorkerUtils(common);
    let t0 = process.hrtime.bigint();
    for (let done = 0; done < o.jobs; ) {
      const k = Math.min(o.enqueueBatch, o.jobs - done);
      const specs = [];
      for (let i = 0; i < k; i++) specs.push({ identifier: "noop", payload: { n: done + i } });
      await utils.addJobs(specs);
      done += k;
    }
    const enqueueS = Number(process.hrtime.bigint() - t0) / 1e9;
    await utils.release();
    await check.query("ANALYZE");

    let worked = 0;
    let allWorked;
    const allWorkedP = new Promise((resolve) => (allWorked = resolve));
    const taskList = {
      noop: async () => {
        if (o.sleepMs) await new Promise((resolve) => setTimeout(resolve, o.sleepMs));
        if (++worked === o.jobs) allWorked();
      },
    };
    t0 = process.hrtime.bigint();
    const runner = await gw.run({ ...common, taskList, noHandleSignals: true });
    await allWorkedP;
    const lastHandlerS = Number(process.hrtime.bigint() - t0) / 1e9;
    await runner.stop();
    const workS = Number(process.hrtime.bigint() - t0) / 1e9;

    const left = Number(await scalar(check, "SELECT count(*) FROM graphile_worker._private_jobs"));
    if (left !== 0) throw new Error(`${left} jobs still in the table after the run`);
    if (worked !== o.jobs) throw new Error(`handler ran ${worked} times for ${o.jobs} jobs`);
    if (o.localQueue >= 1 && localQueues !== 1) throw new Error(`${localQueues} local queues started, expected 1`);
    return {
      jobs_per_s: round2(o.jobs / workS),
      sleep_ms: o.sleepMs || 0,
      work_seconds: round3(workS),
      last_handler_seconds: round3(lastHandlerS),
      enqueue_per_s: round2(o.jobs / enqueueS),
      settings,
      postgres_version: await scalar(check, "SHOW server_version"),
      fsync: await scalar(check, "SHOW fsync"),
      synchronous_commit: await scalar(check, "SHOW synchronous_commit"),
      shared_buffers: await scalar(check, "SHOW shared_buffers"),
    };
  } finally {
    await check.end();
    await admin.query(`DROP DATABASE IF EXISTS ${dbname}`);
    await admin.end();
  }
}

// A fresh database as in trial; jobs are only added, never worked. The single-job phase keeps
// --in-flight addJob calls outstanding until --jobs were added; the batched phase keeps
// --batch-in-flight addJobs calls outstanding until --batch-jobs were added. Both phases end when
// every call resolved, i.e. every job is committed.
async function enqueueTrial(o) {
  const admin = new Pool({ ...pgConfig(o.database), max: 1 });
  const dbname = `peer_graphile_enq_${process.pid}_${Date.now()}`;
  await admin.query(`CREATE DATABASE ${dbname}`); // our own generated identifier
  const pool = o.pool || 10;
  const common = {
    connectionString: connectionUrl(o.database, dbname), logger: quiet,
    preset: { worker: { maxPoolSize: pool } },
  };
  const check = new Pool({ ...pgConfig(o.database, dbname), max: 1 });
  check.on("error", (e) => process.stderr.write(`driver.js: idle client error: ${e.message}\n`));
  try {
    await gw.runMigrations(common);
    const utils = await gw.makeWorkerUtils(common);
    // a warm-up, as the flowd side gets from the runs the benchmark makes before measuring
    await Promise.all(Array.from({ length: pool }, (_, i) => utils.addJob("noop", { n: -1 - i })));
    let next = 0;
    const lane = async () => {
      while (next < o.jobs) await utils.addJob("noop", { n: next++ });
    };
    let t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: o.inFlight }, lane));
    const singleS = Number(process.hrtime.bigint() - t0) / 1e9;
    let queued = 0;
    const batchLane = async () => {
      while (queued < o.batchJobs) {
        const k = Math.min(o.enqueueBatch, o.batchJobs - queued);
        const specs = [];
        for (let i = 0; i < k; i++) specs.push({ identifier: "noop", payload: { n: queued + i } });
        queued += k;
        await utils.addJobs(specs);
      }
    };
    t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: o.batchInFlight }, batchLane));
    const batchS = Number(process.hrtime.bigint() - t0) / 1e9;
    await utils.release();
    const n = Number(await scalar(check, "SELECT count(*) FROM graphile_worker._private_jobs"));
    const want = o.jobs + o.batchJobs + pool;
    if (n !== want) throw new Error(`${n} jobs in the table, expected ${want}`);
    return {
      enqueue_single_per_s: round2(o.jobs / singleS),
      enqueue_batch_per_s: round2(o.batchJobs / batchS),
      jobs: o.jobs,
      in_flight: o.inFlight,
      batch_jobs: o.batchJobs,
      batch_in_flight: o.batchInFlight,
      pool,
      enqueue_batch: o.enqueueBatch,
      synchronous_commit: await scalar(check, "SHOW synchronous_commit"),
      fsync: await scalar(check, "SHOW fsync"),
    };
  } finally {
    await check.end();
    await admin.query(`DROP DATABASE IF EXISTS ${dbname}`);
    await admin.end();
  }
}

async function latencyTrial(o) {
  const jobs = o.jobs;
  const intervalMs = o.intervalMs || 10;
  const admin = new Pool({ ...pgConfig(o.database), max: 1 });
  const dbname = `peer_graphile_lat_${process.pid}_${Date.now()}`;
  await admin.query(`CREATE DATABASE ${dbname}`); // our own generated identifier
  const common = {
    connectionString: connectionUrl(o.database, dbname), logger: quiet,
    preset: { worker: { concurrentJobs: o.concurrency || 2, maxPoolSize: (o.concurrency || 2) + 2 } },
  };
  const client = new Pool({ ...pgConfig(o.database, dbname), max: 1 });
  client.on("error", (e) => process.stderr.write(`driver.js: idle client error: ${e.message}\n`));
  let runner;
  try {
    await gw.runMigrations(common);
    await client.query(`
      CREATE TABLE public.latency (created_at timestamptz NOT NULL, locked_at timestamptz);
      CREATE FUNCTION public.keep_latency() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        INSERT INTO public.latency VALUES (OLD.created_at, OLD.locked_at);
        RETURN OLD;
      END $$;
      CREATE TRIGGER keep_latency AFTER DELETE ON graphile_worker._private_jobs
        FOR EACH ROW EXECUTE FUNCTION public.keep_latency();`);
    const taskList = { noop: async () => {} };
    runner = await gw.run({ ...common, taskList, noHandleSignals: true });
    await new Promise((resolve) => setTimeout(resolve, 500)); // connected, listening and idle
    let next = Number(process.hrtime.bigint()) / 1e6;
    for (let i = 0; i < jobs; i++) {
      const wait = next - Number(process.hrtime.bigint()) / 1e6;
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      next += intervalMs;
      await client.query("SELECT graphile_worker.add_job('noop', json_build_object('n', $1::int))", [i]);
    }
    const until = Date.now() + 60000;
    while (Number(await scalar(client, "SELECT count(*) FROM public.latency")) < jobs) {
      if (Date.now() > until) throw new Error("latency jobs did not finish within 60 s");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await runner.stop();
    runner = null;
    const r = await client.query(`
      SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
             percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99, max(ms) AS max, avg(ms) AS avg
        FROM (SELECT extract(epoch FROM locked_at - created_at) * 1000 AS ms FROM public.latency) x`);
    const row = r.rows[0];
    return {
      latency_p50_ms: round3(Number(row.p50)), latency_p99_ms: round3(Number(row.p99)),
      latency_max_ms: round3(Number(row.max)), latency_avg_ms: round3(Number(row.avg)),
      jobs, interval_ms: intervalMs, concurrency: o.concurrency || 2,
      fsync: await scalar(client, "SHOW fsync"),
    };
  } finally {
    if (runner) await runner.stop();
    await client.end();
    await admin.query(`DROP DATABASE IF EXISTS ${dbname}`);
    await admin.end();
  }
}

const round2 = (v) => Math.round(v * 100) / 100;
const round3 = (v) => Math.round(v * 1000) / 1000;

// The grid: concurrency around what 2 cores can use (the handler is a no-op, so more slots only help
// while a fetch or a completion batch is in flight), local queue from the docs' `concurrency + 1` up
// past the performance page's 500, completion batching at 0 ms (the performance page) and 5 ms.
// Without both batching options this machine gives about 1,100 jobs/s (4 slots), far off the bar.
function grid() {
  const out = [];
  for (const concurrency of [2, 4, 8, 16])
    for (const localQueue of [concurrency + 1, 500, 2000, 5000])
      for (const completeDelay of [0, 5])
        out.push({ concurrency, localQueue, completeDelay, failDelay: completeDelay });
  return out;
}

function runTrialProcess(o, s) {
  const args = [__filename, "trial", "--database", o.database, "--jobs", String(o.jobs),
    "--enqueue-batch", String(o.enqueueBatch), "--concurrency", String(s.concurrency),
    "--local-queue", String(s.localQueue), "--complete-delay", String(s.completeDelay),
    "--fail-delay", String(s.failDelay)];
  const out = execFileSync(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
  return JSON.parse(out.toString());
}

function runEnqueueProcess(o, pool) {
  const args = [__filename, "enqueue", "--database", o.database, "--jobs", String(o.jobs),
    "--enqueue-batch", String(o.enqueueBatch), "--in-flight", String(o.inFlight),
    "--batch-jobs", String(o.batchJobs), "--batch-in-flight", String(o.batchInFlight), "--pool", String(pool)];
  const out = execFileSync(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
  return JSON.parse(out.toString());
}

const median = (xs) => {
  const v = [...xs].sort((x, y) => x - y);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};

// The figure the bar is held against is the best single trial: the machine is shared and noisy, and
// the bar must not be set by a peer trial that an unrelated build slowed down. The median of the
// repeats of those same settings is printed next to it to show the spread.
async function sweep(o) {
  const trials = [];
  for (let r = 0; r < o.repeat; r++) {
    for (const s of grid()) {
      const t = runTrialProcess(o, s);
      process.stderr.write(`peer-graphile: ${JSON.stringify(s)} -> ${t.jobs_per_s} jobs/s\n`);
      trials.push(t);
    }
  }
  const enqueues = [];
  for (let r = 0; r < o.repeat; r++) {
    for (const pool of [10, 32]) {
      const e = runEnqueueProcess(o, pool);
      process.stderr.write(`peer-graphile: enqueue pool ${pool} -> ${e.enqueue_single_per_s} single, ` +
        `${e.enqueue_batch_per_s} batched jobs/s\n`);
      enqueues.push(e);
    }
  }
  const best = trials.reduce((a, b) => (b.jobs_per_s > a.jobs_per_s ? b : a));
  const same = trials.filter((t) => JSON.stringify(t.settings) === JSON.stringify(best.settings));
  const version = require("graphile-worker/package.json").version;
  return {
    peer: "graphile-worker",
    version,
    node_version: process.version,
    jobs: o.jobs,
    enqueue_batch: o.enqueueBatch,
    jobs_per_s: best.jobs_per_s,
    jobs_per_s_median_same_settings: round2(median(same.map((t) => t.jobs_per_s))),
    work_seconds: best.work_seconds,
    enqueue_per_s: Math.max(...trials.map((t) => t.enqueue_per_s)),
    enqueue_single_per_s: Math.max(...enqueues.map((e) => e.enqueue_single_per_s)),
    enqueue_batch_per_s: Math.max(...enqueues.map((e) => e.enqueue_batch_per_s)),
    enqueue_in_flight: o.inFlight,
    enqueue_batch_in_flight: o.batchInFlight,
    enqueue_trials: enqueues.map((e) => [e.pool, e.enqueue_single_per_s, e.enqueue_batch_per_s]),
    enqueue_trials_columns: ["pool", "single_per_s", "batch_per_s"],
    settings: best.settings,
    repeats: o.repeat,
    cores: os.cpus().length,
    postgres_version: best.postgres_version,
    fsync: best.fsync,
    synchronous_commit: best.synchronous_commit,
    shared_buffers: best.shared_buffers,
    trials: trials.map((t) => [t.settings.concurrentJobs, t.settings.localQueue.size,
      t.settings.completeJobBatchDelay, t.jobs_per_s]),
    trials_columns: ["concurrency", "local_queue", "complete_delay_ms", "jobs_per_s"],
  };
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2);
  const o = parseArgs(rest, mode);
  let out;
  if (mode === "trial") out = await trial(o);
  else if (mode === "sweep") out = await sweep(o);
  else if (mode === "enqueue") out = await enqueueTrial(o);
  else if (mode === "latency") out = await latencyTrial(o);
  else usage(`unknown mode ${mode}`);
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  process.stderr.write(`driver.js: ${e.stack || e}\n`);
  process.exit(1);
});
