// console/usage.js: what the tenant's LLM calls and messages cost (#/usage): totals over a range
// of days, a bar chart by day, and the sums by workflow and by model (GET /v1/usage).
import * as api from './api.js';
import { h, replace, s } from './dom.js';
import { count } from './fmt.js';

const usd = (v) => `$${Number(v).toFixed(Number(v) < 1 ? 4 : 2)}`;

function dayChart(groups) {
  const W = 720;
  const H = 160;
  const max = Math.max(...groups.map((g) => g.cost_usd), 0.000001);
  const bw = Math.max(2, Math.floor(W / Math.max(groups.length, 1)) - 2);
  return s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H + 20}`, width: W, height: H + 20, role: 'img', 'aria-label': 'cost by day' },
    groups.map((g, i) => {
      const bh = Math.round((H * g.cost_usd) / max);
      return s('g', null,
        s('title', null, `${g.key}: ${usd(g.cost_usd)} (${count(g.llm.calls)} LLM calls, ${count(g.sends.messages)} messages)`),
        s('rect', { class: 'bar-llm', x: i * (bw + 2), y: H - bh, width: bw, height: Math.max(bh, 1) }),
        i % Math.ceil(groups.length / 8 || 1) === 0 ? s('text', { x: i * (bw + 2), y: H + 14, class: 'axis' }, g.key.slice(5)) : null);
    }));
}

function table(groups, label) {
  return h('table', { class: 'usage' },
    h('thead', null, h('tr', null, [label, 'LLM calls', 'input tokens', 'output tokens', 'LLM cost', 'messages', 'segments', 'send cost', 'total'].map((t) => h('th', null, t)))),
    h('tbody', null, groups.length ? groups.map((g) => h('tr', null, h('td', null, g.key), h('td', null, count(g.llm.calls)),
      h('td', null, count(g.llm.input_tokens)), h('td', null, count(g.llm.output_tokens)), h('td', null, usd(g.llm.cost_usd)),
      h('td', null, count(g.sends.messages)), h('td', null, count(g.sends.segments)), h('td', null, usd(g.sends.cost_usd)),
      h('td', null, usd(g.cost_usd)))) : h('tr', null, h('td', { colspan: 9, class: 'empty' }, 'Nothing recorded.'))));
}

export function render(root, ctx) {
  const to = ctx.params.get('to') || new Date().toISOString().slice(0, 10);
  const from = ctx.params.get('from') || new Date(Date.now() - 29 * 86400000).toISOString().slice(0, 10);
  const fromIn = h('input', { type: 'date', name: 'from', value: from, 'aria-label': 'first day' });
  const toIn = h('input', { type: 'date', name: 'to', value: to, 'aria-label': 'last day' });
  const box = h('div');
  replace(root, h('h1', null, 'Usage and costs'),
    h('form', { class: 'filters', onsubmit: (e) => {
      e.preventDefault();
      ctx.navigate(`#/usage${api.query({ from: fromIn.value, to: toIn.value })}`);
    } }, fromIn, toIn, h('button', { type: 'submit' }, 'Show'),
    h('a', { href: `/v1/usage${api.query({ from, to, format: 'csv' })}`, download: `usage-${from}-${to}.csv` }, 'CSV')),
    box);
  (async () => {
    try {
      const q = (group_by) => api.get(`/v1/usage${api.query({ from, to, group_by })}`);
      const [byDay, byWorkflow, byModel] = await Promise.all([q('day'), q('workflow'), q('model')]);
      const t = byDay.total;
      replace(box,
        h('p', { class: 'totals' }, h('strong', null, usd(t.cost_usd)), ` from ${byDay.from} to ${byDay.to}: `,
          `${count(t.llm.calls)} LLM calls (${count(t.llm.input_tokens)} in, ${count(t.llm.output_tokens)} out tokens, ${usd(t.llm.cost_usd)}), `,
          `${count(t.sends.messages)} messages (${usd(t.sends.cost_usd)})`),
        h('h2', null, 'By day'), dayChart(byDay.groups),
        h('h2', null, 'By workflow'), table(byWorkflow.groups, 'workflow'),
        h('h2', null, 'By model or channel'), table(byModel.groups, 'model'));
    } catch (err) {
      replace(box, h('p', { class: 'error', role: 'alert' }, err.field ? `${err.field}: ${err.message}` : err.message));
    }
  })();
}
