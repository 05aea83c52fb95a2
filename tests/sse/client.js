// tests/sse/client.js URL KEY STREAMS: opens STREAMS EventSource clients (npm eventsource) on the
// Server-Sent Events URL of one run, as browsers' dashboards would, and reports on stdout, one
// JSON object per line:
//   {"open": N}      once all N streams are open (the test then measures, and ends the run)
//   {"done": {...}}  once every stream was closed by the server's answer to its reconnect, or after
//                    90 s: per-stream figures summed up, and those of stream 0 in detail.
// Each stream's fetch is wrapped to add the key and to count what the EventSource API does not
// show: connections made, the status of each, and heartbeat comment lines.
'use strict';
const { EventSource } = require('eventsource');

const [url, key, nArg] = process.argv.slice(2);
const n = Number(nArg);
const t0 = Date.now();
const streams = [];
const EVENT_TYPES = ['run.created', 'run.started', 'run.succeeded', 'run.failed', 'run.cancelled',
  'run.retried', 'step.scheduled', 'step.started', 'step.succeeded', 'step.failed',
  'step.retrying', 'step.skipped', 'step.waiting', 'step.cancelled', 'step.interrupted',
  'step.unknown', 'step.resolved', 'step.blocked', 'step.unblocked', 'step.rate_limited'];

function countHeartbeats(stream, st) {
  const reader = stream.getReader();
  const dec = new TextDecoder();
  let buf = '';
  (async () => {
    for (;;) {
      let r;
      try { r = await reader.read(); } catch { return; }
      if (r.done) return;
      buf += dec.decode(r.value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        if (buf.startsWith(': heartbeat')) st.heartbeats.push(Date.now() - t0);
        buf = buf.slice(i + 1);
      }
    }
  })();
}

function open(i) {
  const st = { connections: 0, statuses: [], heartbeats: [], events: [], messages: 0, errors: 0,
               opened: false, closedAt: null };
  const es = new EventSource(url, {
    fetch: async (input, init) => {
      st.connections++;
      const res = await fetch(input, { ...init, headers: { ...init.headers,
                                                             Authorization: `Bearer ${key}` } });
      st.statuses.push(res.status);
      if (!res.body) return res;
      const [mine, theirs] = res.body.tee();
      countHeartbeats(theirs, st);
      return new Response(mine, { status: res.status, statusText: res.statusText,
                                  headers: res.headers });
    },
  });
  es.onopen = () => { if (!st.opened) { st.opened = true; maybeAllOpen(); } };
  es.onmessage = () => { st.messages++; };
  es.onerror = () => {
    st.errors++;
    if (es.readyState === EventSource.CLOSED && st.closedAt === null) {
      st.closedAt = Date.now() - t0;
      maybeDone();
    }
  };
  for (const type of EVENT_TYPES)
    es.addEventListener(type, (e) => st.events.push({ type, seq: Number(e.lastEventId) }));
  streams.push({ es, st });
}

let openReported = false;
function maybeAllOpen() {
  if (!openReported && streams.length === n && streams.every((s) => s.st.opened)) {
    openReported = true;
    console.log(JSON.stringify({ open: n, ms: Date.now() - t0 }));
  }
}

let doneReported = false;
function report() {
  if (doneReported) return;
  doneReported = true;
  const sum = (f) => streams.reduce((a, s) => a + f(s.st), 0);
  const first = streams[0].st;
  console.log(JSON.stringify({ done: {
    streams: n,
    closed: sum((st) => (st.closedAt !== null ? 1 : 0)),
    connections: sum((st) => st.connections),
    status204: sum((st) => st.statuses.filter((s) => s === 204).length),
    status200: sum((st) => st.statuses.filter((s) => s === 200).length),
    events: sum((st) => st.events.length),
    messages: sum((st) => st.messages),
    errors: sum((st) => st.errors),
    first: { statuses: first.statuses, heartbeats: first.heartbeats, events: first.events,
             errors: first.errors, closedAt: first.closedAt },
  } }));
  for (const s of streams) s.es.close();
  process.exit(0);
}

function maybeDone() {
  // linger a little after the last close: a client that still reconnected would show up here
  if (streams.every((s) => s.st.closedAt !== null)) setTimeout(report, 2500);
}

for (let i = 0; i < n; i++) open(i);
setTimeout(report, 90000);
