// console/timeline.js: a run's waterfall from its event log and the version's definition: per
// step, the waits before it could start (its delay, its sending window, an `at` time or the run's
// start time, then the queue), each attempt with its outcome, the waits between retries, waits for
// an event or a map's children, and the time a quota blocked it. The log says when a window or a
// time held a step (step.scheduled, with the window's zone) and when a quota did (step.blocked); a
// delay is the definition's, from the moment the step's needs were done. What held a ready step in
// the queue (no free worker, a rate limit, a concurrency key) is not recorded: the queue's label
// names those its definition has.
import { h } from './dom.js';
import { duration } from './fmt.js';

// "1h30m" (engine/duration.h: digits and a unit, ms s m h d, summed) in ms; 0 when absent.
function durationMs(text) {
  const unit = { ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000 };
  let ms = 0;
  for (const [, n, u] of String(text || '').matchAll(/(\d+)(ms|s|m|h|d)/g)) ms += Number(n) * unit[u];
  return ms;
}

// What may hold a ready step of this definition in the queue besides the lack of a free worker.
function queueLabel(st) {
  const why = ['no free worker'];
  const input = (st && st.input) || {};
  if (st && st.concurrency_key) why.push(`concurrency key ${st.concurrency_key}`);
  if (typeof input.rate_limit === 'string') why.push(`rate limit ${input.rate_limit}`);
  else if (st && ['llm', 'email', 'sms', 'whatsapp'].includes(st.kind)) why.push('its provider\'s rate limit');
  return `ready, waiting to be claimed (${why.join(', ')})`;
}

const END = { 'step.succeeded': 'ok', 'step.failed': 'failed', 'step.retrying': 'retry',
  'step.interrupted': 'interrupted', 'step.cancelled': 'cancelled', 'step.skipped': 'skipped' };

// segments per step key: [{kind, from, to, label}] (ms since the epoch; to null: still open)
export function segments(steps, events, run) {
  const t = (iso) => new Date(iso).getTime();
  const created = t(run.created_at);
  const finishedAt = new Map();
  const out = new Map(steps.map((st) => [st.key, []]));
  const open = new Map();
  for (const e of events) {
    if (!e.step || !out.has(e.step)) continue;
    const list = out.get(e.step);
    const at = t(e.at);
    const o = open.get(e.step);
    const close = (kind) => {
      if (o) {
        o.to = at;
        if (kind) o.outcome = kind;
        open.delete(e.step);
      }
    };
    const st = steps.find((x) => x.key === e.step);
    if (e.type === 'step.scheduled') {
      close();
      const tz = e.data && e.data.tz;
      const seg = tz
        ? { kind: 'window', from: at, to: null, label: `sending window: waits until ${e.data.run_at} (${tz})` }
        : { kind: 'wait', from: at, to: null, label: `waits until ${e.data && e.data.run_at}` };
      list.push(seg);
      open.set(e.step, seg);
    } else if (e.type === 'step.started') {
      if (o) close();
      else if (!list.some((x) => x.kind === 'attempt')) {
        const needs = (st && st.needs) || [];
        const ready = needs.length ? Math.max(...needs.map((n) => finishedAt.get(n) || created)) : created;
        // after a wait already drawn (a quota's block), not over it
        const from = list.length ? Math.max(ready, list[list.length - 1].to || ready) : ready;
        const due = Math.min(at, ready + durationMs(st && st.delay));
        if (due > from) list.push({ kind: 'delay', from, to: due, label: `delay ${st.delay}` });
        if (at > Math.max(from, due)) list.push({ kind: 'queued', from: Math.max(from, due), to: at, label: queueLabel(st) });
      }
      const seg = { kind: 'attempt', from: at, to: null, label: `attempt ${(e.data && e.data.attempt) || list.filter((x) => x.kind === 'attempt').length + 1}` };
      list.push(seg);
      open.set(e.step, seg);
    } else if (e.type === 'step.waiting') {
      close('ok');
      const what = e.data && e.data.event ? `waits for event ${e.data.event} ${e.data.key}` : 'waits for its items';
      const seg = { kind: 'waiting', from: at, to: null, label: what };
      list.push(seg);
      open.set(e.step, seg);
    } else if (e.type === 'step.blocked') {
      close('blocked');
      const d = e.data || {};
      const seg = { kind: 'blocked', from: at, to: null, label: `blocked: quota ${d.quota} used up (${d.used} of ${d.limit}), resets ${d.resets_at}` };
      list.push(seg);
      open.set(e.step, seg);
    } else if (e.type === 'step.unblocked') {
      close();
    } else if (e.type === 'step.unknown') {
      close('unknown');
      const seg = { kind: 'waiting', from: at, to: null, label: `send ${e.data && e.data.send_key} outcome unknown` };
      list.push(seg);
      open.set(e.step, seg);
    } else if (END[e.type]) {
      close(END[e.type]);
      if (e.type === 'step.retrying') {
        const retryAt = e.data && e.data.retry_at ? t(e.data.retry_at) : null;
        const seg = { kind: 'retrywait', from: at, to: null, label: `retry at ${e.data && e.data.retry_at}`, until: retryAt };
        list.push(seg);
        open.set(e.step, seg);
      } else if (e.type !== 'step.interrupted') {
        finishedAt.set(e.step, at);
      }
    }
  }
  return out;
}

export function waterfall(steps, events, run) {
  const segs = segments(steps, events, run);
  const t0 = new Date(run.created_at).getTime();
  const end = run.finished_at ? new Date(run.finished_at).getTime() : Date.now();
  const total = Math.max(end - t0, 1);
  const rows = steps.map((st) => {
    const bars = segs.get(st.key).map((g) => {
      const to = g.to === null ? end : g.to;
      const bar = h('span', { class: `seg k-${g.kind}${g.outcome ? ` o-${g.outcome}` : ''}`,
        title: `${g.label}: ${duration(to - g.from)}${g.outcome ? ` (${g.outcome})` : ''}` });
      bar.style.left = `${(100 * (g.from - t0)) / total}%`;
      bar.style.width = `${Math.max((100 * (to - g.from)) / total, 0.3)}%`;
      return bar;
    });
    const attempts = segs.get(st.key).filter((g) => g.kind === 'attempt');
    const took = attempts.length ? duration((attempts[attempts.length - 1].to || end) - attempts[0].from) : '';
    return h('div', { class: 'wf-row', 'data-step': st.key },
      h('span', { class: 'wf-key', title: st.key }, st.key),
      h('span', { class: 'wf-track' }, bars),
      h('span', { class: 'wf-took' }, attempts.length > 1 ? `${took} · ${attempts.length} attempts` : took));
  });
  return h('div', { class: 'waterfall', role: 'group', 'aria-label': 'timeline' },
    h('div', { class: 'wf-axis' }, h('span', null, '0'), h('span', null, duration(total))),
    rows,
    h('p', { class: 'legend' },
      h('span', { class: 'seg-key k-queued' }), ' queued ', h('span', { class: 'seg-key k-delay' }), ' delay ',
      h('span', { class: 'seg-key k-window' }), ' sending window ', h('span', { class: 'seg-key k-wait' }), ' at / start time ',
      h('span', { class: 'seg-key k-attempt' }), ' attempt ', h('span', { class: 'seg-key k-retrywait' }), ' retry backoff ',
      h('span', { class: 'seg-key k-waiting' }), ' waiting for an event or items ',
      h('span', { class: 'seg-key k-blocked' }), ' blocked by a quota'));
}
