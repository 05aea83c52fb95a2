// console/schedules.js: the tenant's schedules (#/schedules) with their next fire, last run and
// counts; pause, resume and trigger; one schedule (#/schedules/NAME) with its next 10 ticks in UTC
// and in its own zone, and its runs.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { ago, json, time } from './fmt.js';
import { stateBadge } from './runs.js';

const path = (name) => `/v1/schedules/${encodeURIComponent(name)}`;

function actions(s, result, after) {
  const act = (what) => async () => {
    result.textContent = '';
    try {
      const r = await api.post(`${path(s.name)}/${what}`);
      result.textContent = what === 'trigger' ? `Triggered: run #${r.id}.` : `${what === 'pause' ? 'Paused' : 'Resumed'} ${s.name}.`;
    } catch (err) {
      result.textContent = err.message;
    }
    after();
  };
  return [
    s.paused ? h('button', { type: 'button', 'data-action': 'resume', onclick: act('resume') }, 'Resume')
      : h('button', { type: 'button', 'data-action': 'pause', onclick: act('pause') }, 'Pause'),
    h('button', { type: 'button', 'data-action': 'trigger', onclick: act('trigger') }, 'Trigger now'),
  ];
}

function list(root) {
  const body = h('tbody');
  const result = h('p', { class: 'action-result', role: 'status' });
  const load = async () => {
    try {
      const l = await api.get('/v1/schedules');
      replace(body, l.schedules.length ? l.schedules.map((s) => h('tr', { 'data-schedule': s.name },
        h('td', null, h('a', { href: `#/schedules/${encodeURIComponent(s.name)}` }, s.name)),
        h('td', null, h('a', { href: `#/workflows/${encodeURIComponent(s.workflow)}` }, s.workflow)),
        h('td', null, s.cron ? `cron ${s.cron} (${s.tz})` : `every ${s.every}`),
        h('td', null, s.paused ? h('span', { class: 'badge s-cancelled' }, 'paused') : s.next_fire ? time(s.next_fire) : 'none left'),
        h('td', null, s.last_run ? [h('a', { href: `#/runs/${s.last_run.id}` }, `#${s.last_run.id}`), ' ', stateBadge(s.last_run.state)] : '—'),
        h('td', null, `${s.fires} runs${s.skips ? `, ${s.skips} skipped` : ''}`),
        h('td', null, actions(s, result, load))))
        : h('tr', null, h('td', { colspan: 7, class: 'empty' }, 'No schedules (PUT /v1/schedules/NAME makes one).')));
    } catch (err) {
      replace(body, h('tr', null, h('td', { colspan: 7, class: 'error' }, err.message)));
    }
  };
  replace(root, h('h1', null, 'Schedules'), result,
    h('table', { class: 'schedules' }, h('thead', null, h('tr', null,
      ['name', 'workflow', 'when', 'next fire', 'last run', 'made', ''].map((t) => h('th', null, t)))), body));
  load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}

function detail(root, ctx, name) {
  const box = h('div');
  const result = h('p', { class: 'action-result', role: 'status' });
  const load = async () => {
    try {
      const s = await api.get(path(name));
      replace(box,
        h('p', null, h('a', { href: `#/workflows/${encodeURIComponent(s.workflow)}` }, s.workflow),
          s.version ? ` v${s.version}` : ' (latest version)', ' · ',
          s.cron ? `cron ${s.cron} in ${s.tz}` : `every ${s.every}`, ' · overlap ', s.overlap, ' · catch-up ', s.catchup,
          s.paused ? [' · ', h('span', { class: 'badge s-cancelled' }, 'paused')] : ''),
        h('p', { class: 'actions' }, actions(s, result, load),
          h('a', { href: `#/runs${api.query({ schedule: s.name })}`, class: 'button-link' }, 'Its runs')),
        h('p', { class: 'dim' }, `${s.fires} runs made, ${s.skips} skipped`,
          s.last_fire ? ` · last tick ${time(s.last_fire)} (${ago(s.last_fire)})` : ''),
        h('h2', null, 'Next ticks'),
        s.next_fires.length ? h('table', { class: 'ticks' }, h('thead', null, h('tr', null, h('th', null, 'UTC'), h('th', null, `local (${s.tz})`))),
          h('tbody', null, s.next_fires.map((f) => h('tr', null, h('td', null, time(f.utc)), h('td', null, f.local)))))
          : h('p', { class: 'dim' }, 'No ticks left.'),
        h('h2', null, 'Input template'), h('pre', { class: 'json' }, json(s.input)));
    } catch (err) {
      replace(box, h('p', { class: 'error', role: 'alert' }, err.status === 404 ? 'No such schedule.' : err.message));
    }
  };
  replace(root, h('h1', null, 'Schedule ', h('span', { class: 'wf-name' }, name)), result, box);
  load();
}

export function render(root, ctx) {
  if (ctx.match[1]) return detail(root, ctx, decodeURIComponent(ctx.match[1]));
  return list(root);
}
