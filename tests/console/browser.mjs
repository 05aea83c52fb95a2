// tests/console/browser.mjs SOURCE_DIR NODE_DIR FLOWD_BIN SHOTS_DIR: the console in a real browser.
//
// Starts `flowd serve` (API and workers) on a fresh database of the fixture cluster, seeds runs
// through the API, and drives the console in Debian's headless chromium with puppeteer-core: sign
// in, the run list and its metadata filter, a run whose step finishes while the page watches
// (within 1 s of the step's commit), retry of a failed run until it succeeds, cancel, bulk cancel,
// the waterfall's waits (a delay, a rate limit's budget, a concurrency key held by another run),
// the workflow, batch, limits, sends, webhooks and workers views, a member key's session, XSS payloads in everything a
// run holds, keyboard navigation. Any console error, failed request or unexpected HTTP error fails
// the test. Screenshots of each view go to SHOTS_DIR; timing figures are printed. Prints "N passed,
// N failed".
import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const [src, nodeDir, flowdBin, shots] = process.argv.slice(2);
const require = createRequire(path.join(nodeDir, 'package.json'));
const puppeteer = require('puppeteer-core');

const KEY = 'fd_console_test_admin_key_0123456789';
const XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';
const JSURL = 'javascript:window.__xss=3';
const failures = [];
let passed = 0;
const check = (ok, what) => {
  if (ok) passed++;
  else failures.push(what);
  return ok;
};
const figures = {};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();

// --------------------------------------------------------------------- the server and mocks --

const pgdir = process.env.FLOWD_TEST_PGDIR;
if (!pgdir) throw new Error('FLOWD_TEST_PGDIR is not set: run through ctest (fixture pg)');
const dbname = `console_${process.pid}`;
execFileSync('psql', ['-X', '-q', '-h', pgdir, '-U', 'postgres', '-d', 'postgres', '-c',
  `CREATE DATABASE ${dbname}`]);

// A flaky upstream for the http step: 500 until the test lets it succeed.
let upstreamOk = false;
const upstream = http.createServer((req, res) => {
  res.writeHead(upstreamOk ? 200 : 500, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(upstreamOk ? { ok: true, note: XSS } : { error: XSS }));
});
await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
const upstreamUrl = `http://127.0.0.1:${upstream.address().port}/flaky`;

// A webhook receiver: records what it is sent and answers with markup in its body.
const hooks = [];
const receiver = http.createServer((req, res) => {
  let body = '';
  req.on('data', (d) => { body += d; });
  req.on('end', () => {
    hooks.push({ id: req.headers['webhook-id'], body });
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`thanks ${XSS}`);
  });
});
await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
const receiverUrl = `http://127.0.0.1:${receiver.address().port}/hook?x=<script>window.__xss=4</script>`;

let serverLog = '';
const server = spawn(flowdBin, ['--database', `host=${pgdir} dbname=${dbname} user=postgres`,
  'serve', '--listen', '127.0.0.1:0', '--workers', '2'], {
  env: { ...process.env, FLOWD_API_KEY: KEY, FLOWD_ALLOW_PRIVATE_TARGETS: '1' },
  stdio: ['ignore', 'ignore', 'pipe'],
});
let browser = null;
const cleanup = () => {
  server.kill('SIGTERM');
  upstream.close();
  receiver.close();
};
process.on('exit', cleanup);
const base = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`flowd did not start:\n${serverLog}`)), 60000);
  server.stderr.on('data', (d) => {
    serverLog += d;
    const m = /msg="api listening" address=127\.0\.0\.1:(\d+)/.exec(serverLog);
    if (m) {
      clearTimeout(timer);
      resolve(`http://127.0.0.1:${m[1]}`);
    }
  });
  server.on('exit', (code) => reject(new Error(`flowd exited ${code}:\n${serverLog}`)));
});

