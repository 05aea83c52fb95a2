// console/runs.js: the run list (#/runs?filters): filters including metadata (name=value words,
// and free search: other words are the start of any metadata value), counts by state, a live refresh every 2 s, and cancel or retry of the selected runs. The
// filters live in the address, so a filtered list can be bookmarked or sent to a colleague.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { ago, count, duration, span } from './fmt.js';

const STATES = ['scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];
const FIELDS = ['workflow', 'version', 'state', 'batch', 'parent', 'schedule', 'failed_step', 'created_after',
  'created_before', 'finished_after', 'finished_before'];
const REFRESH_MS = 2000;

// "lead=30012 campaign=spring" -> {"meta.lead": "30012", ...}; the words without "=" are a free
// search, joined by one space: "ada lovelace campaign=spring" -> {q: "ada lovelace", ...} finds the
// runs with a metadata value starting so (any name, any case).
export function parseMeta(text) {
  const out = {};
  const free = [];
  for (const word of text.trim().split(/\s+/).filter(Boolean)) {
    const i = word.indexOf('=');
    if (i < 0) {
      free.push(word);
      continue;
    }
    if (i === 0 || i === word.length - 1) throw new Error(`"${word}": write metadata as name=value`);
    out[`meta.${word.slice(0, i)}`] = word.slice(i + 1);
  }
  if (free.length) out.q = free.join(' ');
  return out;
}

function metaText(params) {
  const words = [];
  if (params.get('q')) words.push(params.get('q'));
  for (const [k, v] of params) if (k.startsWith('meta.')) words.push(`${k.slice(5)}=${v}`);
  return words.join(' ');
}

function filtersOf(params) {
  const f = {};
  if (params.get('q')) f.q = params.get('q');
  for (const k of FIELDS) if (params.get(k)) f[k] = params.get(k);
  for (const [k, v] of params) if (k.startsWith('meta.')) f[k] = v;
  return f;
}

function hashOf(filters) {
  return `#/runs${api.query(filters)}`;
}

export function stateBadge(state) {
  return h('span', { class: `badge s-${state}` }, state);
}

export function progressBar(p) {
  return h('span', { class: 'progress', title: `${p.done} of ${p.total} steps` },
    h('span', { class: 'bar' }, h('span', { class: 'fill', style: null, 'data-pct': p.percent })),
    ` ${p.done}/${p.total}`);
}

// The fill width is set through the CSSOM (no inline style attribute: the CSP forbids those).
function sizeBars(root) {
  for (const el of root.querySelectorAll('.fill[data-pct]')) el.style.width = `${el.dataset.pct}%`;
}

export function metaChips(meta, onPick) {
  return Object.entries(meta || {}).map(([k, v]) =>
    h('button', { type: 'button', class: 'chip', title: `only runs with ${k}=${v}`,
      onclick: () => onPick(k, v) }, `${k}=${v}`));
}

export function render(root, ctx) {
  const filters = filtersOf(ctx.params);
  const selected = new Set();
  let shown = [];
  let cursor = null;
  let limit = 50;
  let timer = null;
  let stopped = false;

  const metaInput = h('input', { type: 'search', name: 'meta', 'data-search': true,
    placeholder: 'search: +1 555… or lead=30012', value: metaText(ctx.params),
    'aria-label': 'search metadata: the start of any value, or name=value words' });
  const wfSelect = h('select', { name: 'workflow', 'aria-label': 'workflow' },
    h('option', { value: '' }, 'any workflow'));
  const stateSelect = h('select', { name: 'state', 'aria-label': 'state' },
    h('option', { value: '' }, 'any state'),
    STATES.map((s) => h('option', { value: s, selected: filters.state === s }, s)));
  const more = {};
  for (const [k, label, type] of [['version', 'version', 'number'], ['batch', 'batch', 'number'],
    ['parent', 'parent run', 'number'], ['failed_step', 'failed step', 'text'],
    ['created_after', 'created after', 'datetime-local'], ['created_before', 'created before', 'datetime-local']]) {
    let value = filters[k] || '';
    if (type === 'datetime-local' && value) value = value.slice(0, 16);
    more[k] = h('input', { type, name: k, value, 'aria-label': label, placeholder: label, min: type === 'number' ? 1 : null });
  }
  const formError = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'filters', onsubmit: (e) => {
    e.preventDefault();
    const next = {};
    try {
      Object.assign(next, parseMeta(metaInput.value));
    } catch (err) {
      formError.textContent = err.message;
      return;
    }
    if (wfSelect.value) next.workflow = wfSelect.value;
    if (stateSelect.value) next.state = stateSelect.value;
    for (const [k, el] of Object.entries(more)) {
      if (!el.value) continue;
      next[k] = el.type === 'datetime-local' ? new Date(el.value).toISOString() : el.value;
    }
    ctx.navigate(hashOf(next));
  } },
  metaInput, wfSelect, stateSelect, Object.values(more),
  h('button', { type: 'submit' }, 'Filter'),
  h('a', { href: '#/runs', class: 'button-link' }, 'Clear'),
  formError);

  const counts = h('div', { class: 'counts', 'aria-live': 'polite' });
  const status = h('p', { class: 'status', role: 'status' });
  const tbody = h('tbody');
  const selectAll = h('input', { type: 'checkbox', 'aria-label': 'select all shown', onchange: () => {
    for (const r of shown) if (selectAll.checked) selected.add(r.id); else selected.delete(r.id);
    draw();
  } });
  const bulkResult = h('span', { class: 'bulk-result', role: 'status' });
  const bulk = h('div', { class: 'bulk' },
    h('button', { type: 'button', 'data-action': 'cancel', onclick: () => act('cancel') }, 'Cancel selected'),
    h('button', { type: 'button', 'data-action': 'retry', onclick: () => act('retry') }, 'Retry selected'),
    bulkResult);
  const loadMore = h('button', { type: 'button', class: 'more', onclick: async () => {
    limit = Math.min(limit + 50, 500);
    await refresh();
  } }, 'Show more');

  const pick = (k, v) => ctx.navigate(hashOf({ ...filters, [`meta.${k}`]: v }));

  function row(r) {
    return h('tr', { 'data-id': r.id, class: selected.has(r.id) ? 'selected' : null },
      h('td', null, h('input', { type: 'checkbox', 'aria-label': `select run ${r.id}`,
        checked: selected.has(r.id), onchange: (e) => {
          if (e.target.checked) selected.add(r.id); else selected.delete(r.id);
          e.target.closest('tr').classList.toggle('selected', e.target.checked);
        } })),
      h('td', null, h('a', { href: `#/runs/${r.id}`, class: 'run-link' }, `#${r.id}`)),
      h('td', null, h('a', { href: `#/workflows/${encodeURIComponent(r.workflow)}` }, r.workflow),
        h('span', { class: 'dim' }, ` v${r.version}`)),
      h('td', null, stateBadge(r.state)),
      h('td', null, progressBar(r.progress)),
      h('td', { class: 'meta' }, metaChips(r.meta, pick),
        r.parent ? h('a', { href: `#/runs/${r.parent}`, class: 'dim' }, ` ↑ #${r.parent}`) : null,
        r.batch ? h('a', { href: hashOf({ batch: r.batch }), class: 'dim' }, ` batch ${r.batch}`) : null),
      h('td', { class: 'err' }, r.error ? `${r.error.step ? `${r.error.step}: ` : ''}${r.error.message || r.error.code}` : ''),
      h('td', { title: r.created_at }, ago(r.created_at)),
      h('td', null, duration(span(r.started_at, r.finished_at))));
  }

  function draw() {
    const focusedId = document.activeElement && document.activeElement.closest &&
      document.activeElement.closest('tr[data-id]') ? document.activeElement.closest('tr[data-id]').dataset.id : null;
    const focusedCheckbox = focusedId && document.activeElement.type === 'checkbox';
    replace(tbody, shown.length ? shown.map(row)
      : h('tr', null, h('td', { colspan: 9, class: 'empty' }, 'No runs match.')));
    sizeBars(tbody);
    if (focusedId) {
      const tr = tbody.querySelector(`tr[data-id="${CSS.escape(focusedId)}"]`);
      const el = tr && tr.querySelector(focusedCheckbox ? 'input' : 'a.run-link');
      if (el) el.focus();
    }
    selectAll.checked = shown.length > 0 && shown.every((r) => selected.has(r.id));
    loadMore.hidden = !cursor || limit >= 500;
  }

  async function refresh() {
    try {
      const page = await api.get(`/v1/runs${api.query({ ...filters, limit })}`);
      if (stopped) return;
      shown = page.runs;
      cursor = page.next_cursor;
      draw();
      status.textContent = `${shown.length} shown${cursor ? ', more below' : ''} · live`;
      if (!performance.getEntriesByName('runs-shown').length) performance.mark('runs-shown');
    } catch (err) {
      status.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
    }
  }

  async function refreshCounts() {
    const { state, ...rest } = filters;
    try {
      const c = await api.get(`/v1/runs/counts${api.query(rest)}`);
      if (stopped) return;
      replace(counts, STATES.map((s) => h('a', { href: hashOf({ ...rest, state: s }),
        class: `count s-${s}${state === s ? ' active' : ''}` }, `${s} ${count(c[s])}${c.capped ? '+' : ''}`)));
    } catch (err) {
      replace(counts, '');
    }
  }

  async function act(what) {
    const ids = [...selected];
    if (!ids.length) {
      bulkResult.textContent = 'Select runs first.';
      return;
    }
    let ok = 0;
    const failed = [];
    for (const id of ids) {
      try {
        await api.post(`/v1/runs/${id}/${what}`);
        ok++;
      } catch (err) {
        failed.push(`#${id}: ${err.message}`);
      }
    }
    bulkResult.textContent = `${what === 'cancel' ? 'Cancelled' : 'Retried'} ${ok} of ${ids.length}` +
      (failed.length ? ` (${failed.slice(0, 3).join('; ')}${failed.length > 3 ? '; …' : ''})` : '');
    selected.clear();
    await refresh();
    refreshCounts();
  }

  async function tick() {
    if (stopped) return;
    if (document.visibilityState === 'visible') await refresh();
    timer = setTimeout(tick, REFRESH_MS);
  }

  replace(root,
    h('h1', null, 'Runs'),
    form, counts, bulk,
    h('table', { class: 'runs' },
      h('thead', null, h('tr', null, h('th', null, selectAll), ['run', 'workflow', 'state', 'progress',
        'metadata', 'error', 'created', 'took'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody),
    loadMore, status);

  refresh().then(() => { timer = setTimeout(tick, REFRESH_MS); });
  refreshCounts();
  const countsTimer = setInterval(refreshCounts, 5000);
  api.get('/v1/workflows').then((l) => {
    for (const w of l.workflows) {
      wfSelect.appendChild(h('option', { value: w.name, selected: filters.workflow === w.name }, w.name));
    }
  }).catch(() => {});
  return () => {
    stopped = true;
    clearTimeout(timer);
    clearInterval(countsTimer);
  };
}
