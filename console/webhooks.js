// console/webhooks.js: the tenant's outbound webhooks (#/webhooks?endpoint=&run=&state=): its
// endpoints (create, pause or resume, rotate the secret, delete) and their deliveries, each with
// the log of its attempts (time, HTTP status, latency, the answer's first bytes) and a redeliver
// action. A secret is shown once, in the answer that made it (create or rotate), and kept nowhere
// in the page afterwards. The API is admin only: a member key gets 404 and the page says so.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { ago, time } from './fmt.js';

const EVENTS = ['run.succeeded', 'run.failed', 'run.cancelled', 'batch.completed', 'step.failed',
  'send.delivered', 'send.bounced'];
const DSTATES = ['pending', 'succeeded', 'failed'];
const PAGE = 50;
const REFRESH_MS = 3000;

const ep = (id, what) => `/v1/webhook-endpoints/${id}${what ? `/${what}` : ''}`;

function endpointState(e) {
  const cls = { active: 's-succeeded', paused: 's-cancelled', disabled: 's-failed' }[e.state] || '';
  return [h('span', { class: `badge ${cls}` }, e.state),
    e.disabled_reason ? h('div', { class: 'dim small-text' }, e.disabled_reason) : null,
    e.failing_since ? h('div', { class: 'error small-text' }, `failing since ${time(e.failing_since)}`) : null];
}

function deliveryBadge(state) {
  const cls = { pending: 's-queued', succeeded: 's-succeeded', failed: 's-failed' }[state] || '';
  return h('span', { class: `badge ${cls}` }, state);
}

// The attempts of one delivery, oldest first.
function attemptLog(d) {
  if (!d.attempt_log.length) return h('p', { class: 'dim' }, 'No attempt yet.');
  return h('table', { class: 'attempts' },
    h('thead', null, h('tr', null, ['at', 'status', 'latency', 'answer (first bytes)', 'error'].map((t) => h('th', null, t)))),
    h('tbody', null, d.attempt_log.map((a) => h('tr', null,
      h('td', null, time(a.at)),
      h('td', { class: a.status >= 200 && a.status < 300 ? '' : 'err' }, a.status ? String(a.status) : '—'),
      h('td', null, `${a.latency_ms} ms`),
      h('td', null, a.response ? h('pre', { class: 'json small' }, a.response) : ''),
      h('td', { class: 'err' }, a.error || '')))));
}

