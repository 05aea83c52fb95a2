// console/workflows.js: the registered workflows (#/workflows) and one workflow
// (#/workflows/NAME): its versions, its definition with a diff between two versions, a form that
// starts a run (the server checks the input against the version's input schema and names the
// field that does not match), and a link to its runs.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { ago, json } from './fmt.js';
import { lineDiff } from './diff.js';
import { stepGraph } from './graph.js';

function list(root) {
  const body = h('tbody');
  replace(root, h('h1', null, 'Workflows'), h('table', { class: 'workflows' },
    h('thead', null, h('tr', null, ['name', 'latest', 'versions', 'updated', ''].map((t) => h('th', null, t)))), body));
  api.get('/v1/workflows').then((l) => {
    replace(body, l.workflows.map((w) => h('tr', null,
      h('td', null, h('a', { href: `#/workflows/${encodeURIComponent(w.name)}` }, w.name)),
      h('td', null, `v${w.version}`), h('td', null, String(w.versions)), h('td', null, ago(w.updated_at)),
      h('td', null, h('a', { href: `#/runs${api.query({ workflow: w.name })}` }, 'runs')))));
  }).catch((err) => replace(body, h('tr', null, h('td', { class: 'error' }, err.message))));
}

function detail(root, ctx, name) {
  const versionSel = h('select', { 'aria-label': 'version shown' });
  const againstSel = h('select', { 'aria-label': 'compare with version' });
  const defBox = h('div', { class: 'definition' });
  const graphBox = h('div', { class: 'graph-box' });
  const input = h('textarea', { name: 'input', rows: 6, 'aria-label': 'run input (JSON)' }, '{}');
  const tags = h('input', { name: 'tags', placeholder: 'campaign=spring', 'aria-label': 'tags (name=value words)' });
  const startError = h('p', { class: 'error', role: 'alert' });
  const defs = new Map();
  const load = async (v) => {
    if (!defs.has(v)) defs.set(v, await api.get(`/v1/workflows/${encodeURIComponent(name)}${api.query({ version: v })}`));
    return defs.get(v);
  };
  const show = async () => {
    const v = Number(versionSel.value);
    const w = await load(v);
    replace(graphBox, stepGraph(w.definition.steps, new Map(), () => {}));
    const text = json(w.definition);
    const against = Number(againstSel.value);
    if (!against || against === v) {
      replace(defBox, h('pre', { class: 'json' }, text));
      return;
    }
    const other = json((await load(against)).definition);
    replace(defBox, h('pre', { class: 'diff' }, lineDiff(other, text).map((d) =>
      h('span', { class: d.op === '+' ? 'add' : d.op === '-' ? 'del' : 'same' }, `${d.op} ${d.line}\n`))));
  };
  versionSel.addEventListener('change', show);
  againstSel.addEventListener('change', show);
  const form = h('form', { class: 'start-run', onsubmit: async (e) => {
    e.preventDefault();
    startError.textContent = '';
    let body;
    try {
      body = { workflow: name, version: Number(versionSel.value), input: JSON.parse(input.value || '{}') };
    } catch (err) {
      startError.textContent = `The input is not JSON: ${err.message}`;
      return;
    }
    const t = {};
    for (const word of tags.value.trim().split(/\s+/).filter(Boolean)) {
      const i = word.indexOf('=');
      if (i <= 0) {
        startError.textContent = `"${word}": write tags as name=value`;
        return;
      }
      t[word.slice(0, i)] = word.slice(i + 1);
    }
    if (Object.keys(t).length) body.tags = t;
    try {
      const r = await api.post('/v1/runs', body);
      ctx.navigate(`#/runs/${r.id}`);
    } catch (err) {
      startError.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
    }
  } }, h('label', null, 'Input (JSON)', input), h('label', null, 'Tags', tags),
  h('button', { type: 'submit' }, 'Start a run'), startError);

  replace(root, h('h1', null, 'Workflow ', h('span', { class: 'wf-name' }, name)),
    h('p', null, h('a', { href: `#/runs${api.query({ workflow: name })}` }, 'Its runs')),
    h('h2', null, 'Start a run'), form,
    h('h2', null, 'Definition'),
    h('p', { class: 'versions' }, 'Version ', versionSel, ' compared with ', againstSel),
    graphBox, defBox);
  api.get('/v1/workflows').then(async (l) => {
    const w = l.workflows.find((x) => x.name === name);
    if (!w) {
      replace(root, h('h1', null, 'Workflow ', h('span', { class: 'wf-name' }, name)), h('p', { class: 'error' }, 'No such workflow.'));
      return;
    }
    for (let v = w.version; v >= 1; v--) versionSel.appendChild(h('option', { value: v }, `v${v}`));
    againstSel.appendChild(h('option', { value: '' }, 'nothing'));
    for (let v = w.version; v >= 1; v--) againstSel.appendChild(h('option', { value: v }, `v${v}`));
    await show();
  }).catch((err) => { startError.textContent = err.message; });
}

export function render(root, ctx) {
  if (ctx.match[1]) detail(root, ctx, decodeURIComponent(ctx.match[1]));
  else list(root);
}
