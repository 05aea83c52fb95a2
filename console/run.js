// console/run.js: one run (#/runs/ID): its state and actions, the step graph of its workflow
// version, the waterfall of its attempts and waits, each step's rendered input, output, error,
// attempts and LLM usage, the messages it sent with their delivery states, a map's items, and its event log. While
// the run is not finished its event stream (Server-Sent Events, authenticated by the session
// cookie) brings each change, and the page redraws from the run's JSON.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { ago, duration, json, span, time } from './fmt.js';
import { stepGraph } from './graph.js';
import { metaChips, progressBar, stateBadge } from './runs.js';
import { waterfall } from './timeline.js';

const TYPES = ['run.created', 'run.started', 'run.succeeded', 'run.failed', 'run.cancelled',
  'run.retried', 'step.scheduled', 'step.started', 'step.succeeded', 'step.failed', 'step.retrying',
  'step.interrupted', 'step.skipped', 'step.waiting', 'step.unknown', 'step.resolved', 'step.cancelled',
  'step.blocked', 'step.unblocked', 'step.rate_limited'];
const FINISHED = ['succeeded', 'failed', 'cancelled'];

function jsonBlock(v) {
  return h('pre', { class: 'json' }, json(v));
}

// What an llm step's output says it used: tokens, cost, model and provider, when it reports them.
function usageOf(output) {
  if (!output || typeof output !== 'object' || !output.usage || typeof output.usage !== 'object') return null;
  const parts = [];
  for (const [k, v] of Object.entries(output.usage)) if (typeof v === 'number') parts.push(`${k.replace(/_/g, ' ')} ${v}`);
  if (typeof output.cost_usd === 'number') parts.push(`$${output.cost_usd}`);
  if (typeof output.model === 'string') parts.push(`model ${output.model}`);
  if (typeof output.provider === 'string') parts.push(`via ${output.provider}`);
  if (typeof output.latency_ms === 'number') parts.push(`${output.latency_ms} ms`);
  return parts.join(' · ');
}

// A step's concurrency key and the step it queued behind, with a link to that step's run.
function keyHolder(ck) {
  const b = ck.queued_behind;
  if (!b) return [ck.key, ' (no step of its key before it)'];
  return [ck.key, ' · queued behind ', h('a', { href: `#/runs/${b.run}` }, `run #${b.run}`), ` step ${b.step} `,
    b.finished_at ? `(finished ${time(b.finished_at)})` : `(${b.state})`];
}

