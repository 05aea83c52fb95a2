// console/batches.js: a batch's progress (#/batches/ID), refreshed every 2 s while it runs, with
// its runs in the run list and its results export.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { count, time } from './fmt.js';

export function render(root, ctx) {
  const id = ctx.match[1];
  const box = h('div', { class: 'batch' });
  const idInput = h('input', { type: 'number', min: 1, name: 'batch', value: id || '', 'data-search': true, 'aria-label': 'batch id' });
  replace(root, h('h1', null, 'Batches'),
    h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); ctx.navigate(`#/batches/${idInput.value}`); } },
      idInput, h('button', { type: 'submit' }, 'Open')),
    box);
  if (!id) {
    replace(box, h('p', { class: 'dim' }, 'A batch is created by POST /v1/batches; its id opens its progress here.'));
    return undefined;
  }
  let timer = null;
  const show = async () => {
    try {
      const b = await api.get(`/v1/batches/${id}`);
      const bar = h('span', { class: 'fill' });
      bar.style.width = `${b.percent}%`;
      replace(box, h('h2', null, `Batch ${b.id} · ${b.workflow} v${b.version} · ${b.state}`),
        h('p', null, h('span', { class: 'bar wide' }, bar), ` ${count(b.done)} of ${count(b.total)} done (${b.percent}%)`),
        h('p', null, ['queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) =>
          h('a', { href: `#/runs${api.query({ batch: b.id, state: s })}`, class: `count s-${s}` }, `${s} ${count(b[s])}`))),
        h('p', { class: 'dim' }, `created ${time(b.created_at)}`),
        h('p', null, h('a', { href: `#/runs${api.query({ batch: b.id })}` }, 'Its runs'), ' · ',
          h('a', { href: `/v1/batches/${b.id}/results?format=csv`, download: `batch-${b.id}.csv` }, 'Export results (CSV)'), ' · ',
          h('a', { href: `/v1/batches/${b.id}/results`, download: `batch-${b.id}.ndjson` }, 'Export results (NDJSON)')));
      if (b.state === 'running') timer = setTimeout(show, 2000);
    } catch (err) {
      replace(box, h('p', { class: 'error', role: 'alert' }, err.status === 404 ? 'No such batch.' : err.message));
    }
  };
  show();
  return () => clearTimeout(timer);
}
