// console/limits.js: the named rate limits that bind the tenant's steps (its own, and the ones the
// operator shares with every tenant, labelled so) with the budget each has left now (refreshed
// every 5 s), and its suppression list (#/limits): add a suppression, lift one. A key that may
// not change them is answered by the server, and the page says so.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { ago } from './fmt.js';

// What a bucket has left now, of the level it refills to (below zero: a debt later steps wait out).
function left(level, burst, what) {
  if (level === null) return null;
  const pct = Math.max(0, Math.min(100, Math.round((100 * level) / burst)));
  return h('div', { class: level < 1 ? 'error' : null },
    h('span', { class: 'bar' }, h('span', { class: 'fill', 'data-pct': pct })),
    ` ${Number(level).toLocaleString('en-US', { maximumFractionDigits: 1 })} of ${Number(burst).toLocaleString('en-US')} ${what}`);
}

export function render(root) {
  const limitsBody = h('tbody');
  const supBody = h('tbody');
  const channel = h('select', { name: 'channel', 'aria-label': 'channel' }, ['email', 'sms', 'whatsapp'].map((c) => h('option', { value: c }, c)));
  const address = h('input', { name: 'address', placeholder: 'address or +E.164 number', 'aria-label': 'address', required: true });
  const reason = h('input', { name: 'reason', placeholder: 'reason', 'aria-label': 'reason' });
  const result = h('p', { class: 'action-result', role: 'status' });
  const filter = h('select', { 'aria-label': 'show channel' }, h('option', { value: '' }, 'every channel'),
    ['email', 'sms', 'whatsapp'].map((c) => h('option', { value: c }, c)));

  const loadLimits = async () => {
    try {
      const l = await api.get('/v1/rate-limits');
      replace(limitsBody, l.rate_limits.length ? l.rate_limits.map((r) => h('tr', { 'data-limit': r.name, 'data-scope': r.scope },
        h('td', null, r.name, r.scope === 'shared' ? ' ' : null, r.scope === 'shared'
          ? h('span', { class: 'badge scope-shared', title: 'set by the operator for every tenant: it binds your steps too' }, 'shared')
          : null), h('td', null, r.requests_per_s ?? '—'), h('td', null, r.burst_requests ?? '—'),
        h('td', null, r.tokens_per_min ?? '—'), h('td', null, r.burst_tokens ?? '—'),
        h('td', { class: 'budget' }, left(r.budget.requests, r.budget.burst_requests, 'requests'),
          left(r.budget.tokens, r.budget.burst_tokens, 'tokens'),
          h('div', { class: 'dim small-text' }, r.budget.taken_at ? `last taken ${ago(r.budget.taken_at)}` : 'never taken'))))
        : h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'No named rate limits.')));
      for (const el of limitsBody.querySelectorAll('.fill[data-pct]')) el.style.width = `${el.dataset.pct}%`;
    } catch (err) {
      replace(limitsBody, h('tr', null, h('td', { colspan: 6, class: 'error' }, err.message)));
    }
  };
  const loadSuppressions = async () => {
    try {
      const l = await api.get(`/v1/suppressions${api.query({ channel: filter.value, limit: 200 })}`);
      replace(supBody, l.suppressions.length ? l.suppressions.map((x) => h('tr', null,
        h('td', null, x.channel), h('td', null, x.address), h('td', null, x.reason), h('td', null, x.source),
        h('td', { title: x.created_at }, ago(x.created_at)),
        h('td', null, h('button', { type: 'button', 'data-action': 'lift', onclick: async () => {
          try {
            await api.del(`/v1/suppressions/${encodeURIComponent(x.channel)}/${encodeURIComponent(x.address)}`);
            result.textContent = `Lifted ${x.channel} ${x.address}.`;
          } catch (err) {
            result.textContent = err.message;
          }
          loadSuppressions();
        } }, 'Lift'))))
        : h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'Nobody is suppressed.')));
    } catch (err) {
      replace(supBody, h('tr', null, h('td', { colspan: 6, class: 'error' }, err.message)));
    }
  };
  filter.addEventListener('change', loadSuppressions);

  replace(root, h('h1', null, 'Limits & suppressions'),
    h('h2', null, 'Rate limits'),
    h('table', null, h('thead', null, h('tr', null, ['name', 'requests/s', 'burst', 'tokens/min', 'token burst', 'left now'].map((t) => h('th', null, t)))), limitsBody),
    h('h2', null, 'Suppressions'),
    h('form', { class: 'filters', onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api.post('/v1/suppressions', { channel: channel.value, address: address.value, reason: reason.value || undefined });
        result.textContent = `Suppressed ${channel.value} ${address.value}.`;
        address.value = '';
        reason.value = '';
      } catch (err) {
        result.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
      }
      loadSuppressions();
    } }, channel, address, reason, h('button', { type: 'submit' }, 'Suppress')),
    result,
    h('p', null, 'Show ', filter),
    h('table', { class: 'suppressions' }, h('thead', null, h('tr', null, ['channel', 'address', 'reason', 'source', 'since', ''].map((t) => h('th', null, t)))), supBody));
  loadLimits();
  loadSuppressions();
  const timer = setInterval(loadLimits, 5000);
  return () => clearInterval(timer);
}
