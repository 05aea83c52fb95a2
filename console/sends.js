// console/sends.js: what the sandbox providers recorded instead of sending (#/sends), newest
// last, with the run and step that sent each; a run's page shows its sends with their delivery
// states from the send ledger.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { json, time } from './fmt.js';

export function render(root) {
  const body = h('tbody');
  const more = h('button', { type: 'button', class: 'more' }, 'Show more');
  let after = 0;
  const load = async () => {
    try {
      const page = await api.get(`/v1/outbox${api.query({ after: after || null, limit: 100 })}`);
      for (const m of page.messages) {
        body.appendChild(h('tr', null, h('td', null, time(m.created_at)),
          h('td', null, m.run_id ? h('a', { href: `#/runs/${m.run_id}` }, `#${m.run_id}`) : ''),
          h('td', null, m.step || ''), h('td', null, m.channel), h('td', null, m.provider), h('td', null, m.to),
          h('td', null, h('pre', { class: 'json small' }, json(m.message)))));
        after = m.id;
      }
      more.hidden = page.messages.length < 100;
      if (!body.firstChild) body.appendChild(h('tr', null, h('td', { colspan: 7, class: 'empty' }, 'The sandbox outbox is empty.')));
    } catch (err) {
      body.appendChild(h('tr', null, h('td', { colspan: 7, class: 'error' }, err.message)));
    }
  };
  more.addEventListener('click', load);
  replace(root, h('h1', null, 'Sends'),
    h('p', { class: 'dim' }, 'Messages the sandbox providers recorded (no provider credentials configured). A run’s page lists its sends with their delivery states.'),
    h('table', { class: 'outbox' }, h('thead', null, h('tr', null, ['at', 'run', 'step', 'channel', 'provider', 'to', 'message'].map((t) => h('th', null, t)))), body),
    more);
  load();
}
