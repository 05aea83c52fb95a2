// console/batches.js: the tenant's batches (#/batches), newest first with their progress and
// export, refreshed every 5 s while one runs; a batch's progress (#/batches/ID), refreshed every
// 2 s while it runs, with its runs in the run list and its results export.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { ago, count, time } from './fmt.js';
import { stateBadge } from './runs.js';

const PAGE = 20;

function exportLinks(b) {
  return [h('a', { href: `/v1/batches/${b.id}/results?format=csv`, download: `batch-${b.id}.csv` }, 'CSV'), ' · ',
    h('a', { href: `/v1/batches/${b.id}/results`, download: `batch-${b.id}.ndjson` }, 'NDJSON')];
}

function bar(percent, wide) {
  const fill = h('span', { class: 'fill' });
  fill.style.width = `${percent}%`;
  return h('span', { class: wide ? 'bar wide' : 'bar' }, fill);
}

function list(box) {
  const body = h('tbody');
  const more = h('button', { type: 'button', class: 'more', hidden: true }, 'Show older');
  let limit = PAGE;
  let timer = null;
  let stopped = false;
  const load = async () => {
    clearTimeout(timer);
    try {
      // one longer first page keeps the live refresh simple; the API caps it at 100
      const page = await api.get(`/v1/batches${api.query({ limit })}`);
      if (stopped) return;
      replace(body, page.batches.length ? page.batches.map((b) => h('tr', { 'data-batch': b.id },
        h('td', null, h('a', { href: `#/batches/${b.id}` }, `#${b.id}`)),
        h('td', null, h('a', { href: `#/workflows/${encodeURIComponent(b.workflow)}` }, b.workflow), ` v${b.version}`),
        h('td', null, stateBadge(b.state)),
        h('td', { class: 'progress' }, bar(b.percent), ` ${count(b.done)}/${count(b.total)}`,
          b.failed ? h('span', { class: 'error' }, ` · ${count(b.failed)} failed`) : null,
          b.cancelled ? h('span', { class: 'dim' }, ` · ${count(b.cancelled)} cancelled`) : null),
        h('td', { title: b.created_at }, ago(b.created_at)),
        h('td', null, h('a', { href: `#/runs${api.query({ batch: b.id })}` }, 'runs'), ' · ', exportLinks(b))))
        : h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'No batches yet (POST /v1/batches makes one).')));
      more.hidden = page.batches.length < limit || limit >= 100;
      if (page.batches.some((b) => b.state === 'running')) timer = setTimeout(load, 5000);
    } catch (err) {
      replace(body, h('tr', null, h('td', { colspan: 6, class: 'error' }, err.message)));
    }
  };
  more.addEventListener('click', () => {
    limit = Math.min(limit + PAGE, 100);
    load();
  });
  replace(box, h('table', { class: 'batches' }, h('thead', null, h('tr', null,
    ['batch', 'workflow', 'state', 'progress', 'created', ''].map((t) => h('th', null, t)))), body), more);
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function render(root, ctx) {
  const id = ctx.match[1];
  const box = h('div', { class: 'batch' });
  const idInput = h('input', { type: 'number', min: 1, name: 'batch', value: id || '', 'data-search': true, 'aria-label': 'batch id' });
  replace(root, h('h1', null, 'Batches'),
    h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); ctx.navigate(`#/batches/${idInput.value}`); } },
      idInput, h('button', { type: 'submit' }, 'Open')),
    box);
  if (!id) return list(box);
  let timer = null;
  const show = async () => {
    try {
      const b = await api.get(`/v1/batches/${id}`);
      replace(box, h('h2', null, `Batch ${b.id} · ${b.workflow} v${b.version} · ${b.state}`),
        h('p', null, bar(b.percent, true), ` ${count(b.done)} of ${count(b.total)} done (${b.percent}%)`),
        h('p', null, ['queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) =>
          h('a', { href: `#/runs${api.query({ batch: b.id, state: s })}`, class: `count s-${s}` }, `${s} ${count(b[s])}`))),
        h('p', { class: 'dim' }, `created ${time(b.created_at)}`),
        h('p', null, h('a', { href: `#/runs${api.query({ batch: b.id })}` }, 'Its runs'), ' · Export results: ',
          exportLinks(b)));
      if (b.state === 'running') timer = setTimeout(show, 2000);
    } catch (err) {
      replace(box, h('p', { class: 'error', role: 'alert' }, err.status === 404 ? 'No such batch.' : err.message));
    }
  };
  show();
  return () => clearTimeout(timer);
}