export function render(root, ctx) {
  if (ctx.who.role !== 'admin') {
    replace(root, h('h1', null, 'Webhooks'),
      h('p', { class: 'dim' }, 'Webhook endpoints and deliveries are managed with an admin key.'));
    return undefined;
  }
  const filters = { endpoint: ctx.params.get('endpoint') || '', run: ctx.params.get('run') || '',
    state: ctx.params.get('state') || '' };
  let endpoints = [];
  let stopped = false;
  let timer = null;
  const open = new Set(); // deliveries whose attempt log is unfolded, kept across refreshes

  const result = h('p', { class: 'action-result', role: 'status' });
  const secretBox = h('div', { class: 'secret-box', hidden: true });
  const epBody = h('tbody');
  const dBody = h('tbody');
  const more = h('button', { type: 'button', class: 'more', hidden: true }, 'Show older');

  // -- the create form --
  const url = h('input', { name: 'url', type: 'url', required: true, placeholder: 'https://example.com/hooks/flowd',
    'aria-label': 'endpoint URL' });
  const description = h('input', { name: 'description', placeholder: 'description', 'aria-label': 'description' });
  const workflows = h('input', { name: 'workflows', placeholder: 'workflows (comma-separated; all when empty)',
    'aria-label': 'workflows' });
  const boxes = EVENTS.map((e) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'events', value: e }), ` ${e}`));
  const showSecret = (what, e) => {
    // the one time the secret is shown: it lives in this box until the page is left or closed
    replace(secretBox, h('p', null, h('strong', null, `${what} endpoint #${e.id}. `),
      'Its signing secret is shown this once; keep it where your receiver verifies signatures:'),
    h('pre', { class: 'json secret', 'data-secret': e.id }, e.secret),
    h('button', { type: 'button', onclick: () => { clear(); } }, 'I have kept it'));
    secretBox.hidden = false;
  };
  const clear = () => {
    replace(secretBox);
    secretBox.hidden = true;
  };
  const form = h('form', { class: 'filters webhook-new', onsubmit: async (e) => {
    e.preventDefault();
    result.textContent = '';
    const events = boxes.map((b) => b.firstChild).filter((c) => c.checked).map((c) => c.value);
    const wfs = workflows.value.split(',').map((w) => w.trim()).filter(Boolean);
    try {
      const made = await api.post('/v1/webhook-endpoints', { url: url.value.trim(),
        description: description.value || undefined, events: events.length ? events : undefined,
        workflows: wfs.length ? wfs : undefined });
      showSecret('Created', made);
      url.value = '';
      description.value = '';
      workflows.value = '';
      for (const b of boxes) b.firstChild.checked = false;
    } catch (err) {
      result.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
    }
    loadEndpoints();
  } }, url, description, workflows,
  h('fieldset', { class: 'events-pick' }, h('legend', null, 'events (every one when none is ticked)'), boxes),
  h('button', { type: 'submit' }, 'Add endpoint'));

  const act = (e, what, done) => async () => {
    result.textContent = '';
    try {
      const r = what === 'delete' ? await api.del(ep(e.id)) : await api.post(ep(e.id, what));
      if (what === 'rotate') showSecret('Rotated the secret of', r);
      else result.textContent = done;
    } catch (err) {
      result.textContent = err.message;
    }
    loadEndpoints();
  };

  const endpointRow = (e) => {
    // deleting asks once more in place (no dialog: the page stays keyboard-driven)
    const del = h('button', { type: 'button', 'data-action': 'delete' }, 'Delete');
    del.addEventListener('click', () => {
      if (del.dataset.armed) return act(e, 'delete', `Deleted endpoint #${e.id}.`)();
      del.dataset.armed = '1';
      del.textContent = 'Really delete?';
      return undefined;
    });
    return h('tr', { 'data-endpoint': e.id },
      h('td', null, `#${e.id}`),
      h('td', { class: 'url' }, e.url, e.description ? h('div', { class: 'dim' }, e.description) : null),
      h('td', null, e.events ? e.events.join(', ') : 'every event',
        e.workflows ? h('div', { class: 'dim' }, `workflows: ${e.workflows.join(', ')}`) : null),
      h('td', null, endpointState(e)),
      h('td', { title: e.created_at }, ago(e.created_at),
        e.previous_secret_expires_at ? h('div', { class: 'dim small-text' }, `old secret valid until ${time(e.previous_secret_expires_at)}`) : null),
      h('td', null, h('div', { class: 'actions' },
        e.state === 'active'
          ? h('button', { type: 'button', 'data-action': 'pause', onclick: act(e, 'pause', `Paused endpoint #${e.id}.`) }, 'Pause')
          : h('button', { type: 'button', 'data-action': 'resume', onclick: act(e, 'resume', `Resumed endpoint #${e.id}.`) }, 'Resume'),
        h('button', { type: 'button', 'data-action': 'rotate', onclick: act(e, 'rotate') }, 'Rotate secret'),
        h('a', { href: `#/webhooks${api.query({ endpoint: e.id })}`, class: 'button-link' }, 'Deliveries'),
        del)));
  };

  const loadEndpoints = async () => {
    try {
      endpoints = (await api.get('/v1/webhook-endpoints')).endpoints;
      if (stopped) return;
      replace(epBody, endpoints.length ? endpoints.map(endpointRow)
        : h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'No endpoints yet.')));
      const keep = epFilter.value;
      replace(epFilter, h('option', { value: '' }, 'every endpoint'),
        endpoints.map((e) => h('option', { value: e.id, selected: String(e.id) === keep }, `#${e.id} ${e.url}`)));
    } catch (err) {
      replace(epBody, h('tr', null, h('td', { colspan: 6, class: 'error' }, err.message)));
    }
  };

  // -- deliveries --
  const epFilter = h('select', { name: 'endpoint', 'aria-label': 'endpoint' },
    filters.endpoint ? h('option', { value: filters.endpoint, selected: true }, `#${filters.endpoint}`) : null);
  const runFilter = h('input', { type: 'number', min: 1, name: 'run', placeholder: 'run', value: filters.run,
    'aria-label': 'run', 'data-search': true });
  const stateFilter = h('select', { name: 'state', 'aria-label': 'delivery state' },
    h('option', { value: '' }, 'any state'), DSTATES.map((s) => h('option', { value: s, selected: filters.state === s }, s)));
  const filterForm = h('form', { class: 'filters', onsubmit: (e) => {
    e.preventDefault();
    ctx.navigate(`#/webhooks${api.query({ endpoint: epFilter.value, run: runFilter.value, state: stateFilter.value })}`);
  } }, epFilter, runFilter, stateFilter, h('button', { type: 'submit' }, 'Filter'));

  const redeliver = (d) => async () => {
    result.textContent = '';
    try {
      await api.post(`/v1/webhook-deliveries/${d.id}/redeliver`);
      result.textContent = `Delivery #${d.id} goes out again.`;
    } catch (err) {
      result.textContent = err.message;
    }
    loadDeliveries();
  };

  const deliveryRows = (d) => {
    const rows = [h('tr', { 'data-delivery': d.id },
      h('td', null, h('button', { type: 'button', class: 'link', 'aria-expanded': open.has(d.id) ? 'true' : 'false',
        onclick: () => {
          if (open.has(d.id)) open.delete(d.id);
          else open.add(d.id);
          loadDeliveries();
        } }, `#${d.id}`)),
      h('td', { title: d.created_at }, time(d.created_at)),
      h('td', null, d.type),
      h('td', null, d.run ? h('a', { href: `#/runs/${d.run}` }, `#${d.run}`) : ''),
      h('td', { class: 'url' }, d.endpoint ? `#${d.endpoint} ` : 'run callback ', h('span', { class: 'dim' }, d.url)),
      h('td', null, deliveryBadge(d.state),
        d.state === 'pending' && d.next_attempt_at ? h('div', { class: 'dim small-text' }, `next ${time(d.next_attempt_at)}`) : null),
      h('td', null, String(d.attempts)),
      h('td', null, d.attempt_log.length ? (() => {
        const a = d.attempt_log[d.attempt_log.length - 1];
        return `${a.status || a.error || '—'} · ${a.latency_ms} ms`;
      })() : '—'),
      h('td', null, h('button', { type: 'button', 'data-action': 'redeliver', onclick: redeliver(d) }, 'Redeliver')))];
    if (open.has(d.id)) {
      rows.push(h('tr', { class: 'attempt-log', 'data-log': d.id },
        h('td', { colspan: 9 }, h('p', { class: 'dim' }, `webhook-id ${d.webhook_id}`), attemptLog(d))));
    }
    return rows;
  };

  let shown = [];
  let limit = PAGE;
  const loadDeliveries = async () => {
    clearTimeout(timer);
    try {
      const page = await api.get(`/v1/webhook-deliveries${api.query({ ...filters, limit })}`);
      if (stopped) return;
      shown = page.deliveries;
      replace(dBody, shown.length ? shown.map(deliveryRows)
        : h('tr', null, h('td', { colspan: 9, class: 'empty' }, 'No deliveries match.')));
      more.hidden = shown.length < limit;
    } catch (err) {
      replace(dBody, h('tr', null, h('td', { colspan: 9, class: 'error' }, err.field ? `${err.field}: ${err.message}` : err.message)));
    }
    if (!stopped) timer = setTimeout(() => { loadDeliveries(); }, REFRESH_MS);
  };
  more.addEventListener('click', () => {
    // a longer first page keeps the live refresh simple; the API caps it at 500
    limit = Math.min(limit + PAGE, 500);
    loadDeliveries();
  });

  replace(root, h('h1', null, 'Webhooks'), result, secretBox,
    h('h2', null, 'Endpoints'),
    form,
    h('table', { class: 'endpoints' }, h('thead', null, h('tr', null,
      ['id', 'url', 'events', 'state', 'created', ''].map((t) => h('th', null, t)))), epBody),
    h('h2', null, 'Deliveries'), filterForm,
    h('table', { class: 'deliveries' }, h('thead', null, h('tr', null,
      ['id', 'created', 'type', 'run', 'to', 'state', 'attempts', 'last attempt', ''].map((t) => h('th', null, t)))), dBody),
    more);
  loadEndpoints();
  loadDeliveries();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