async function api(method, p, body, key = KEY) {
  const res = await fetch(`${base}${p}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p} -> ${res.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}
async function waitRun(id, states, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const r = await api('GET', `/v1/runs/${id}`);
    if (states.includes(r.state)) return r;
    if (Date.now() > end) throw new Error(`run ${id} is ${r.state}, not ${states}`);
    await sleep(50);
  }
}

// ----------------------------------------------------------------------------- the seed --

await api('PUT', '/v1/workflows/lead_touch', {
  description: `touches a lead ${XSS}`,
  search: { lead: '{{input.lead.id}}', phone: '{{input.lead.phone}}' },
  steps: [
    { key: 'wait', kind: 'wait_event', input: { event: 'lead.go', key: '{{input.lead.id}}' } },
    { key: 'note', kind: 'transform', needs: ['wait'], phase: XSS,
      input: { text: 'hello {{input.lead.name}}', link: '{{input.lead.site}}' } },
    { key: 'draft', kind: 'llm', needs: ['note'], input: { model: 'gpt-4o-mini', prompt: `Reply to ${XSS} {{input.lead.name}}` } },
  ],
});
// a second version, for the diff
await api('PUT', '/v1/workflows/lead_touch', {
  description: `touches a lead ${XSS}`,
  search: { lead: '{{input.lead.id}}', phone: '{{input.lead.phone}}' },
  steps: [
    { key: 'wait', kind: 'wait_event', input: { event: 'lead.go', key: '{{input.lead.id}}' } },
    { key: 'note', kind: 'transform', needs: ['wait'], phase: XSS,
      input: { text: 'hi there {{input.lead.name}}', link: '{{input.lead.site}}' } },
    { key: 'draft', kind: 'llm', needs: ['note'], input: { model: 'gpt-4o-mini', prompt: `Reply to ${XSS} {{input.lead.name}}` } },
  ],
});
await api('PUT', '/v1/workflows/flaky', {
  search: { lead: '{{input.lead}}' },
  steps: [{ key: 'fetch', kind: 'http', retry: { max_attempts: 1 }, input: { method: 'GET', url: upstreamUrl } },
    { key: 'after', kind: 'transform', needs: ['fetch'], input: { got: '{{steps.fetch.output.body.ok}}' } }],
});
await api('PUT', '/v1/workflows/note', {
  search: { lead: '{{input.lead}}' },
  steps: [{ key: 'note', kind: 'transform', input: { lead: '{{input.lead}}', text: '{{input.text}}' } }],
});
await api('PUT', '/v1/workflows/paced', {
  steps: [{ key: 'first', kind: 'transform', input: { k: '{{input.k}}' } },
    { key: 'later', kind: 'transform', needs: ['first'], delay: '1s', concurrency_key: '{{input.k}}', input: {} }],
});
// waits the engine records: a send its rate limit holds back, a step queued behind its key
await api('PUT', '/v1/workflows/limited', {
  steps: [{ key: 'text', kind: 'sms', input: { to: '{{input.to}}', body: 'hi', from: '+15005550006', rate_limit: 'console_sms' } }],
});
await api('PUT', '/v1/workflows/keyed', {
  steps: [{ key: 'hold', kind: 'wait_event', concurrency_key: 'lane-{{input.lane}}', input: { event: 'keyed.go', key: '{{input.n}}' } }],
});
await api('PUT', '/v1/workflows/fanout', {
  steps: [{ key: 'each', kind: 'map',
    input: { items: '{{input.items}}', concurrency: 200, step: { kind: 'transform', input: { n: '{{index}}' } } } }],
});
let refused = 0;
for (const bad of [{ name: 'x<script>', steps: [{ key: 'a', kind: 'transform' }] },
  { steps: [{ key: '<img src=x>', kind: 'transform' }] }]) {
  try {
    await api('PUT', `/v1/workflows/${encodeURIComponent(bad.name || 'badkey')}`, bad);
  } catch (e) {
    refused++;
  }
}
check(refused === 2, 'workflow names and step keys with markup are refused at registration');

// A batch of runs for the list (its size is FLOWD_CONSOLE_SEED, default 3,000).
const seedN = Number(process.env.FLOWD_CONSOLE_SEED || 3000);
const batch = await api('POST', '/v1/batches', {
  workflow: 'note',
  inputs: Array.from({ length: seedN }, (_, i) => ({ lead: String(50000 + i), text: i % 7 ? 'plain' : XSS })),
});
const target = await api('POST', '/v1/runs', {
  workflow: 'lead_touch',
  input: { lead: { id: 30012, phone: '+15555550123', name: XSS, site: JSURL } },
  tags: { campaign: XSS.slice(0, 60), source: 'console-test' },
});
const toCancel = await api('POST', '/v1/runs', {
  workflow: 'lead_touch', input: { lead: { id: 30013, phone: '+15555550124', name: 'Bo', site: 'x' } },
});
const bulkA = await api('POST', '/v1/runs', { workflow: 'lead_touch', input: { lead: { id: 40001, name: 'a', site: 'x' } }, tags: { bulk: 'yes' } });
const bulkB = await api('POST', '/v1/runs', { workflow: 'lead_touch', input: { lead: { id: 40002, name: 'b', site: 'x' } }, tags: { bulk: 'yes' } });
const flaky = await api('POST', '/v1/runs', { workflow: 'flaky', input: { lead: 'flaky-1' } });
const paced = await api('POST', '/v1/runs', { workflow: 'paced', input: { k: 'lane-1' } });
const fan = await api('POST', '/v1/runs', { workflow: 'fanout', input: { items: Array.from({ length: 1000 }, (_, i) => i) } });
const keyed1 = await api('POST', '/v1/runs', { workflow: 'keyed', input: { lane: XSS, n: 'one' } });
const keyed2 = await api('POST', '/v1/runs', { workflow: 'keyed', input: { lane: XSS, n: 'two' } });
const member = await api('POST', '/v1/keys', { tenant: 1, role: 'member' });
await api('PUT', '/v1/schedules/nightly', { workflow: 'note', cron: '0 3 * * *', tz: 'Europe/Berlin',
  input: { lead: 'scheduled', text: XSS } });
await waitRun(flaky.id, ['failed']);
await waitRun(target.id, ['running']);
await waitRun(fan.id, ['succeeded'], 60000);
await waitRun(paced.id, ['succeeded']);
await waitRun(keyed1.id, ['running']);
for (;;) {
  const b = await api('GET', `/v1/batches/${batch.id}`);
  if (b.state !== 'running') break;
  await sleep(100);
}
// once the seed is worked (a busy worker could take budget only after it refilled): the one
// request of the limit's burst is taken, so the send waits about a second for budget
await api('PUT', '/v1/rate-limits/console_sms', { requests_per_s: 1, burst_requests: 1 });
execFileSync('psql', ['-X', '-q', '-h', pgdir, '-U', 'postgres', '-d', dbname, '-c',
  "SELECT flowd_rl_take(1, 'console_sms', 1, 0)"]);
const limited = await api('POST', '/v1/runs', { workflow: 'limited', input: { to: '+15555550199' } });
await waitRun(limited.id, ['succeeded']);
figures.seed_ms = Date.now() - t0;

// ------------------------------------------------------------------------------ the browser --

browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
});
const page = await browser.newPage();
await page.setViewport({ width: 1360, height: 900 });
const problems = [];
const expected = []; // [method, url part, status] the test provokes on purpose
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') {
    const loc = m.location() && m.location().url ? m.location().url : '';
    // a response the test provoked on purpose is also logged by chromium as a failed resource
    if (/status of (401|403|404|422)/.test(m.text()) && expected.some(([, u, s]) => loc.includes(u) && m.text().includes(String(s)))) return;
    problems.push(`console ${m.type()}: ${m.text()} ${loc}`);
  }
});
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('requestfailed', (r) => {
  // EventSource streams are cut when the page leaves the run
  if (r.failure() && r.failure().errorText === 'net::ERR_ABORTED' && /\/events/.test(r.url())) return;
  // chromium reports a 204 answer to fetch as aborted once there is no body to read
  if (r.failure() && r.failure().errorText === 'net::ERR_ABORTED' && r.response() && r.response().status() === 204) return;
  problems.push(`request failed: ${r.method()} ${r.url()} ${r.failure() && r.failure().errorText}`);
});
const urls = [];
page.on('response', (r) => {
  urls.push(r.url());
  if (r.status() >= 400 && !expected.some(([m, u, s]) => r.request().method() === m && r.url().includes(u) && r.status() === s))
    problems.push(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`);
});
const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
const text = () => page.evaluate(() => document.body.innerText);
const xssInert = async (where) => {
  const r = await page.evaluate(() => ({
    flag: window.__xss,
    scripts: document.scripts.length,
    imgs: document.querySelectorAll('img').length,
    jsLinks: [...document.querySelectorAll('[href]')].filter((a) => /^\s*javascript:/i.test(a.getAttribute('href'))).length,
    handlers: [...document.querySelectorAll('*')].filter((el) => [...el.attributes].some((a) => a.name.startsWith('on'))).length,
  }));
  check(r.flag === undefined && r.scripts === 1 && r.imgs === 0 && r.jsLinks === 0 && r.handlers === 0,
    `${where}: user data stayed inert ${JSON.stringify(r)}`);
};

