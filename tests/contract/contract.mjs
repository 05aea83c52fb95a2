// tests/contract/contract.mjs SOURCE_DIR NODE_DIR FLOWD_BIN: the OpenAPI document is the server.
//
// Starts `flowd serve` (API and one worker, sandbox providers, test clock) on a fresh database of
// the fixture cluster, then drives every operation of api/openapi.json through its success and
// error paths and validates each real answer against the document with ajv (JSON Schema 2020-12,
// formats checked): the status must be documented for the operation, the content type must be
// one it lists, and a JSON body must match its schema, where every object schema that lists
// properties is closed (an undocumented field fails). Every request body sent as valid is checked
// against the operation's request schema too. An operation no request reached fails the test.
// Then a TypeScript client is generated from the served document (openapi-typescript), compiled
// with tsc --strict against openapi-fetch, and runs the basic flow (register, enqueue, poll, event)
// against the same server. Prints "N passed, N failed".
import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const [src, nodeDir, flowdBin] = process.argv.slice(2);
const require = createRequire(path.join(nodeDir, 'package.json'));
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

const KEY = 'fd_contract_test_key_0123456789';
const PUBLIC_URL = 'http://flowd.contract.test:8443';
const TWILIO_TOKEN = 'contract-twilio-token';
const WHATSAPP_SECRET = 'contract-whatsapp-app-secret';
const WHATSAPP_VERIFY = 'contract-whatsapp-verify';
// SendGrid signs its event webhook with ECDSA P-256; flowd is given the public key (base64 DER)
const sendgridKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
const SENDGRID_PUBLIC_KEY = sendgridKeys.publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
const failures = [];
let checks = 0;
const fail = (msg) => failures.push(msg);

// ---------------------------------------------------------------------------- the server --

const pgdir = process.env.FLOWD_TEST_PGDIR;
if (!pgdir) throw new Error('FLOWD_TEST_PGDIR is not set: run through ctest (fixture pg)');
const dbname = `contract_${process.pid}`;
execFileSync('psql', ['-X', '-q', '-h', pgdir, '-U', 'postgres', '-d', 'postgres', '-c',
  `CREATE DATABASE ${dbname}`]);
const server = spawn(flowdBin, ['--database', `host=${pgdir} dbname=${dbname} user=postgres`,
  'serve', '--listen', '127.0.0.1:0', '--workers', '1'], {
  env: { ...process.env, FLOWD_API_KEY: KEY, FLOWD_TEST_CLOCK: '1', FLOWD_PUBLIC_URL: PUBLIC_URL,
    TWILIO_AUTH_TOKEN: TWILIO_TOKEN, SENDGRID_WEBHOOK_PUBLIC_KEY: SENDGRID_PUBLIC_KEY,
    WHATSAPP_APP_SECRET: WHATSAPP_SECRET, WHATSAPP_VERIFY_TOKEN: WHATSAPP_VERIFY,
    FLOWD_SECRET_KEY: crypto.randomBytes(32).toString('hex') },
  stdio: ['ignore', 'ignore', 'pipe'],
});
process.on('exit', () => server.kill('SIGTERM'));
const base = await new Promise((resolve, reject) => {
  let buf = '';
  const timer = setTimeout(() => reject(new Error(`flowd did not start:\n${buf}`)), 60000);
  server.stderr.on('data', (d) => {
    buf += d;
    const m = /msg="api listening" address=127\.0\.0\.1:(\d+)/.exec(buf);
    if (m) {
      clearTimeout(timer);
      resolve(`http://127.0.0.1:${m[1]}`);
    }
  });
  server.on('exit', (code) => reject(new Error(`flowd exited ${code}:\n${buf}`)));
});
server.stderr.resume();

// -------------------------------------------------------------------------- the document --

const doc = await (await fetch(`${base}/v1/openapi.json`)).json();
if (JSON.stringify(doc.servers) !== JSON.stringify([{ url: PUBLIC_URL }]))
  fail(`servers does not follow FLOWD_PUBLIC_URL: ${JSON.stringify(doc.servers)}`);

// Every object schema that lists its properties is closed, so an undocumented field fails.
function close(node) {
  if (Array.isArray(node)) return node.forEach(close);
  if (!node || typeof node !== 'object') return;
  if (node.properties && node.additionalProperties === undefined &&
      node.unevaluatedProperties === undefined)
    node.unevaluatedProperties = false;
  Object.values(node).forEach(close);
}
const strictDoc = structuredClone(doc);
close(strictDoc.components);
close(strictDoc.paths);
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema(strictDoc, 'openapi');