export function render(root, ctx) {
  const id = ctx.match[1];
  let run = null;
  let def = null;
  let events = [];
  let sends = [];
  let outbox = [];
  let rendered = new Map(); // step key -> its rendered_input (GET /v1/runs/ID/steps)
  let children = null;
  let es = null;
  let stopped = false;
  let pending = null;
  let picked = null;

  const head = h('section', { class: 'run-head' });
  const actions = h('section', { class: 'actions' });
  const graph = h('section', { class: 'graph-box' });
  const timeline = h('section', { class: 'timeline-box' });
  const stepsBox = h('section', { class: 'steps-box' });
  const sendsBox = h('section', { class: 'sends-box' });
  const childBox = h('section', { class: 'children-box' });
  const eventsBox = h('section', { class: 'events-box' });
  const live = h('p', { class: 'status', role: 'status' });
  replace(root, head, actions, live,
    h('h2', null, 'Steps'), graph,
    h('h2', null, 'Timeline'), timeline,
    stepsBox, sendsBox, childBox,
    h('h2', null, 'Event log'), eventsBox);

  function drawHead() {
    replace(head,
      h('h1', null, `Run #${run.id} `, stateBadge(run.state)),
      h('p', null,
        h('a', { href: `#/workflows/${encodeURIComponent(run.workflow)}` }, run.workflow),
        ` v${run.version} · `, progressBar(run.progress),
        run.phase ? ` · phase ${run.phase}` : '',
        run.current_steps.length ? ` · now: ${run.current_steps.join(', ')}` : ''),
      h('p', { class: 'dim' },
        `created ${time(run.created_at)} (${ago(run.created_at)})`,
        run.started_at ? ` · started ${time(run.started_at)}` : '',
        run.finished_at ? ` · finished ${time(run.finished_at)} · took ${duration(span(run.created_at, run.finished_at))}` : ''),
      h('p', { class: 'meta' }, metaChips(run.meta, (k, v) => ctx.navigate(`#/runs${api.query({ [`meta.${k}`]: v })}`)),
        run.parent ? h('a', { href: `#/runs/${run.parent}`, class: 'button-link', 'data-action': 'parent' }, `Open parent run #${run.parent}`) : null,
        run.batch ? h('a', { href: `#/runs${api.query({ batch: run.batch })}`, class: 'dim' }, ` batch ${run.batch}`) : null),
      run.error ? h('div', { class: 'run-error' }, h('strong', null, run.error.code), ' ', run.error.message || '') : null);
    for (const el of head.querySelectorAll('.fill[data-pct]')) el.style.width = `${el.dataset.pct}%`;
  }

  const result = h('span', { class: 'action-result', role: 'status' });
  function drawActions() {
    const evName = h('input', { name: 'event', placeholder: 'event name', 'aria-label': 'event name', required: true });
    const evKey = h('input', { name: 'key', placeholder: 'key', 'aria-label': 'event key', required: true });
    const evData = h('input', { name: 'data', placeholder: '{"optional": "data"}', 'aria-label': 'event data (JSON)' });
    const act = (what) => async () => {
      result.textContent = '';
      try {
        run = await api.post(`/v1/runs/${id}/${what}`);
        result.textContent = what === 'cancel' ? 'Cancelled.' : 'Retried: the failed steps run again.';
        draw();
        openStream();
      } catch (err) {
        result.textContent = err.message;
      }
    };
    replace(actions,
      h('button', { type: 'button', 'data-action': 'cancel', disabled: FINISHED.includes(run.state), onclick: act('cancel') }, 'Cancel'),
      h('button', { type: 'button', 'data-action': 'retry', disabled: !['failed', 'cancelled'].includes(run.state), onclick: act('retry') }, 'Retry from the failed step'),
      h('form', { class: 'send-event', onsubmit: async (e) => {
        e.preventDefault();
        result.textContent = '';
        let data;
        try {
          data = evData.value.trim() ? JSON.parse(evData.value) : undefined;
        } catch (err) {
          result.textContent = `data is not JSON: ${err.message}`;
          return;
        }
        try {
          const r = await api.post('/v1/events', { name: evName.value, key: evKey.value, data });
          result.textContent = `Event sent: ${r.resumed} resumed, ${r.cancelled} cancelled, ${r.started} started.`;
        } catch (err) {
          result.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
        }
      } }, evName, evKey, evData, h('button', { type: 'submit' }, 'Send event')),
      result);
  }

  function stateMap() {
    return new Map(run.steps.map((st) => [st.key, st]));
  }

  function pick(key) {
    picked = key;
    drawSteps();
    const el = stepsBox.querySelector(`details[data-step="${CSS.escape(key)}"]`);
    if (el) {
      el.open = true;
      el.scrollIntoView({ block: 'nearest' });
      el.querySelector('summary').focus();
    }
  }

  function drawGraph() {
    const steps = def ? def.steps : run.steps.map((st) => ({ key: st.key, kind: st.kind, needs: [] }));
    replace(graph, stepGraph(steps, stateMap(), pick));
  }

  function drawTimeline() {
    const steps = def ? def.steps : run.steps.map((st) => ({ key: st.key, needs: [] }));
    replace(timeline, waterfall(steps, events, run));
  }

  function drawSteps() {
    replace(stepsBox, h('h2', null, 'Step details'), run.steps.map((st) => {
      const usage = usageOf(st.output);
      const stepSends = sends.filter((x) => x.step === st.key);
      const given = rendered.get(st.key);
      return h('details', { 'data-step': st.key, open: picked === st.key || st.state === 'failed' },
        h('summary', null, h('span', { class: 'step-key' }, st.key), ` ${st.kind} `, stateBadge(st.state),
          ` attempts ${st.attempts}/${st.max_attempts}`, st.interruptions ? ` · ${st.interruptions} interrupted` : '',
          st.started_at ? ` · ${duration(span(st.started_at, st.finished_at))}` : '',
          st.items ? ` · items ${st.items.done}/${st.items.total} (${st.items.failed} failed)` : ''),
        h('dl', null,
          st.run_at ? [h('dt', null, 'due'), h('dd', null, time(st.run_at))] : null,
          st.started_at ? [h('dt', null, 'started'), h('dd', null, time(st.started_at))] : null,
          st.finished_at ? [h('dt', null, 'finished'), h('dd', null, time(st.finished_at))] : null,
          st.concurrency_key ? [h('dt', null, 'concurrency key'), h('dd', { class: 'ckey' }, keyHolder(st.concurrency_key))] : null,
          usage ? [h('dt', null, 'LLM usage'), h('dd', { class: 'usage' }, usage)] : null),
        given ? [h('h4', null, `Rendered input (attempt ${given.attempt})`),
          given.input === null ? h('p', { class: 'dim' }, `${given.bytes} bytes: too big to keep`) : jsonBlock(given.input)] : null,
        st.error ? [h('h4', null, 'Error'), jsonBlock(st.error)] : null,
        st.output !== null && st.output !== undefined ? [h('h4', null, 'Output'), jsonBlock(st.output)] : null,
        stepSends.length ? [h('h4', null, 'Sends'), sendTable(stepSends)] : null);
    }), h('h3', null, 'Run input'), jsonBlock(run.input));
  }

  function sendTable(list) {
    return h('table', { class: 'sends' },
      h('thead', null, h('tr', null, ['step', 'channel', 'to', 'provider', 'state', 'delivery', 'calls', 'updated'].map((t) => h('th', null, t)))),
      h('tbody', null, list.map((x) => h('tr', null,
        h('td', null, x.step || ''), h('td', null, x.channel), h('td', null, x.to), h('td', null, x.provider),
        h('td', null, h('span', { class: `badge d-${x.state}` }, x.state)),
        h('td', null, x.delivery ? h('span', { class: `badge d-${x.delivery}` }, x.delivery) : '—',
          x.delivery_error ? ` ${x.delivery_error.message || x.delivery_error.code || ''}` : '',
          x.error ? ` ${x.error.message || x.error.code || ''}` : ''),
        h('td', null, String(x.calls)), h('td', null, ago(x.updated_at))))));
  }

  function drawSends() {
    replace(sendsBox, h('h2', null, 'Sends'),
      sends.length ? sendTable(sends) : h('p', { class: 'dim' }, 'No messages sent through the send ledger.'),
      outbox.length ? [h('h3', null, 'Sandbox outbox (recorded, not sent)'),
        h('table', { class: 'outbox' }, h('tbody', null, outbox.map((m) => h('tr', null,
          h('td', null, m.step || ''), h('td', null, m.channel), h('td', null, m.to),
          h('td', null, h('pre', { class: 'json small' }, json(m.message))), h('td', null, time(m.created_at))))))] : null);
  }

  function drawChildren() {
    if (!children) return replace(childBox);
    return replace(childBox, h('h2', null, `Map items (${children.runs.length}${children.next_cursor ? '+' : ''} shown)`),
      h('table', { class: 'runs' }, h('tbody', null, children.runs.map((c) => h('tr', null,
        h('td', null, h('a', { href: `#/runs/${c.id}` }, `#${c.id}`)), h('td', null, c.workflow),
        h('td', null, stateBadge(c.state)), h('td', null, progressBar(c.progress)),
        h('td', { class: 'err' }, c.error ? c.error.message || c.error.code : ''))))),
      children.next_cursor ? h('a', { href: `#/runs${api.query({ parent: id })}` }, 'All items in the run list') : null);
  }

  function drawEvents() {
    const last = events.slice(-300).reverse();
    replace(eventsBox, h('table', { class: 'events' },
      h('thead', null, h('tr', null, ['seq', 'at', 'type', 'step', 'data'].map((t) => h('th', null, t)))),
      h('tbody', null, last.map((e) => h('tr', null, h('td', null, String(e.seq)), h('td', null, time(e.at)),
        h('td', null, e.type), h('td', null, e.step || ''), h('td', null, e.data === null ? '' : JSON.stringify(e.data)))))));
  }

  function draw() {
    drawHead();
    drawActions();
    drawGraph();
    drawTimeline();
    drawSteps();
    drawSends();
    drawChildren();
    drawEvents();
    for (const el of root.querySelectorAll('.fill[data-pct]')) el.style.width = `${el.dataset.pct}%`;
    root.dataset.state = run.state;
  }

  async function loadEvents() {
    let after = events.length ? events[events.length - 1].seq : 0;
    for (let i = 0; i < 20; i++) {
      const page = await api.get(`/v1/runs/${id}/events${api.query({ after, limit: 500 })}`);
      events.push(...page.events);
      if (page.events.length < 500) break;
      after = page.events[page.events.length - 1].seq;
    }
  }

  async function loadExtras() {
    const [sx, ob, si] = await Promise.all([
      api.get(`/v1/runs/${id}/sends`).catch(() => ({ sends: [] })),
      api.get(`/v1/outbox${api.query({ run: id })}`).catch(() => ({ messages: [] })),
      api.get(`/v1/runs/${id}/steps`).catch(() => ({ steps: [] })),
    ]);
    sends = sx.sends;
    outbox = ob.messages;
    rendered = new Map(si.steps.filter((st) => st.rendered_input).map((st) => [st.key, st.rendered_input]));
    if (run.steps.some((st) => st.kind === 'map')) children = await api.get(`/v1/runs${api.query({ parent: id, limit: 100 })}`);
  }

  // Redraws after the stream reported changes: one fetch for a burst of events.
  function soon() {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      if (stopped) return;
      try {
        run = await api.get(`/v1/runs/${id}`);
        if (stopped) return;
        draw();
        await loadExtras();
        if (!stopped) {
          drawSteps();
          drawSends();
          drawChildren();
        }
      } catch (err) {
        live.textContent = err.message;
      }
    }, 30);
  }

  function openStream() {
    if (es || stopped) return;
    const after = events.length ? events[events.length - 1].seq : 0;
    es = new EventSource(`/v1/runs/${id}/events${api.query({ after })}`);
    live.textContent = 'Live: following the run’s events.';
    for (const type of TYPES) {
      es.addEventListener(type, (m) => {
        const e = JSON.parse(m.data);
        if (!events.length || e.seq > events[events.length - 1].seq) events.push(e);
        soon();
        // a finished run's stream ends; closing here spares the reconnect the server would refuse
        if (type === 'run.succeeded' || type === 'run.failed' || type === 'run.cancelled') closeStream(true);
      });
    }
    es.addEventListener('error', () => {
      if (es && es.readyState === EventSource.CLOSED) closeStream(false);
    });
  }

  function closeStream(finished) {
    if (!es) return;
    es.close();
    es = null;
    live.textContent = finished ? 'The run finished.' : 'The event stream closed.';
    if (finished) {
      // events written in the same transaction as the run's end (cancelled steps) may follow it
      setTimeout(async () => {
        if (stopped) return;
        await loadEvents().catch(() => {});
        soon();
      }, 300);
    }
  }

  (async () => {
    try {
      run = await api.get(`/v1/runs/${id}`);
      const wf = await api.get(`/v1/workflows/${encodeURIComponent(run.workflow)}${api.query({ version: run.version })}`).catch(() => null);
      def = wf ? wf.definition : null;
      await Promise.all([loadEvents(), loadExtras()]);
      if (stopped) return;
      draw();
      performance.mark(`run-shown-${id}`);
      if (!FINISHED.includes(run.state)) openStream();
      else live.textContent = '';
    } catch (err) {
      replace(root, h('h1', null, `Run #${id}`), h('p', { class: 'error', role: 'alert' }, err.status === 404 ? 'No such run.' : err.message));
    }
  })();

  return () => {
    stopped = true;
    clearTimeout(pending);
    if (es) es.close();
  };
}