try {
  // sign in
  const resp = await page.goto(`${base}/`, { waitUntil: 'load' });
  const h = resp.headers();
  check(/script-src 'self'/.test(h['content-security-policy'] || '') && /frame-ancestors 'none'/.test(h['content-security-policy'] || ''),
    'the console is served with a strict Content-Security-Policy');
  check(h['x-frame-options'] === 'DENY', 'X-Frame-Options: DENY');
  await page.waitForSelector('form.signin input#key');
  await shot('01-sign-in');
  expected.push(['POST', '/v1/console/session', 401]);
  await page.type('#key', 'fd_wrong_key');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('.signin .error').textContent.includes('unknown'));
  check(true, 'a wrong key is refused at sign-in');
  await page.evaluate(() => { document.querySelector('#key').value = ''; });
  await page.type('#key', KEY);
  await page.keyboard.press('Enter');
  await page.waitForSelector('table.runs tbody tr[data-id]');
  check(!(await page.evaluate(() => document.cookie)).includes('flowd_session'), 'the session cookie is HttpOnly');
  check(!(await page.evaluate(() => JSON.stringify(sessionStorage) + JSON.stringify(localStorage))).includes(KEY),
    'the API key is kept nowhere in the page');

  // the run list, first show measured from navigation
  // (a new document: the hash alone does not load the page again)
  await page.goto(`${base}/#/runs`, { waitUntil: 'load' });
  await page.reload({ waitUntil: 'load' });
  await page.waitForFunction(() => performance.getEntriesByName('runs-shown').length > 0);
  figures.runs_first_show_ms = Math.round(await page.evaluate(() => performance.getEntriesByName('runs-shown')[0].startTime));
  figures.runs_in_tenant = seedN + 1000 + 9;
  const rows = await page.$$eval('table.runs tbody tr[data-id]', (t) => t.length);
  check(rows === 50, `the list shows a page of 50 runs (${rows})`);
  await page.waitForFunction(() => /succeeded [0-9,]+/.test(document.querySelector('.counts').innerText));
  await shot('02-runs');
  await xssInert('run list');

  // free search: the start of any metadata value, any case; markup typed there and found in a tag
  // stays text
  await page.keyboard.press('/');
  await page.keyboard.type('+155555501');
  await page.keyboard.press('Enter');
  await page.waitForFunction((ids) => {
    const r = [...document.querySelectorAll('table.runs tbody tr[data-id]')].map((x) => Number(x.dataset.id));
    return r.length === 2 && r[0] === ids[0] && r[1] === ids[1];
  }, {}, [toCancel.id, target.id]);
  check(decodeURIComponent(await page.evaluate(() => location.hash)).includes('q=+155555501'),
    'the free search is in the address');
  await page.keyboard.press('/'); // focuses the search with its text selected
  await page.keyboard.type('<IMG SRC');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => location.hash.includes('IMG'));
  await page.waitForFunction((id) => {
    const r = document.querySelectorAll('table.runs tbody tr[data-id]');
    return r.length === 1 && r[0].dataset.id === String(id);
  }, {}, target.id);
  check(true, 'free search finds a tag by the start of its value, ignoring case');
  await shot('03-runs-free-search');
  await xssInert('free search');
  await page.goto(`${base}/#/runs`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('[data-search]').value === '' &&
    document.querySelectorAll('table.runs tbody tr[data-id]').length === 50);

  // filter by metadata with the keyboard: "/" focuses the search field
  await page.keyboard.press('/');
  await page.keyboard.type('lead=30012');
  await page.keyboard.press('Enter');
  await page.waitForFunction((id) => {
    const r = document.querySelectorAll('table.runs tbody tr[data-id]');
    return r.length === 1 && r[0].dataset.id === String(id);
  }, {}, target.id);
  check((await page.evaluate(() => location.hash)).includes('meta.lead=30012'), 'the metadata filter is in the address');
  await shot('03-runs-by-lead');
  await xssInert('filtered list');

  // keyboard: j focuses the first run's link; Tab also reaches it (through the filters); Enter opens it
  await page.keyboard.press('j');
  check(await page.evaluate(() => document.activeElement && document.activeElement.classList.contains('run-link')),
    'j focuses the first run');
  await page.evaluate(() => document.activeElement.blur());
  let reached = false;
  for (let i = 0; i < 80 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement && document.activeElement.classList.contains('run-link'));
  }
  check(reached, 'the run link is reachable with Tab');
  await page.keyboard.press('Enter');
  await page.waitForSelector(`g.node[data-step="wait"][data-state="waiting"]`);
  await page.waitForSelector('.waterfall .wf-row');
  await xssInert('run page');
  const pageText = await text();
  check(pageText.includes('<img src=x onerror'), 'payloads show as text');
  await shot('04-run-waiting');

  // watch a step finish live: the event resumes the run; the page's graph must show "note"
  // succeeded within 1 s of the step's commit (its finished_at)
  await api('POST', '/v1/events', { name: 'lead.go', key: '30012', data: { note: XSS } });
  await page.waitForSelector('g.node[data-step="note"][data-state="succeeded"]', { timeout: 5000 });
  const seenAt = Date.now();
  const done = await waitRun(target.id, ['succeeded']);
  const committed = new Date(done.steps.find((st) => st.key === 'note').finished_at).getTime();
  figures.live_step_ms = seenAt - committed;
  check(figures.live_step_ms <= 1000, `the finished step shows within 1 s of its commit (${figures.live_step_ms} ms)`);
  await page.waitForFunction(() => document.querySelector('main').dataset.state === 'succeeded');
  check(await page.$eval('details[data-step="draft"] .usage', (d) => /input tokens \d+/.test(d.textContent)),
    'the llm step shows its usage');
  await shot('05-run-succeeded');
  await xssInert('finished run');

  // the llm step's rendered input (its prompt with the lead's name filled in), shown as text; it
  // is recorded apart from the step's outcome, so the page is loaded again once the API has it
  const renderedOf = async (run, key) => {
    for (let i = 0; i < 100; i++) {
      const st = (await api('GET', `/v1/runs/${run}/steps`)).steps.find((x) => x.key === key);
      if (st && st.rendered_input) return st.rendered_input;
      await sleep(50);
    }
    return null;
  };
  const draftGiven = await renderedOf(target.id, 'draft');
  check(draftGiven && draftGiven.input.prompt === `Reply to ${XSS} ${XSS}`, 'the API has the llm step\'s rendered prompt');
  await page.reload({ waitUntil: 'load' });
  await page.waitForSelector('details[data-step="draft"] h4');
  await page.evaluate(() => { document.querySelector('details[data-step="draft"]').open = true; });
  check(await page.$eval('details[data-step="draft"]', (d, x) => d.innerText.includes('Rendered input (attempt 1)') &&
    d.innerText.includes(JSON.stringify(`Reply to ${x} ${x}`)), XSS),
  'the step panel shows the rendered input as text');
  await shot('05b-run-rendered-input');
  await xssInert('rendered input');

  // retry a failed run from the console and see it succeed
  check((await renderedOf(flaky.id, 'fetch')) !== null, 'the failed http step has its rendered input');
  await page.goto(`${base}/#/runs/${flaky.id}`, { waitUntil: 'load' });
  await page.waitForSelector('g.node[data-step="fetch"][data-state="failed"]');
  await page.waitForFunction((u) => {
    const d = document.querySelector('details[data-step="fetch"]');
    return d && d.open && d.innerText.includes('Rendered input (attempt 1)') && d.innerText.includes(u);
  }, {}, upstreamUrl);
  check(true, 'the failed http step\'s panel shows the URL it called');
  await shot('06-run-failed');
  upstreamOk = true;
  await page.click('button[data-action="retry"]');
  await page.waitForFunction(() => document.querySelector('main').dataset.state === 'succeeded', { timeout: 15000 });
  check(true, 'a failed run retried from the console succeeds');
  await page.waitForSelector('.waterfall .seg.k-attempt.o-failed');
  await shot('07-run-retried');

  // cancel
  await page.goto(`${base}/#/runs/${toCancel.id}`, { waitUntil: 'load' });
  await page.waitForSelector('g.node[data-step="wait"][data-state="waiting"]');
  await page.click('button[data-action="cancel"]');
  await page.waitForFunction(() => document.querySelector('main').dataset.state === 'cancelled');
  check((await api('GET', `/v1/runs/${toCancel.id}`)).state === 'cancelled', 'cancel from the run page');

  // bulk cancel of a selection in the list
  await page.goto(`${base}/#/runs?meta.bulk=yes`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelectorAll('table.runs tbody tr[data-id]').length === 2);
  await page.click('table.runs thead input[type=checkbox]');
  await page.click('button[data-action="cancel"]');
  await page.waitForFunction(() => /Cancelled 2 of 2/.test(document.querySelector('.bulk-result').textContent));
  check((await api('GET', `/v1/runs/${bulkA.id}`)).state === 'cancelled' &&
    (await api('GET', `/v1/runs/${bulkB.id}`)).state === 'cancelled', 'bulk cancel of the selected runs');
  await shot('08-bulk-cancel');

  // a 1,000-item map: first show measured from navigation
  await page.goto(`${base}/#/runs/${fan.id}`, { waitUntil: 'load' });
  await page.reload({ waitUntil: 'load' });
  await page.waitForFunction((id) => performance.getEntriesByName(`run-shown-${id}`).length > 0, {}, fan.id);
  figures.map_1000_first_show_ms = Math.round(await page.evaluate((id) => performance.getEntriesByName(`run-shown-${id}`)[0].startTime, fan.id));
  check(await page.$eval('g.node[data-step="each"] text.kind', (t) => t.textContent.includes('1000/1000')), 'the map step shows its items');
  check((await page.$$('.children-box tbody tr')).length === 100, 'the map items list its children');
  await shot('09-map-1000');

  // the waterfall names its waits: the delay of 1 s after "first", apart from the queue
  await page.goto(`${base}/#/runs/${paced.id}`, { waitUntil: 'load' });
  await page.waitForSelector('.wf-row[data-step="later"] .seg.k-attempt');
  const waits = await page.$$eval('.wf-row[data-step="later"] .seg', (segs) => segs.map((x) => x.getAttribute('title')));
  check(/^delay 1s: (9\d\d ms|1\.\d\d s)/.test(waits[0]) && waits.every((w) => !/concurrency key/.test(w)),
    `the waterfall shows the step's delay apart from the queue, and no wait for a key no step held (${waits.join(' | ')})`);
  await shot('09b-run-delay');

  // ... a wait for budget under a rate limit, which spent no attempt
  await page.goto(`${base}/#/runs/${limited.id}`, { waitUntil: 'load' });
  await page.waitForSelector('.wf-row[data-step="text"] .seg.k-attempt.o-ok');
  const sent = await page.$$eval('.wf-row[data-step="text"] .seg', (segs) => segs.map((x) => [x.classList[1], x.getAttribute('title')]));
  check(sent.some(([k, w]) => k === 'k-ratelimit' && w.startsWith('rate limit console_sms: no budget, tries again at ')) &&
    sent.filter(([k]) => k === 'k-attempt').length === 1 && sent[sent.length - 1][0] === 'k-attempt',
  `the waterfall shows the wait for the rate limit's budget, then one attempt (${sent.join(' | ')})`);
  check(await page.$eval('.waterfall .legend', (p) => p.textContent.includes('rate limit') && p.textContent.includes('concurrency key')),
    'the legend names the rate limit and concurrency key waits');
  await shot('09c-run-rate-limited');

  // ... and a wait for a concurrency key, live: held by another run's step, then free
  await page.goto(`${base}/#/runs/${keyed2.id}`, { waitUntil: 'load' });
  await page.waitForSelector('.wf-row[data-step="hold"] .seg.k-ckey');
  const held = await page.$eval('.wf-row[data-step="hold"] .seg.k-ckey', (x) => x.getAttribute('title'));
  check(held.startsWith(`concurrency key lane-${XSS}: queued behind run #${keyed1.id} step hold (waiting)`),
    `a step waiting for its key names the key and the step holding it (${held})`);
  check(await page.$eval('details[data-step="hold"] dd.ckey', (dd, id) => dd.textContent.includes('queued behind') &&
    dd.querySelector(`a[href="#/runs/${id}"]`) !== null, keyed1.id), 'the step\'s details link the run holding its key');
  await xssInert('run waiting for its key');
  await shot('09d-run-key-held');
  await api('POST', '/v1/events', { name: 'keyed.go', key: 'one' });
  await page.waitForSelector('.wf-row[data-step="hold"] .seg.k-waiting');
  const freed = await page.$$eval('.wf-row[data-step="hold"] .seg', (segs) => segs.map((x) => [x.classList[1], x.getAttribute('title')]));
  check(freed[0][0] === 'k-ckey' && freed[0][1].includes(`run #${keyed1.id} step hold, free at `) && freed.some(([k]) => k === 'k-attempt'),
    `once the key is free the wait for it ends and the step runs (${freed.join(' | ')})`);
  await api('POST', '/v1/events', { name: 'keyed.go', key: 'two' });
  await page.waitForFunction(() => document.querySelector('main').dataset.state === 'succeeded');
  await shot('09e-run-key-freed');

  // workflows: versions, definition, diff, start a run (the input is checked by the server)
  await page.keyboard.press('g');
  await page.keyboard.press('w');
  await page.waitForSelector('table.workflows tbody tr');
  await page.click('a[href="#/workflows/lead_touch"]');
  await page.waitForSelector('.definition pre.json');
  await page.select('select[aria-label="compare with version"]', '1');
  await page.waitForSelector('pre.diff .add');
  check(await page.$eval('pre.diff', (p) => /\+ +"text": "hi there/.test(p.textContent) && /- +"text": "hello/.test(p.textContent)),
    'the diff between versions');
  await shot('10-workflow-diff');
  await xssInert('workflow page');
  await page.evaluate(() => { document.querySelector('textarea[name=input]').value = ''; });
  await page.type('textarea[name=input]', '{"lead": {"id": 777, "name": "Cy", "site": "x"}}');
  await page.type('input[name=tags]', 'source=console');
  await page.click('form.start-run button[type=submit]');
  await page.waitForFunction(() => /^#\/runs\/\d+$/.test(location.hash));
  await page.waitForSelector('g.node[data-step="wait"]');
  check((await text()).includes('source=console'), 'a run started from the workflow page carries its tags');

  // batches, limits & suppressions, sends
  await page.keyboard.press('g');
  await page.keyboard.press('b');
  await page.waitForSelector(`table.batches tr[data-batch="${batch.id}"]`);
  const listed = await page.$eval(`tr[data-batch="${batch.id}"]`, (tr) => ({
    text: tr.innerText, csv: tr.querySelector('a[download$=".csv"]').getAttribute('href') }));
  check(listed.text.includes(`${seedN.toLocaleString('en-US')}/${seedN.toLocaleString('en-US')}`) &&
    listed.text.includes('succeeded') && listed.csv === `/v1/batches/${batch.id}/results?format=csv`,
  `the batch list shows the batch's progress and export (${listed.text.replace(/\s+/g, ' ')})`);
  await shot('11a-batches');
  await page.click(`tr[data-batch="${batch.id}"] a[href="#/batches/${batch.id}"]`);
  await page.waitForFunction((n) => document.querySelector('.batch') && document.querySelector('.batch').innerText.includes(`${n.toLocaleString('en-US')} of`), {}, seedN);
  await shot('11-batch');
  // a limit two requests were taken from (as two steps would): its budget shows what is left
  await api('PUT', '/v1/rate-limits/crm', { requests_per_s: 0.001, burst_requests: 5 });
  execFileSync('psql', ['-X', '-q', '-h', pgdir, '-U', 'postgres', '-d', dbname, '-c',
    "SELECT flowd_rl_take(1, 'crm', 2, 0)"]);
  await page.goto(`${base}/#/limits`, { waitUntil: 'load' });
  await page.waitForSelector('table.suppressions tbody tr');
  await page.waitForSelector('tr[data-limit="crm"] td.budget .fill[data-pct="60"]');
  check(/3 of 5 requests/.test(await page.$eval('tr[data-limit="crm"] td.budget', (td) => td.innerText)),
    'a rate limit shows the budget it has left');
  await page.type('input[name=address]', 'blocked@example.com');
  await page.type('input[name=reason]', XSS.slice(0, 100));
  await page.click('form.filters button[type=submit]');
  await page.waitForFunction(() => document.querySelector('table.suppressions').innerText.includes('blocked@example.com'));
  await shot('12-limits');
  await xssInert('suppressions');
  await page.click('button[data-action="lift"]');
  await page.waitForFunction(() => !document.querySelector('table.suppressions').innerText.includes('blocked@example.com'));
  check(true, 'a suppression added and lifted from the console');
  await page.goto(`${base}/#/schedules`, { waitUntil: 'load' });
  await page.waitForSelector('tr[data-schedule="nightly"]');
  // the list redraws every 5 s: find and press the button in one step
  const press = (sel) => page.evaluate((q) => document.querySelector(q).click(), sel);
  await press('tr[data-schedule="nightly"] button[data-action="trigger"]');
  await page.waitForFunction(() => /Triggered: run #\d+/.test(document.querySelector('.action-result').textContent));
  await press('tr[data-schedule="nightly"] button[data-action="pause"]');
  await page.waitForSelector('tr[data-schedule="nightly"] button[data-action="resume"]');
  check(true, 'a schedule triggered and paused from the console');
  await page.click('a[href="#/schedules/nightly"]');
  await page.waitForFunction(() => document.querySelectorAll('table.ticks tbody tr').length === 10);
  await shot('13-schedule');
  await xssInert('schedule');
  await page.goto(`${base}/#/usage`, { waitUntil: 'load' });
  await page.waitForSelector('svg.chart');
  check((await text()).includes('LLM calls'), 'the usage page shows its totals');
  await shot('14-usage');
  await page.goto(`${base}/#/sends`, { waitUntil: 'load' });
  await page.waitForSelector('table.outbox tbody tr');
  await shot('15-sends');

  // webhooks: add an endpoint (its secret shown once), see a run's delivery reach the receiver
  // with its attempt, redeliver it, rotate, pause and resume, delete
  await page.keyboard.press('g');
  await page.keyboard.press('h');
  await page.waitForSelector('table.endpoints tbody tr');
  await page.type('input[name=url]', receiverUrl);
  await page.type('input[name=description]', XSS);
  await page.click('input[name=events][value="run.succeeded"]');
  await page.click('form.webhook-new button[type=submit]');
  await page.waitForSelector('pre.secret');
  const secret1 = await page.$eval('pre.secret', (p) => p.textContent);
  check(/^whsec_/.test(secret1), 'a new endpoint shows its secret once');
  const endpoint = (await api('GET', '/v1/webhook-endpoints')).endpoints.find((e) => e.url === receiverUrl);
  check(endpoint && endpoint.description === XSS && !('secret' in endpoint), 'the endpoint is kept as typed, its secret not listed');
  const hooked = await api('POST', '/v1/runs', { workflow: 'note', input: { lead: 'hooked', text: 'x' } });
  await page.evaluate(() => { document.querySelector('input[name=run]').value = ''; });
  await page.type('input[name=run]', String(hooked.id));
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelectorAll('table.deliveries tbody tr[data-delivery]').length === 1 &&
    // the delivery's state badge, not the row's text: its event type (run.succeeded) says "succeeded" while pending
    document.querySelector('table.deliveries tbody tr[data-delivery] span.badge.s-succeeded'), { timeout: 15000 });
  check(hooks.length === 1 && JSON.parse(hooks[0].body).data.id === hooked.id, `the receiver got the run's webhook (${hooks.length})`);
  check((await page.evaluate(() => location.hash)).includes(`run=${hooked.id}`), 'the delivery filter is in the address');
  await press('table.deliveries tbody tr[data-delivery] button.link');
  await page.waitForSelector('tr.attempt-log table.attempts tbody tr');
  check(await page.$eval('tr.attempt-log', (t) => /200/.test(t.innerText) && /\d+ ms/.test(t.innerText) && t.innerText.includes('thanks <img')),
    'the attempt shows its status, latency and the first bytes of the answer');
  await press('table.deliveries tbody tr[data-delivery] button[data-action="redeliver"]');
  await page.waitForFunction(() => document.querySelectorAll('tr.attempt-log table.attempts tbody tr').length === 2, { timeout: 15000 });
  check(hooks.length === 2 && hooks[1].id === hooks[0].id, 'a redelivery goes out again with the same webhook-id');
  await shot('17-webhooks');
  await xssInert('webhooks');
  await press(`tr[data-endpoint="${endpoint.id}"] button[data-action="rotate"]`);
  await page.waitForFunction((s1) => document.querySelector('pre.secret') && document.querySelector('pre.secret').textContent !== s1, {}, secret1);
  check(true, 'a rotated secret is shown once');
  await press(`tr[data-endpoint="${endpoint.id}"] button[data-action="pause"]`);
  await page.waitForSelector(`tr[data-endpoint="${endpoint.id}"] button[data-action="resume"]`);
  check((await api('GET', `/v1/webhook-endpoints/${endpoint.id}`)).state === 'paused', 'pause an endpoint');
  await press(`tr[data-endpoint="${endpoint.id}"] button[data-action="resume"]`);
  await page.waitForSelector(`tr[data-endpoint="${endpoint.id}"] button[data-action="pause"]`);
  await press(`tr[data-endpoint="${endpoint.id}"] button[data-action="delete"]`);
  await page.waitForFunction((id) => document.querySelector(`tr[data-endpoint="${id}"] button[data-action="delete"]`).textContent.includes('Really'), {}, endpoint.id);
  await press(`tr[data-endpoint="${endpoint.id}"] button[data-action="delete"]`);
  await page.waitForFunction((id) => !document.querySelector(`tr[data-endpoint="${id}"]`), {}, endpoint.id);
  check((await api('GET', '/v1/webhook-endpoints')).endpoints.length === 0, 'delete an endpoint (asked twice)');

  // workers and queue: this server's process with its two workers, the tenant's queue and the
  // hour's throughput (the seeded runs were all created within it)
  await page.keyboard.press('g');
  await page.keyboard.press('q');
  await page.waitForSelector('table.processes tbody tr[data-process]');
  const proc = await page.$eval(`tr[data-process]`, (tr) => tr.innerText);
  check(/\bup\b/.test(proc) && proc.includes(`pid ${server.pid}`), `the processes list this server as up (${proc.replace(/\s+/g, ' ')})`);
  check((await page.$$('table.workers tbody tr[data-worker]')).length === 2, 'the process shows its two workers');
  await page.waitForSelector('svg.throughput rect.bar-created');
  const hour = await page.$eval('.chart-box + p', (p) => p.textContent);
  const made = Number((/([\d,]+) created/.exec(hour) || ['', '0'])[1].replace(/,/g, ''));
  check(made >= seedN, `the hour's throughput counts the seeded runs (${hour})`);
  await shot('18-workers-queue');

  // a session cannot change anything without its CSRF value
  expected.push(['POST', '/v1/events', 403]);
  const csrf = await page.evaluate(async () => (await fetch('/v1/events', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"name":"a","key":"b"}' })).status);
  check(csrf === 403, `a change without the CSRF header is refused (${csrf})`);

  // a member key's session: the tenant's runs, and no admin routes
  await page.click('header button.link');
  await page.waitForSelector('form.signin input#key');
  await page.type('#key', member.key);
  await page.keyboard.press('Enter');
  await page.waitForSelector('header .who');
  await page.goto(`${base}/#/runs`, { waitUntil: 'load' });
  await page.waitForSelector('table.runs tbody tr[data-id]');
  check((await text()).includes('member'), 'the member session says its role');
  expected.push(['GET', '/v1/providers', 404]);
  const admin = await page.evaluate(async () => (await fetch('/v1/providers')).status);
  check(admin === 404, `a member session cannot reach admin routes (${admin})`);
  await page.goto(`${base}/#/workers`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('section.processes').innerText.includes('operator'));
  await page.waitForSelector('table.queue tbody tr');
  check(true, 'a member session sees the queue and not the processes');
  await page.goto(`${base}/#/webhooks`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('main').innerText.includes('admin key'));
  check(true, 'a member session is told webhooks need an admin key');
  await shot('16-member');

  check(!urls.some((u) => u.includes(KEY) || u.includes(member.key)), 'no API key in any URL');
  check(!serverLog.includes(KEY) && !serverLog.includes(member.key), 'no API key in the log');
  check(problems.length === 0, `no console errors or failed requests:\n  ${problems.join('\n  ')}`);
} catch (e) {
  failures.push(`aborted: ${e.stack || e}`);
  await shot('99-failure').catch(() => {});
  if (problems.length) failures.push(`problems so far:\n  ${problems.join('\n  ')}`);
} finally {
  await browser.close();
}

figures.total_ms = Date.now() - t0;
console.log(`figures: ${JSON.stringify(figures)}`);
for (const f of failures) console.log(`FAIL ${f}`);
console.log(`${passed} passed, ${failures.length} failed`);
cleanup();
execFileSync('psql', ['-X', '-q', '-h', pgdir, '-U', 'postgres', '-d', 'postgres', '-c',
  `DROP DATABASE IF EXISTS ${dbname} WITH (FORCE)`]);
process.exit(failures.length ? 1 : 0);