const ptr = (s) => s.replace(/~/g, '~0').replace(/\//g, '~1');
function deref(node) {
  while (node && node.$ref && node.$ref.startsWith('#/')) {
    node = node.$ref.slice(2).split('/').reduce((o, k) =>
      o[k.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
  }
  return node;
}
const validators = new Map();
function validator(pointer) {
  if (!validators.has(pointer)) validators.set(pointer, ajv.compile({ $ref: `openapi#${pointer}` }));
  return validators.get(pointer);
}

// The document's path template of a concrete path and method.
function template(method, p) {
  for (const [t, item] of Object.entries(doc.paths)) {
    const re = new RegExp(`^${t.replace(/\./g, '\\.').replace(/\{[^}]+\}/g, '[^/]+')}$`);
    if (re.test(p) && item[method]) return t;
  }
  return null;
}

const seen = new Map(); // "method template" -> Set of statuses

// One request; checks the answer against the document. opts: body (JSON, sent as is), raw (a
// string body), ctype, key (null: none), headers, bad (the body is meant to be refused, so it is
// not checked against the request schema). Returns {status, headers, body (parsed or text)}.
async function call(method, p, opts = {}) {
  const m = method.toLowerCase();
  const url = new URL(p, base);
  const t = template(m, url.pathname);
  const headers = { ...(opts.headers || {}) };
  if (opts.key !== null) headers.Authorization = `Bearer ${opts.key || KEY}`;
  let body;
  if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers['Content-Type'] = 'application/json';
  } else if (opts.raw !== undefined) {
    body = opts.raw;
    headers['Content-Type'] = opts.ctype || 'application/json';
  }
  const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(30000) });
  const text = await res.text();
  const ctype = (res.headers.get('content-type') || '').split(';')[0].trim();
  const where = `${method} ${p} -> ${res.status}`;
  checks++;
  if (!t) {
    fail(`${where}: no such operation in the document`);
    return { status: res.status, headers: res.headers, body: text };
  }
  const op = doc.paths[t][m];
  const key = `${m} ${t}`;
  if (!seen.has(key)) seen.set(key, new Set());
  seen.get(key).add(res.status);
  if (opts.body !== undefined && !opts.bad) {
    const rb = deref(op.requestBody);
    if (!rb || !rb.content || !rb.content['application/json'])
      fail(`${where}: the document has no JSON request body`);
    else {
      const rbPtr = op.requestBody.$ref ? op.requestBody.$ref.slice(1)
        : `/paths/${ptr(t)}/${m}/requestBody`;
      const v = validator(`${rbPtr}/content/application~1json/schema`);
      if (!v(opts.body))
        fail(`${where}: request body not as documented: ${ajv.errorsText(v.errors)}: ${body}`);
    }
  }
  if (!op.responses[String(res.status)]) {
    fail(`${where}: status not documented (${Object.keys(op.responses)}): ${text.slice(0, 300)}`);
    return { status: res.status, headers: res.headers, body: text };
  }
  const resp = deref(op.responses[String(res.status)]);
  let parsed = text;
  if (!resp.content) {
    if (text.length && m !== 'head') fail(`${where}: body where the document has none: ${text}`);
  } else {
    const media = Object.keys(resp.content).find((c) => c.split(';')[0].trim() === ctype);
    if (!media) {
      fail(`${where}: content type ${ctype} not documented (${Object.keys(resp.content)})`);
    } else if (ctype === 'application/json' || ctype === 'application/schema+json') {
      try {
        parsed = JSON.parse(text);
      } catch (e) {
        fail(`${where}: not JSON: ${text.slice(0, 200)}`);
      }
      const respPtr = op.responses[String(res.status)].$ref
        ? op.responses[String(res.status)].$ref.slice(1)
        : `/paths/${ptr(t)}/${m}/responses/${res.status}`;
      const v = validator(`${respPtr}/content/${ptr(media)}/schema`);
      if (!v(parsed))
        fail(`${where}: body not as documented: ${ajv.errorsText(v.errors)}: ${text.slice(0, 600)}`);
    }
  }
  if (!res.headers.get('date')) fail(`${where}: no Date header`);
  if (!res.headers.get('x-request-id')) fail(`${where}: no X-Request-Id header`);
  return { status: res.status, headers: res.headers, body: parsed };
}

