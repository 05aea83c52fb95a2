// console/workers.js: workers and queue (#/workers), refreshed every 5 s. The queue is the
// tenant's (GET /v1/queue): due steps by workflow with the age of the oldest, delayed and running
// steps, and its runs of the last hour by minute as a chart. The processes (GET /v1/workers) are
// shared by every tenant, so only the operator's admin keys get them; other keys see the queue.
import * as api from './api.js';
import { h, replace, s } from './dom.js';
import { ago, count, duration, time } from './fmt.js';

const REFRESH_MS = 5000;

function processBadge(state) {
  const cls = { up: 's-succeeded', missing: 's-failed', stopped: 's-cancelled' }[state] || '';
  return h('span', { class: `badge ${cls}` }, state);
}

function leaseBadge(lease) {
  const cls = { held: 's-succeeded', lapsed: 's-failed', idle: 's-queued' }[lease] || '';
  return h('span', { class: `badge ${cls}`, title: {
    held: 'renewed in time',
    lapsed: 'not renewed while steps run in its name: the reaper hands them back',
    idle: 'holds no step, so renews nothing',
  }[lease] }, lease);
}

function processRows(p) {
  return [h('tr', { 'data-process': p.id },
    h('td', null, h('strong', null, p.host), ` pid ${p.pid}`),
    h('td', null, processBadge(p.state)),
    h('td', null, p.version),
    h('td', null, p.role, p.listen ? h('div', { class: 'dim small-text' }, p.listen) : null),
    h('td', { title: p.started_at }, ago(p.started_at)),
    h('td', { title: p.heartbeat_at }, ago(p.heartbeat_at),
      p.stopped_at ? h('div', { class: 'dim small-text' }, `stopped ${time(p.stopped_at)}`) : null),
    h('td', null, count(p.steps_in_flight)),
    h('td', null, [p.api_threads ? `API ×${p.api_threads}` : null, p.webhooks ? 'webhooks' : null].filter(Boolean).join(' · '))),
  p.workers.length ? h('tr', { class: 'loops' }, h('td', { colspan: 8 },
    h('table', { class: 'workers' },
      h('thead', null, h('tr', null, ['worker', 'lease', 'lease until', 'steps in flight'].map((t) => h('th', null, t)))),
      h('tbody', null, p.workers.map((w) => h('tr', { 'data-worker': w.owner },
        h('td', null, w.owner, w.tick ? h('span', { class: 'dim' }, ' (tick: reaper, schedules)') : null),
        h('td', null, leaseBadge(w.lease)),
        h('td', null, w.lease_expires_at ? time(w.lease_expires_at) : '—'),
        h('td', null, count(w.steps_in_flight)))))))) : null];
}

// The last hour by minute: runs created (grey, left) and finished (right: succeeded, failed and
// cancelled stacked).
function minuteChart(minutes) {
  const W = 720;
  const H = 120;
  const slot = W / minutes.length;
  const bw = Math.max(1, Math.floor(slot / 2) - 1);
  const max = Math.max(1, ...minutes.map((m) => Math.max(m.created, m.succeeded + m.failed + m.cancelled)));
  const y = (n) => Math.round((H * n) / max);
  return s('svg', { class: 'chart throughput', viewBox: `0 0 ${W} ${H + 20}`, width: W, height: H + 20, role: 'img',
    'aria-label': 'runs created and finished per minute over the last hour' },
  minutes.map((m, i) => {
    const x = Math.round(i * slot);
    const parts = [['succeeded', m.succeeded], ['failed', m.failed], ['cancelled', m.cancelled]];
    let top = H;
    return s('g', null,
      s('title', null, `${time(m.at).slice(11, 16)}: ${m.created} created, ${m.succeeded} succeeded, ${m.failed} failed, ${m.cancelled} cancelled`),
      s('rect', { class: 'bar-created', x, y: H - y(m.created), width: bw, height: y(m.created) }),
      parts.filter(([, n]) => n > 0).map(([k, n]) => {
        top -= y(n);
        return s('rect', { class: `bar-${k}`, x: x + bw + 1, y: top, width: bw, height: y(n) });
      }),
      i % 10 === 0 ? s('text', { x, y: H + 14, class: 'axis' }, time(m.at).slice(11, 16)) : null);
  }));
}

export function render(root, ctx) {
  const totals = h('p', { class: 'totals' });
  const wfBody = h('tbody');
  const chartBox = h('div', { class: 'chart-box' });
  const hourLine = h('p', { class: 'dim' });
  const procBox = h('section', { class: 'processes' });
  let timer = null;
  let stopped = false;

  const loadQueue = async () => {
    try {
      const q = await api.get('/v1/queue');
      if (stopped) return;
      replace(totals,
        h('span', { class: 'count' }, `due ${count(q.due)}${q.due > 100000 ? '+' : ''}`), ' ',
        h('span', { class: 'count' }, `oldest due ${q.oldest_due_age_ms === null ? '—' : duration(q.oldest_due_age_ms)}`), ' ',
        h('span', { class: 'count' }, `delayed ${count(q.delayed)}${q.delayed > 100000 ? '+' : ''}`), ' ',
        h('span', { class: 'count' }, `running ${count(q.running)}`));
      replace(wfBody, q.workflows.length ? q.workflows.map((w) => h('tr', { 'data-workflow': w.workflow },
        h('td', null, h('a', { href: `#/runs${api.query({ workflow: w.workflow })}` }, w.workflow)),
        h('td', null, count(w.due)),
        h('td', null, w.oldest_due_age_ms === null ? '—' : duration(w.oldest_due_age_ms)),
        h('td', null, count(w.running))))
        : h('tr', null, h('td', { colspan: 4, class: 'empty' }, 'Nothing is due or running.')));
      replace(chartBox, minuteChart(q.minutes));
      const sum = (k) => q.minutes.reduce((n, m) => n + m[k], 0);
      replace(hourLine, `Last hour (runs created in it): ${count(sum('created'))} created, ${count(sum('succeeded'))} succeeded, `,
        `${count(sum('failed'))} failed, ${count(sum('cancelled'))} cancelled. Grey: created; green, red, amber: finished.`);
    } catch (err) {
      replace(totals, h('span', { class: 'error' }, err.message));
    }
  };

  const loadWorkers = async () => {
    if (ctx.who.role !== 'admin') {
      replace(procBox, h('p', { class: 'dim' }, 'The processes serving this database are shown to the operator’s admin keys.'));
      return;
    }
    try {
      const w = await api.get('/v1/workers');
      if (stopped) return;
      replace(procBox, h('table', { class: 'processes' },
        h('thead', null, h('tr', null, ['process', 'state', 'version', 'role', 'started', 'last beat', 'steps in flight', 'serves'].map((t) => h('th', null, t)))),
        h('tbody', null, w.processes.length ? w.processes.map(processRows)
          : h('tr', null, h('td', { colspan: 8, class: 'empty' }, 'No process has registered.')))));
    } catch (err) {
      replace(procBox, h('p', { class: 'dim' }, err.status === 404
        ? 'The processes serving this database are shown to the operator’s admin keys (tenant “default”).' : err.message));
    }
  };

  const load = async () => {
    await Promise.all([loadQueue(), loadWorkers()]);
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  };

  replace(root, h('h1', null, 'Workers & queue'),
    h('h2', null, 'Queue'), totals,
    h('table', { class: 'queue' }, h('thead', null, h('tr', null, ['workflow', 'due', 'oldest due', 'running steps'].map((t) => h('th', null, t)))), wfBody),
    h('h2', null, 'Throughput'), chartBox, hourLine,
    h('h2', null, 'Processes'), procBox);
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
