// console/timeline.js: a run's waterfall from its event log, its steps and the version's
// definition: per step, the waits before it could start (its delay, its sending window, an `at`
// time or the run's start time, its concurrency key, then the queue), each attempt with its
// outcome, the waits for its rate limit's budget and between retries, waits for an event or a map's
// children, and the time a quota blocked it. The log says when a window or a time held a step
// (step.scheduled, with the window's zone), when its rate limit did (step.rate_limited: the claim
// found no budget, so it was no attempt) and when a quota did (step.blocked); a delay is the
// definition's, from the moment the step's needs were done; a step with a concurrency key names the
// step it queued behind and when that one finished (the run's steps, `concurrency_key`). What is
// left of a ready step's wait is the queue: no free worker, or the tenant's cap on running steps.
import { h } from './dom.js';
import { duration } from './fmt.js';

// "1h30m" (engine/duration.h: digits and a unit, ms s m h d, summed) in ms; 0 when absent.
function durationMs(text) {
  const unit = { ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000 };
  let ms = 0;
  for (const [, n, u] of String(text || '').matchAll(/(\d+)(ms|s|m|h|d)/g)) ms += Number(n) * unit[u];
  return ms;
}

// The concurrency key's part of a wait from `from` to `to` (ms; to null: still waiting): the
// segment while the step it queued behind had not finished, or null when the key was free.
function keyWait(rs, from, to) {
  const ck = rs && rs.concurrency_key;
  const behind = ck && ck.queued_behind;
  if (!behind) return null;
  const freed = behind.finished_at ? new Date(behind.finished_at).getTime() : null;
  if (freed !== null && freed <= from) return null;
  const end = freed === null ? to : to === null ? freed : Math.min(freed, to);
  const label = `concurrency key ${ck.key}: queued behind run #${behind.run} step ${behind.step}${
    freed === null ? ` (${behind.state})` : `, free at ${behind.finished_at}`}`;
  return { kind: 'ckey', from, to: end, label, run: behind.run };
}

// The waits of a step before its first claim at `at` (null: not claimed yet, the last stays open):
// its delay after its needs, the wait for its concurrency key, the queue.
function beforeStart(list, st, rs, ready, at) {
  // after a wait already drawn (a quota's block), not over it
  const from = list.length ? Math.max(ready, list[list.length - 1].to || ready) : ready;
  const limit = at === null ? Date.now() : at;
  const due = Math.min(limit, ready + durationMs(st && st.delay));
  if (due > from) list.push({ kind: 'delay', from, to: due, label: `delay ${st.delay}` });
  const q0 = Math.max(from, due);
  if (limit <= q0) return;
  const key = keyWait(rs, q0, at);
  if (key) list.push(key);
  const q = key ? key.to : q0;
  if (q !== null && (at === null || at > q)) {
    list.push({ kind: 'queued', from: q, to: at,
      label: 'ready, waiting to be claimed (no free worker, or the tenant\'s cap on running steps)' });
  }
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
  const states = new Map((run.steps || []).map((rs) => [rs.key, rs]));
  const claimed = (x) => x.kind === 'attempt' || x.kind === 'ratelimit';
  // when the step's needs were done (the run's creation for a first step)
  const readyAt = (st) => {
    const needs = (st && st.needs) || [];
    return needs.length ? Math.max(...needs.map((n) => finishedAt.get(n) || created)) : created;
  };
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
      else if (!list.some(claimed)) beforeStart(list, st, states.get(e.step), readyAt(st), at);
      const seg = { kind: 'attempt', from: at, to: null, label: `attempt ${(e.data && e.data.attempt) || list.filter((x) => x.kind === 'attempt').length + 1}` };
      list.push(seg);
      open.set(e.step, seg);
    } else if (e.type === 'step.waiting') {
      close('ok');
      const what = e.data && e.data.event ? `waits for event ${e.data.event} ${e.data.key}` : 'waits for its items';
      const seg = { kind: 'waiting', from: at, to: null, label: what };
      list.push(seg);
      open.set(e.step, seg);
    } else if (e.type === 'step.rate_limited') {
      // the claim found no budget: what step.started opened was no attempt, and the step waits
      // until it is claimed again (one segment for a run of such claims)
      const d = e.data || {};
      const label = `rate limit ${d.rate_limit}: no budget, tries again at ${d.run_at}`;
      const prev = list[list.length - 2];
      if (o && prev && prev.kind === 'ratelimit' && prev.to === o.from) {
        list.pop();
        Object.assign(prev, { to: null, label });
        open.set(e.step, prev);
      } else if (o) {
        Object.assign(o, { kind: 'ratelimit', label });
      } else {
        const seg = { kind: 'ratelimit', from: at, to: null, label };
        list.push(seg);
        open.set(e.step, seg);
      }
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
  // a ready step never claimed yet: its wait so far
  for (const st of steps) {
    const rs = states.get(st.key);
    const list = out.get(st.key);
    if (rs && rs.state === 'ready' && !open.has(st.key) && !list.some(claimed)) beforeStart(list, st, rs, readyAt(st), null);
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
      h('span', { class: 'seg-key k-ckey' }), ' concurrency key ', h('span', { class: 'seg-key k-ratelimit' }), ' rate limit ',
      h('span', { class: 'seg-key k-attempt' }), ' attempt ', h('span', { class: 'seg-key k-retrywait' }), ' retry backoff ',
      h('span', { class: 'seg-key k-waiting' }), ' waiting for an event or items ',
      h('span', { class: 'seg-key k-blocked' }), ' blocked by a quota'));
}