const expect = (r, status, what) => {
  if (r.status !== status) fail(`${what}: got ${r.status}, want ${status}: ${JSON.stringify(r.body).slice(0, 300)}`);
  return r;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitRun(id, states) {
  for (let i = 0; i < 600; i++) {
    const r = await call('GET', `/v1/runs/${id}`);
    if (states.includes(r.body.state)) return r.body;
    await sleep(25);
  }
  fail(`run ${id} never reached ${states}`);
  return null;
}

// ------------------------------------------------------------------------------ the routes --

expect(await call('GET', '/healthz', { key: null }), 200, 'healthz');
expect(await call('GET', '/readyz', { key: null }), 200, 'readyz');
expect(await call('GET', '/metrics'), 200, 'metrics');
expect(await call('GET', '/metrics', { key: null }), 401, 'metrics without a key');
expect(await call('GET', '/v1/openapi.json', { key: null }), 200, 'openapi');
expect(await call('GET', '/v1/schemas/workflow.json', { key: null }), 200, 'schema');

// workflows
const hello = {
  name: 'hello',
  steps: [
    { key: 'wait', kind: 'wait_event', input: { event: 'go', key: '{{input.name}}' } },
    { key: 'greet', kind: 'transform', needs: ['wait'], concurrency_key: 'greet-{{input.name}}', input: { text: 'hi {{input.name}}' } },
  ],
};
expect(await call('PUT', '/v1/workflows/hello', { body: hello }), 201, 'register');
expect(await call('PUT', '/v1/workflows/hello', { body: hello }), 200, 'register again');
expect(await call('PUT', '/v1/workflows/nameless', { body: { steps: [{ key: 'a', kind: 'transform', input: {} }] } }), 201, 'register without a name in the body');
expect(await call('PUT', '/v1/workflows/bad', { body: { name: 'bad', steps: [{ key: 'a', kind: 'nope' }] }, bad: true }), 422, 'bad definition');
expect(await call('PUT', '/v1/workflows/bad', { raw: '{"steps": ' }), 400, 'bad JSON');
expect(await call('PUT', '/v1/workflows/bad', { raw: 'x=1', ctype: 'text/plain' }), 415, 'bad media type');
expect(await call('PUT', '/v1/workflows/hello', { body: hello, key: 'fd_nobody' }), 401, 'bad key');
expect(await call('GET', '/v1/workflows'), 200, 'workflows');
expect(await call('GET', '/v1/workflows?verbose=1'), 400, 'unknown query parameter');
expect(await call('GET', '/v1/workflows/hello'), 200, 'workflow');
expect(await call('GET', '/v1/workflows/hello?version=1'), 200, 'workflow version');
expect(await call('GET', '/v1/workflows/hello?version=x'), 400, 'bad version');
expect(await call('GET', '/v1/workflows/nope'), 404, 'no workflow');

// runs
const created = expect(await call('POST', '/v1/runs', {
  body: { workflow: 'hello', input: { name: 'ada' } }, headers: { 'Idempotency-Key': 'ik-1' },
}), 201, 'enqueue').body;
expect(await call('POST', '/v1/runs', {
  body: { workflow: 'hello', input: { name: 'ada' } }, headers: { 'Idempotency-Key': 'ik-1' },
}), 200, 'enqueue again');
expect(await call('POST', '/v1/runs', {
  body: { workflow: 'hello', input: { name: 'bob' } }, headers: { 'Idempotency-Key': 'ik-1' },
}), 409, 'idempotency conflict');
expect(await call('POST', '/v1/runs', { body: { workflow: 'nope' } }), 404, 'unknown workflow');
expect(await call('POST', '/v1/runs', { body: { workflow: 5 }, bad: true }), 422, 'bad enqueue');
expect(await call('POST', '/v1/runs', { body: { workflow: 'hello', colour: 1 }, bad: true }), 422, 'unknown field');
const run = created.id;
await waitRun(run, ['running']);
expect(await call('GET', `/v1/runs/${run}`), 200, 'run');
{ // a second run of the name: its keyed step queues behind the first run's
  const second = expect(await call('POST', '/v1/runs', { body: { workflow: 'hello', input: { name: 'ada' } } }), 201, 'enqueue behind a key').body;
  const got = expect(await call('GET', `/v1/runs/${second.id}`), 200, 'run queued behind a key').body;
  const ck = got && got.steps.find((st) => st.key === 'greet').concurrency_key;
  if (!ck || ck.key !== 'greet-ada' || !ck.queued_behind || ck.queued_behind.run !== run || ck.queued_behind.step !== 'greet')
    fail(`the greet step of run ${second.id} does not queue behind run ${run}'s: ${JSON.stringify(ck)}`);
}
{ // a map step's answer carries its items' progress
  const shout = {
    name: 'shout_all',
    steps: [{ key: 'each', kind: 'map', input: { items: '{{input.names}}', concurrency: 2,
      step: { kind: 'transform', input: { loud: '{{item}}!' } } } }],
  };
  expect(await call('PUT', '/v1/workflows/shout_all', { body: shout }), 201, 'register a map');
  const mapped = expect(await call('POST', '/v1/runs', { body: { workflow: 'shout_all', input: { names: ['ada', 'grace'] } } }),
    201, 'enqueue a map').body;
  await waitRun(mapped.id, ['succeeded']);
  const got = expect(await call('GET', `/v1/runs/${mapped.id}`), 200, 'run with a map step').body;
  const items = got && got.steps[0].items;
  if (!items || items.total !== 2 || items.done !== 2 || items.succeeded !== 2)
    fail(`the map step of run ${mapped.id} reports its items as ${JSON.stringify(items)}`);
}
expect(await call('GET', '/v1/runs/99999999'), 404, 'no run');
expect(await call('GET', '/v1/runs/99999999999999999999'), 404, 'id out of range');
expect(await call('GET', `/v1/runs/${run}/sequencer.csv`), 409, 'export of a running run');
expect(await call('GET', `/v1/runs/${run}/events`), 200, 'events');
expect(await call('GET', `/v1/runs/${run}/events?after=x`), 400, 'bad after');
expect(await call('GET', '/v1/runs?limit=2'), 200, 'runs');
expect(await call('GET', '/v1/runs?workflow=hello&state=running'), 200, 'runs by state');
expect(await call('GET', '/v1/runs?limit=0'), 400, 'bad limit');

// run metadata: a workflow's search paths and a client's tags, found with ?meta.NAME=VALUE
const lead = {
  name: 'lead', search: { lead: '{{input.lead.id}}', phone: '{{input.lead.phone}}' },
  steps: [{ key: 'touch', kind: 'transform', input: { text: 'hi {{input.lead.id}}' } }],
};
expect(await call('PUT', '/v1/workflows/lead', { body: lead }), 201, 'register with search');
expect(await call('PUT', '/v1/workflows/lead2', {
  body: { ...lead, name: 'lead2', search: { lead: '{{run.id}}' } }, bad: true,
}), 422, 'search reading no input');
const tagged = expect(await call('POST', '/v1/runs', {
  body: { workflow: 'lead', input: { lead: { id: 30012, phone: '+15555550123' } },
    tags: { campaign: 'spring', lead: 'not-this' } },
}), 201, 'enqueue with tags').body;
if (JSON.stringify(Object.entries(tagged.meta).sort()) !==
    JSON.stringify([['campaign', 'spring'], ['lead', '30012'], ['phone', '+15555550123']]))
  fail(`run metadata: ${JSON.stringify(tagged.meta)}`);
expect(await call('POST', '/v1/runs', { body: { workflow: 'lead', input: { lead: { id: '30013' } } } }),
  201, 'enqueue without a phone');
expect(await call('POST', '/v1/runs', { body: { workflow: 'lead', input: {}, tags: { 'no spaces': 'x' } }, bad: true }),
  422, 'bad tag name');
expect(await call('POST', '/v1/runs', { body: { workflow: 'lead', input: {}, tags: { a: 5 } }, bad: true }),
  422, 'bad tag value');
await waitRun(tagged.id, ['succeeded']);
const byLead = expect(await call('GET', '/v1/runs?meta.lead=30012'), 200, 'runs by metadata').body;
if (byLead.runs.length !== 1 || byLead.runs[0].id !== tagged.id)
  fail(`?meta.lead=30012 found ${JSON.stringify(byLead.runs.map((r) => r.id))}, want [${tagged.id}]`);
const both = expect(await call('GET',
  `/v1/runs?meta.lead=30012&meta.campaign=spring&workflow=lead&version=1&state=succeeded&created_after=2000-01-01T00:00:00Z&finished_before=2999-01-01T00:00:00Z`),
  200, 'runs by every filter').body;
if (both.runs.length !== 1) fail(`combined filters found ${both.runs.length} runs, want 1`);
const none = expect(await call('GET', '/v1/runs?meta.lead=30012&meta.campaign=autumn'), 200, 'no such runs').body;
if (none.runs.length !== 0) fail('?meta.campaign=autumn found runs');
const searched = expect(await call('GET', '/v1/runs?q=%2B1555555&state=succeeded&limit=5'), 200,
  'free search on metadata').body;
if (searched.runs.length !== 1 || searched.runs[0].id !== tagged.id)
  fail(`?q=+1555555 found ${JSON.stringify(searched.runs.map((r) => r.id))}, want [${tagged.id}]`);
expect(await call('GET', '/v1/runs/counts?q=SPR'), 200, 'counts of a free search');
expect(await call('GET', '/v1/runs?q='), 400, 'an empty free search');
expect(await call('GET', '/v1/runs?meta.lead=1&meta.lead=2'), 400, 'a metadata filter twice');
expect(await call('GET', '/v1/runs?meta.a%20b=1'), 400, 'a bad metadata name');
expect(await call('GET', '/v1/runs?created_after=yesterday'), 400, 'a bad time');
expect(await call('GET', '/v1/runs?parent=x'), 400, 'a bad parent');
expect(await call('GET', '/v1/runs?failed_step=touch'), 200, 'runs by failed step');
const bySchedule = expect(await call('GET', '/v1/runs?schedule=nightly&meta.lead=30012'), 200, 'runs by schedule').body;
if (bySchedule.runs.length !== 0) fail('?schedule=nightly found runs no schedule started');
expect(await call('GET', '/v1/runs?state=scheduled&workflow=lead'), 200, 'scheduled runs');
const counts = expect(await call('GET', '/v1/runs/counts?workflow=lead'), 200, 'counts').body;
if (counts.succeeded + counts.running + counts.queued !== 2 || counts.capped)
  fail(`counts of lead: ${JSON.stringify(counts)}`);
expect(await call('GET', '/v1/runs/counts?limit=5'), 400, 'counts take no limit');
expect(await call('GET', `/v1/runs/${tagged.id}/sends`), 200, 'a run\'s sends');
expect(await call('GET', '/v1/runs/99999999/sends'), 404, 'sends of no run');

// the console: its files, and sessions that trade a key for a cookie
expect(await call('GET', '/', { key: null }), 200, 'console page');
expect(await call('GET', '/console/app.js', { key: null }), 200, 'console script');
expect(await call('GET', '/console/app.css', { key: null }), 200, 'console styles');
expect(await call('GET', '/console/nope.js', { key: null }), 404, 'no such console file');
expect(await call('POST', '/v1/console/session', { key: null, body: { key: 'fd_nobody' } }), 401, 'sign in with a bad key');
expect(await call('POST', '/v1/console/session', { key: null, body: { key: 5 }, bad: true }), 422, 'sign in without a key');
const signedIn = expect(await call('POST', '/v1/console/session', { key: null, body: { key: KEY } }), 201, 'sign in');
const cookie = (signedIn.headers.get('set-cookie') || '').split(';')[0];
if (!/^flowd_session=[0-9a-f]{64}$/.test(cookie) || !/HttpOnly/.test(signedIn.headers.get('set-cookie')) ||
    !/SameSite=Strict/.test(signedIn.headers.get('set-cookie')))
  fail(`session cookie: ${signedIn.headers.get('set-cookie')}`);
const who = expect(await call('GET', '/v1/console/session', { key: null, headers: { Cookie: cookie } }), 200, 'who with a session').body;
if (who.csrf !== signedIn.body.csrf) fail('the session\'s csrf value is not given back');
expect(await call('GET', '/v1/console/session'), 200, 'who with a key');
expect(await call('GET', '/v1/console/session', { key: null }), 401, 'who without credentials');
expect(await call('DELETE', '/v1/console/session'), 404, 'sign out with a key');
expect(await call('DELETE', '/v1/console/session', { key: null, headers: { Cookie: cookie } }), 403, 'sign out without the csrf value');
expect(await call('DELETE', '/v1/console/session', { key: null, headers: { Cookie: cookie, 'X-CSRF-Token': who.csrf } }), 204, 'sign out');
expect(await call('POST', '/v1/events', { body: { name: 'go', key: 'ada', data: { ok: true } } }), 202, 'event');
expect(await call('POST', '/v1/events', { body: { name: 'go', key: {} }, bad: true }), 422, 'bad event');
const done = await waitRun(run, ['succeeded', 'failed']);
if (done && done.state !== 'succeeded') fail(`run ${run} ${done.state}`);
expect(await call('GET', `/v1/runs/${run}`), 200, 'finished run');
{ // the event stream of a finished run: every data: line is a documented event, then 204
  const r = expect(await call('GET', `/v1/runs/${run}/events`, { headers: { Accept: 'text/event-stream' } }), 200, 'event stream');
  const one = validator('/components/schemas/RunEvents/properties/events/items');
  let last = null, n = 0;
  for (const block of String(r.body).split('\n\n')) {
    const lines = block.split('\n').filter((l) => l && !l.startsWith(':'));
    if (!lines.length) continue;
    const field = (k) => lines.filter((l) => l.startsWith(`${k}:`)).map((l) => l.slice(k.length + 1).trim());
    const other = lines.filter((l) => !/^(id|event|data|retry):/.test(l));
    if (other.length) fail(`event stream: lines that are no SSE field: ${other}`);
    if (!field('data').length) continue; // the retry: advice
    const data = JSON.parse(field('data').join('\n'));
    n++;
    if (!one(data)) fail(`event stream: event not as documented: ${ajv.errorsText(one.errors)}: ${block}`);
    if (String(data.seq) !== field('id')[0] || data.type !== field('event')[0])
      fail(`event stream: id/event lines do not match the data: ${block}`);
    last = field('id')[0];
  }
  if (n < 3) fail(`event stream: ${n} events`);
  expect(await call('GET', `/v1/runs/${run}/events`, { headers: { Accept: 'text/event-stream', 'Last-Event-ID': last } }), 204, 'event stream resumed at its end');
}
expect(await call('GET', `/v1/runs/${run}/sequencer.csv`), 200, 'export');
expect(await call('POST', `/v1/runs/${run}/cancel`), 409, 'cancel a finished run');
expect(await call('POST', `/v1/runs/${run}/retry`), 409, 'retry a succeeded run');
const other = expect(await call('POST', '/v1/runs', { body: { workflow: 'hello', input: { name: 'cy' } } }), 201, 'enqueue').body;
expect(await call('POST', `/v1/runs/${other.id}/cancel`), 200, 'cancel');
expect(await call('POST', `/v1/runs/${other.id}/retry`), 200, 'retry a cancelled run');
expect(await call('POST', '/v1/runs/99999999/cancel'), 404, 'cancel nothing');
{ // a delayed start: scheduled until its time, cancellable
  const later = expect(await call('POST', '/v1/runs', { body: { workflow: 'hello', input: { name: 'dz' }, start_in: '2h' } }), 201, 'enqueue for later').body;
  if (later.state !== 'scheduled' || !later.start_at) fail(`a delayed run is ${later.state} at ${later.start_at}`);
  expect(await call('GET', '/v1/runs?state=scheduled'), 200, 'runs scheduled');
  expect(await call('POST', `/v1/runs/${later.id}/cancel`), 200, 'cancel a scheduled run');
  expect(await call('POST', '/v1/runs', { body: { workflow: 'hello', start_at: '2027-02-30T09:00:00Z' }, bad: true }), 422, 'a day that does not exist');
  expect(await call('POST', '/v1/batches', { body: { workflow: 'hello', inputs: [{ name: 'dy' }], start_at: '2030-01-01T09:00:00+01:00' } }), 201, 'batch for later');
  expect(await call('POST', '/v1/batches', { body: { workflow: 'hello', inputs: [{ name: 'dy' }], start_in: 'soon' }, bad: true }), 422, 'bad start_in');
}

expect(await call('POST', '/v1/test/clock', { body: { advance: '1m' } }), 200, 'clock');
expect(await call('POST', '/v1/test/clock', { body: { advance: 'soon' }, bad: true }), 422, 'bad clock');

// a failed run's answer, with its error
expect(await call('PUT', '/v1/workflows/broken', { body: {
  name: 'broken', steps: [{ key: 'call', kind: 'http', retry: { max_attempts: 1 }, input: { method: 'GET', url: 'http://127.0.0.1:9/' } }],
} }), 201, 'register broken');
const broken = expect(await call('POST', '/v1/runs', { body: { workflow: 'broken' } }), 201, 'enqueue broken').body;
await waitRun(broken.id, ['failed']);

// batches
const batch = expect(await call('POST', '/v1/batches', {
  body: { workflow: 'hello', inputs: [{ name: 'b1' }, { name: 'b2' }] },
}), 201, 'batch').body;
expect(await call('POST', '/v1/batches', { body: { workflow: 'hello', inputs: 'x' }, bad: true }), 422, 'bad batch');
expect(await call('GET', `/v1/batches/${batch.id}`), 200, 'batch');
expect(await call('GET', '/v1/batches/99999999'), 404, 'no batch');
{ // the list: newest first, paged with ?before
  const page = expect(await call('GET', '/v1/batches?limit=1'), 200, 'batches').body;
  if (page.batches.length !== 1 || page.batches[0].id !== batch.id)
    fail(`batches: the newest is not first: ${JSON.stringify(page).slice(0, 300)}`);
  const older = expect(await call('GET', `/v1/batches?before=${batch.id}`), 200, 'older batches').body;
  if (older.batches.some((b) => b.id >= batch.id)) fail(`batches?before: ${JSON.stringify(older).slice(0, 300)}`);
  expect(await call('GET', '/v1/batches?limit=101'), 400, 'batches limit too big');
}
expect(await call('GET', `/v1/batches/${batch.id}/results`), 200, 'results');
expect(await call('GET', `/v1/batches/${batch.id}/results?format=csv`), 200, 'results csv');
expect(await call('GET', `/v1/batches/${batch.id}/results?format=xml`), 400, 'bad format');

// outbox: an email through the sandbox
expect(await call('PUT', '/v1/workflows/mail', { body: {
  name: 'mail', steps: [{ key: 'send', kind: 'email', input: { to: 'ada@example.com', from: 'me@example.com', subject: 's', text: 't' } }],
} }), 201, 'register mail');
const mail = expect(await call('POST', '/v1/runs', { body: { workflow: 'mail' } }), 201, 'enqueue mail').body;
await waitRun(mail.id, ['succeeded', 'failed']);
{ // a run's steps with the input each was given: the email's is kept apart from its outcome
  let given = null;
  for (let i = 0; i < 100 && !given; i++) {
    given = expect(await call('GET', `/v1/runs/${mail.id}/steps`), 200, 'a run\'s steps').body.steps[0].rendered_input;
    if (!given) await new Promise((r) => setTimeout(r, 50));
  }
  if (!given || given.input.to !== 'ada@example.com') fail(`the email's rendered input: ${JSON.stringify(given)}`);
  expect(await call('GET', '/v1/runs/99999999/steps'), 404, 'no run\'s steps');
}
expect(await call('GET', `/v1/outbox?run=${mail.id}`), 200, 'outbox');
expect(await call('GET', '/v1/outbox?limit=x'), 400, 'bad outbox');
expect(await call('POST', '/v1/sends/nope/outcome', { body: { outcome: 'sent' } }), 404, 'no send');

// tenants, keys, limits, suppressions
const tenant = expect(await call('POST', '/v1/tenants', { body: { name: 'acme' } }), 201, 'tenant').body;
expect(await call('POST', '/v1/tenants', { body: { name: 'acme' } }), 409, 'tenant twice');
expect(await call('POST', '/v1/tenants', { body: { name: 'x', colour: 1 }, bad: true }), 422, 'bad tenant');
const key = expect(await call('POST', '/v1/keys', { body: { tenant: 'acme' } }), 201, 'key').body;
expect(await call('POST', '/v1/keys', { body: { tenant: 'nobody' } }), 404, 'key for nobody');
expect(await call('DELETE', `/v1/keys/${key.id}`), 204, 'revoke');
expect(await call('DELETE', '/v1/keys/99999999'), 404, 'revoke nothing');
void tenant;
{ // quotas: acme may start one run a month; the second is refused 429 quota_exceeded
  expect(await call('GET', '/v1/tenants/acme/quotas'), 200, 'quotas');
  expect(await call('PUT', '/v1/tenants/acme/quotas', { body: { runs_per_month: -1 }, bad: true }), 422, 'bad quota');
  expect(await call('PUT', '/v1/tenants/nobody/quotas', { body: { runs_per_month: 1 } }), 404, 'quota of nobody');
  expect(await call('GET', '/v1/tenants/nobody/quotas'), 404, 'quotas of nobody');
  expect(await call('PUT', '/v1/tenants/default/quotas', { body: { runs_per_month: 0 } }), 200, 'quota');
  const refused = expect(await call('POST', '/v1/runs', { body: { workflow: 'mail' } }), 429, 'over quota');
  if (refused.body?.error?.code !== 'quota_exceeded' || refused.headers.get('x-quota-name') !== 'runs_per_month')
    fail(`over quota: ${JSON.stringify(refused.body)}`);
  expect(await call('PUT', '/v1/tenants/default/quotas', { body: { runs_per_month: null } }), 200, 'no quota');
}
expect(await call('PUT', '/v1/rate-limits/smtp', { body: { requests_per_s: 5 } }), 201, 'limit');
expect(await call('PUT', '/v1/rate-limits/smtp', { body: { requests_per_s: 6 } }), 200, 'limit again');
expect(await call('PUT', '/v1/rate-limits/smtp', { body: { per_day: 6 }, bad: true }), 422, 'bad limit');
{ // a limit never taken from has its whole burst left
  const l = expect(await call('GET', '/v1/rate-limits'), 200, 'limits').body.rate_limits.find((x) => x.name === 'smtp');
  if (!l || l.budget.requests !== 6 || l.budget.burst_requests !== 6 || l.budget.tokens !== null || l.budget.taken_at !== null)
    fail(`limits: the budget of an untouched limit: ${JSON.stringify(l)}`);
}
expect(await call('DELETE', '/v1/rate-limits/smtp'), 204, 'drop limit');
expect(await call('DELETE', '/v1/rate-limits/smtp'), 404, 'drop no limit');
{ // the process registry (the operator's admin keys only) and the tenant's queue
  const w = expect(await call('GET', '/v1/workers'), 200, 'workers').body;
  const me = w.processes.find((p) => p.listen === new URL(base).host);
  if (!me || me.state !== 'up' || me.workers.length !== 1 || !me.workers[0].tick || !me.webhooks)
    fail(`workers: this server is not listed as up with its one worker: ${JSON.stringify(w)}`);
  const other = expect(await call('POST', '/v1/keys', { body: { tenant: 'acme', role: 'admin' } }), 201, 'acme admin key').body;
  expect(await call('GET', '/v1/workers', { key: other.key }), 404, 'workers for another tenant\'s admin');
  const q = expect(await call('GET', '/v1/queue', { key: other.key }), 200, 'queue of acme').body;
  if (q.workflows.length !== 0 || q.due !== 0) fail(`acme's queue holds another tenant's steps: ${JSON.stringify(q)}`);
  expect(await call('DELETE', `/v1/keys/${other.id}`), 204, 'revoke acme admin key');
  const mine = expect(await call('GET', '/v1/queue'), 200, 'queue').body;
  if (mine.minutes.length !== 60 || mine.minutes.reduce((n, m) => n + m.created, 0) < 1)
    fail(`queue: the last hour shows none of this test's runs: ${JSON.stringify(mine.minutes.slice(-3))}`);
}
{ // usage and prices: the mail run above sent one message (sandbox: no cost)
  const u = expect(await call('GET', '/v1/usage?group_by=channel'), 200, 'usage').body;
  if (!u.groups || !u.groups.some((g) => g.key === 'email' && g.sends.messages >= 1))
    fail(`usage by channel misses the email sent: ${JSON.stringify(u)}`);
  expect(await call('GET', '/v1/usage?group_by=run&limit=5&format=csv'), 200, 'usage csv');
  expect(await call('GET', '/v1/usage?from=2026-02-30'), 400, 'bad usage');
  expect(await call('PUT', '/v1/prices', { body: { model: 'gpt-4o-mini', input_usd_per_mtok: 0.2, output_usd_per_mtok: 0.8 } }), 201, 'price');
  expect(await call('PUT', '/v1/prices', { body: { channel: 'sms', usd_per_message: 0.01, provider: 'twilio', effective_from: '2099-01-01' } }), 201, 'future price');
  expect(await call('PUT', '/v1/prices', { body: { channel: 'sms', input_usd_per_mtok: 1 }, bad: true }), 422, 'bad price');
  expect(await call('GET', '/v1/prices'), 200, 'prices');
}
{ // the tenant's own provider account: the secret comes back masked only
  const secret = 'sk-contract-provider-secret-9876';
  const put = expect(await call('PUT', '/v1/providers/openai', { body: { api_key: secret, base_url: 'https://llm.example.com/v1' } }), 201, 'provider');
  expect(await call('PUT', '/v1/providers/openai', { body: { api_key: secret } }), 200, 'provider again');
  expect(await call('PUT', '/v1/providers/openai', { body: { token: 'x' }, bad: true }), 422, 'bad provider field');
  const list = expect(await call('GET', '/v1/providers'), 200, 'providers');
  if (JSON.stringify([put.body, list.body]).includes(secret)) fail('a provider secret came back in full');
  expect(await call('DELETE', '/v1/providers/openai'), 204, 'drop provider');
  expect(await call('DELETE', '/v1/providers/openai'), 404, 'drop no provider');
}
{ // schedules: a run of hello per tick (it waits for the event go/<name>, so overlap skip bites)
  const digest = { workflow: 'hello', cron: '0 8 * * MON-FRI', tz: 'Europe/Berlin',
    input: { name: '{{schedule.name}}' }, overlap: 'skip', catchup: 'latest', jitter: '1m' };
  expect(await call('PUT', '/v1/schedules/digest', { body: digest }), 201, 'schedule');
  const again = expect(await call('PUT', '/v1/schedules/digest', { body: { ...digest, paused: false } }), 200, 'schedule again').body;
  if (!again.next_fires || again.next_fires.length !== 10) fail(`schedule without its next 10 ticks: ${JSON.stringify(again)}`);
  expect(await call('PUT', '/v1/schedules/poll', { body: { workflow: 'hello', every: '30s', input: { name: 'p' }, paused: true } }), 201, 'interval schedule');
  expect(await call('PUT', '/v1/schedules/digest', { body: { ...digest, cron: '0 25 * * *' }, bad: true }), 422, 'bad schedule');
  expect(await call('PUT', '/v1/schedules/digest', { body: { ...digest, input: {} }, bad: true }), 422, 'schedule input refused by the workflow');
  expect(await call('PUT', '/v1/schedules/digest', { raw: '{"workflow": ' }), 400, 'bad schedule JSON');
  expect(await call('GET', '/v1/schedules/digest'), 200, 'schedule');
  expect(await call('GET', '/v1/schedules/nope'), 404, 'no schedule');
  expect(await call('GET', '/v1/schedules'), 200, 'schedules');
  expect(await call('POST', '/v1/schedules/digest/pause'), 200, 'pause');
  expect(await call('POST', '/v1/schedules/digest/resume'), 200, 'resume');
  expect(await call('POST', '/v1/schedules/nope/pause'), 404, 'pause nothing');
  expect(await call('POST', '/v1/schedules/nope/resume'), 404, 'resume nothing');
  expect(await call('POST', '/v1/schedules/digest/trigger'), 201, 'trigger');
  expect(await call('POST', '/v1/schedules/digest/trigger'), 409, 'trigger while its run waits');
  expect(await call('POST', '/v1/schedules/nope/trigger'), 404, 'trigger nothing');
  expect(await call('DELETE', '/v1/schedules/digest'), 204, 'drop schedule');
  expect(await call('DELETE', '/v1/schedules/digest'), 404, 'drop no schedule');
}
expect(await call('POST', '/v1/suppressions', { body: { channel: 'email', address: 'x@example.com', reason: 'asked' } }), 201, 'suppress');
expect(await call('POST', '/v1/suppressions', { body: { channel: 'email', address: 'x@example.com', reason: 'asked' } }), 200, 'suppress again');
expect(await call('POST', '/v1/suppressions', { body: { channel: 'fax', address: 'x' }, bad: true }), 422, 'bad suppression');
expect(await call('GET', '/v1/suppressions?channel=email'), 200, 'suppressions');
expect(await call('GET', '/v1/suppressions?limit=0'), 400, 'bad suppressions');
expect(await call('DELETE', '/v1/suppressions/email/x@example.com'), 204, 'unsuppress');
expect(await call('DELETE', '/v1/suppressions/email/x@example.com'), 404, 'unsuppress nothing');

// provider webhooks refuse what they cannot verify
expect(await call('POST', '/v1/hooks/twilio?tenant=1', { raw: 'MessageSid=SM1', ctype: 'application/x-www-form-urlencoded', key: null }), 401, 'twilio');
expect(await call('POST', '/v1/hooks/twilio?tenant=x', { raw: 'MessageSid=SM1', ctype: 'application/x-www-form-urlencoded', key: null }), 400, 'twilio with a bad tenant');
expect(await call('POST', '/v1/hooks/sendgrid?tenant=1', { raw: '[]', key: null }), 401, 'sendgrid');
expect(await call('POST', '/v1/hooks/whatsapp?tenant=1', { raw: '{}', key: null }), 401, 'whatsapp');
expect(await call('GET', '/v1/hooks/whatsapp?tenant=1&hub.mode=subscribe&hub.verify_token=x&hub.challenge=1', { key: null }), 403, 'whatsapp verify');

{ // a signed SendGrid event webhook: the signature covers timestamp + body
  const body = JSON.stringify([{ email: 'x@example.com', event: 'delivered', sg_message_id: 'sg-contract.1', timestamp: 1 }]);
  const ts = String(Math.floor(Date.now() / 1000));
  const sig = crypto.sign('sha256', Buffer.from(ts + body), sendgridKeys.privateKey).toString('base64');
  expect(await call('POST', '/v1/hooks/sendgrid?tenant=1', {
    raw: body, key: null,
    headers: { 'X-Twilio-Email-Event-Webhook-Signature': sig, 'X-Twilio-Email-Event-Webhook-Timestamp': ts },
  }), 200, 'signed sendgrid');
}
{ // a signed WhatsApp notification, and the subscription check
  const body = JSON.stringify({ object: 'whatsapp_business_account', entry: [{ id: '1', changes: [{ field: 'messages', value: {
    statuses: [{ id: 'wamid.contract', status: 'delivered', timestamp: '1', recipient_id: '15550001111' }] } }] }] });
  const sig = 'sha256=' + crypto.createHmac('sha256', WHATSAPP_SECRET).update(body).digest('hex');
  expect(await call('POST', '/v1/hooks/whatsapp?tenant=1', { raw: body, key: null, headers: { 'X-Hub-Signature-256': sig } }), 200, 'signed whatsapp');
  const v = expect(await call('GET', `/v1/hooks/whatsapp?tenant=1&hub.mode=subscribe&hub.verify_token=${WHATSAPP_VERIFY}&hub.challenge=1158201444`, { key: null }), 200, 'whatsapp verified');
  if (v.body !== '1158201444') fail(`whatsapp verify answered ${v.body}`);
}
{ // a signed Twilio status callback (the URL as Twilio reaches us: FLOWD_PUBLIC_URL)
  const form = { MessageSid: 'SM0123', MessageStatus: 'delivered' };
  const signed = `${PUBLIC_URL}/v1/hooks/twilio?tenant=1` +
    Object.keys(form).sort().map((k) => k + form[k]).join('');
  const sig = crypto.createHmac('sha1', TWILIO_TOKEN).update(signed).digest('base64');
  expect(await call('POST', '/v1/hooks/twilio?tenant=1', {
    raw: new URLSearchParams(form).toString(), ctype: 'application/x-www-form-urlencoded', key: null,
    headers: { 'X-Twilio-Signature': sig },
  }), 200, 'signed twilio');
}

{ // inbound custom hooks: configuration, and signed, corrupted and replayed deliveries
  const secret = 'contract-hook-secret';
  const def = { verify: { hmac: 'sha256', header: 'X-Signature', encoding: 'hex', prefix: 'sha256=', secret },
    event: { name: 'crm.order', key: '{{body.order_id}}' } };
  const h = expect(await call('PUT', '/v1/hooks/custom/crm', { body: def }), 201, 'custom hook').body;
  if (!h.verify || h.verify.secret !== undefined || h.verify.secret_set !== true) fail(`a custom hook shows its secret or not secret_set: ${JSON.stringify(h)}`);
  expect(await call('PUT', '/v1/hooks/custom/crm', { body: def }), 200, 'custom hook replaced');
  expect(await call('PUT', '/v1/hooks/custom/crm', { body: { ...def, verify: { hmac: 'md5', header: 'X', secret } }, bad: true }), 422, 'bad custom hook');
  expect(await call('PUT', '/v1/hooks/custom/sw', { body: { verify: { standard_webhooks: true, secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' }, event: { name: 'crm.order', key: '{{body.id}}', data: { id: '{{body.id}}' } } } }), 201, 'standard webhooks hook');
  expect(await call('GET', '/v1/hooks/custom'), 200, 'custom hooks');
  expect(await call('GET', '/v1/hooks/custom/crm'), 200, 'custom hook get');
  expect(await call('GET', '/v1/hooks/custom/nope'), 404, 'no custom hook');
  const body = JSON.stringify({ order_id: 'C-1', total: 12 });
  const sig = 'sha256=' + crypto.createHmac('sha256', secret).update(body).digest('hex');
  expect(await call('POST', '/v1/hooks/custom/crm?tenant=1', { raw: body, key: null, headers: { 'X-Signature': 'sha256=00' } }), 401, 'custom hook corrupted');
  expect(await call('POST', '/v1/hooks/custom/crm?tenant=x', { raw: body, key: null, headers: { 'X-Signature': sig } }), 400, 'custom hook with a bad tenant');
  expect(await call('POST', '/v1/hooks/custom/nope?tenant=1', { raw: body, key: null, headers: { 'X-Signature': sig } }), 404, 'delivery to no hook');
  const first = expect(await call('POST', '/v1/hooks/custom/crm?tenant=1', { raw: body, key: null, headers: { 'X-Signature': sig } }), 200, 'custom hook delivery').body;
  const again = expect(await call('POST', '/v1/hooks/custom/crm?tenant=1', { raw: body, key: null, headers: { 'X-Signature': sig } }), 200, 'custom hook replay').body;
  if (first.duplicate !== false || again.duplicate !== true) fail(`custom hook dedup: ${JSON.stringify([first, again])}`);
  const odd = '{"total": 1}';
  const oddSig = 'sha256=' + crypto.createHmac('sha256', secret).update(odd).digest('hex');
  expect(await call('POST', '/v1/hooks/custom/crm?tenant=1', { raw: odd, key: null, headers: { 'X-Signature': oddSig } }), 422, 'custom hook delivery without its key');
  expect(await call('DELETE', '/v1/hooks/custom/crm'), 204, 'drop custom hook');
  expect(await call('DELETE', '/v1/hooks/custom/crm'), 404, 'drop no custom hook');
}

{ // outbound webhooks: endpoints (the target need not answer: deliveries are only listed here)
  const ep = expect(await call('POST', '/v1/webhook-endpoints', { body: { url: 'https://hooks.example.com/flowd', events: ['run.succeeded', 'run.failed'], description: 'ops' } }), 201, 'webhook endpoint').body;
  if (!/^whsec_/.test(ep.secret || '')) fail('a new webhook endpoint has no whsec_ secret');
  expect(await call('POST', '/v1/webhook-endpoints', { body: { url: 'http://127.0.0.1/x' }, bad: true }), 422, 'private webhook url');
  expect(await call('POST', '/v1/webhook-endpoints', { body: { url: 'https://hooks.example.com/', events: ['run.exploded'] }, bad: true }), 422, 'bad webhook event');
  expect(await call('GET', '/v1/webhook-endpoints'), 200, 'webhook endpoints');
  const got = expect(await call('GET', `/v1/webhook-endpoints/${ep.id}`), 200, 'webhook endpoint get').body;
  if (got.secret !== undefined) fail('GET of a webhook endpoint shows its secret');
  expect(await call('GET', '/v1/webhook-endpoints/99999999'), 404, 'no webhook endpoint');
  expect(await call('PATCH', `/v1/webhook-endpoints/${ep.id}`, { body: { workflows: ['hello'], description: null } }), 200, 'webhook endpoint update');
  expect(await call('PATCH', `/v1/webhook-endpoints/${ep.id}`, { body: { url: 'ftp://x' }, bad: true }), 422, 'bad webhook update');
  expect(await call('POST', `/v1/webhook-endpoints/${ep.id}/pause`), 200, 'webhook pause');
  expect(await call('POST', `/v1/webhook-endpoints/${ep.id}/resume`), 200, 'webhook resume');
  expect(await call('POST', `/v1/webhook-endpoints/${ep.id}/rotate`), 200, 'webhook rotate');
  expect(await call('POST', '/v1/webhook-endpoints/99999999/rotate'), 404, 'rotate no endpoint');
  expect(await call('POST', '/v1/runs', { body: { workflow: 'mail', webhook: { url: 'https://hooks.example.com/cb' } } }), 409, 'callback without a secret');
  expect(await call('POST', '/v1/webhook-callback-secret'), 200, 'callback secret');
  const cb = expect(await call('POST', '/v1/runs', { body: { workflow: 'mail', webhook: { url: 'https://hooks.example.com/cb', events: ['run.succeeded'] } } }), 201, 'run with a callback').body;
  await waitRun(cb.id, ['succeeded', 'failed']);
  let list;
  for (let i = 0; i < 100; i++) { // the trigger wrote it with the run's end; it may still be in its first attempt
    list = expect(await call('GET', `/v1/webhook-deliveries?run=${cb.id}`), 200, 'webhook deliveries').body;
    if (list.deliveries.length) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!list.deliveries.length) fail('no webhook delivery for a run with a callback');
  else expect(await call('POST', `/v1/webhook-deliveries/${list.deliveries[0].id}/redeliver`), 202, 'redeliver');
  expect(await call('GET', '/v1/webhook-deliveries?state=lost'), 400, 'bad delivery state');
  expect(await call('POST', '/v1/webhook-deliveries/99999999/redeliver'), 404, 'redeliver nothing');
  expect(await call('DELETE', `/v1/webhook-endpoints/${ep.id}`), 204, 'drop webhook endpoint');
  expect(await call('DELETE', `/v1/webhook-endpoints/${ep.id}`), 404, 'drop no webhook endpoint');
}

// every documented operation was reached
for (const [t, item] of Object.entries(doc.paths))
  for (const m of Object.keys(item))
    if (['get', 'put', 'post', 'delete', 'patch'].includes(m) && !seen.has(`${m} ${t}`))
      fail(`${m.toUpperCase()} ${t}: no request reached it`);

// ---------------------------------------------------------------- a generated client, strict --

const work = path.join(nodeDir, 'client');
fs.rmSync(work, { recursive: true, force: true });
fs.mkdirSync(work, { recursive: true });
let clientOk = false;
try {
  execFileSync(process.execPath, [path.join(nodeDir, 'node_modules/openapi-typescript/bin/cli.js'),
    `${base}/v1/openapi.json`, '-o', path.join(work, 'schema.d.ts')], { stdio: 'pipe', timeout: 120000 });
  fs.copyFileSync(path.join(src, 'tests/contract/client.ts'), path.join(work, 'client.ts'));
  fs.writeFileSync(path.join(work, 'package.json'), '{"type": "module"}\n');
  fs.writeFileSync(path.join(work, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noUncheckedIndexedAccess: true, target: 'es2022', module: 'nodenext',
      moduleResolution: 'nodenext', skipLibCheck: false, types: [], lib: ['es2022', 'dom'],
      outDir: '.',
    },
    files: ['client.ts'],
  }));
  execFileSync(process.execPath, [path.join(nodeDir, 'node_modules/typescript/bin/tsc'), '-p', work],
    { stdio: 'pipe', timeout: 120000 });
  const out = execFileSync(process.execPath, [path.join(work, 'client.js'), base, KEY],
    { stdio: 'pipe', timeout: 60000 }).toString();
  process.stdout.write(out);
  clientOk = true;
} catch (e) {
  fail(`generated client: ${e.message}\n${e.stdout || ''}${e.stderr || ''}`);
}

server.kill('SIGTERM');
for (const f of failures) console.log(`FAIL ${f}`);
console.log(`${checks} answers checked against the document; generated client ${clientOk ? 'ran' : 'failed'}`);
const passed = checks + (clientOk ? 1 : 0) - failures.length;
console.log(`${Math.max(passed, 0)} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
