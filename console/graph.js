// console/graph.js: a workflow's step graph as SVG, laid out in columns by depth (a step sits one
// column right of the deepest step it needs), each node coloured by its step's state.
import { s } from './dom.js';

const W = 168;
const H = 40;
const GX = 56;
const GY = 14;

// steps: [{key, kind, needs}]; states: key -> {state, items?}; onPick(key) when a node is chosen.
export function stepGraph(steps, states, onPick) {
  const byKey = new Map(steps.map((st, i) => [st.key, { ...st, i, needs: st.needs || [] }]));
  const depth = new Map();
  const depthOf = (key, seen = new Set()) => {
    if (depth.has(key)) return depth.get(key);
    if (seen.has(key)) return 0;
    seen.add(key);
    const st = byKey.get(key);
    const d = st && st.needs.length ? 1 + Math.max(...st.needs.map((n) => depthOf(n, seen))) : 0;
    depth.set(key, d);
    return d;
  };
  const cols = [];
  for (const st of byKey.values()) {
    const d = depthOf(st.key);
    (cols[d] = cols[d] || []).push(st);
  }
  const pos = new Map();
  cols.forEach((col, c) => col.forEach((st, r) => pos.set(st.key, { x: c * (W + GX), y: r * (H + GY) })));
  const width = cols.length * (W + GX) - GX + 2;
  const height = Math.max(...cols.map((c) => c.length)) * (H + GY) - GY + 2;

  const edges = [];
  for (const st of byKey.values()) {
    for (const n of st.needs) {
      const a = pos.get(n);
      const b = pos.get(st.key);
      if (!a || !b) continue;
      const x1 = a.x + W;
      const y1 = a.y + H / 2;
      const x2 = b.x;
      const y2 = b.y + H / 2;
      edges.push(s('path', { class: 'edge', d: `M${x1 + 1},${y1 + 1} C${x1 + GX / 2},${y1 + 1} ${x2 - GX / 2},${y2 + 1} ${x2 + 1},${y2 + 1}` }));
    }
  }
  const nodes = [...byKey.values()].map((st) => {
    const p = pos.get(st.key);
    const info = states.get(st.key) || { state: 'pending' };
    const items = info.items ? ` ${info.items.done}/${info.items.total}` : '';
    const label = st.key.length > 20 ? `${st.key.slice(0, 19)}…` : st.key;
    return s('g', { class: `node s-${info.state}`, transform: `translate(${p.x + 1},${p.y + 1})`,
      tabindex: 0, role: 'button', 'data-step': st.key, 'data-state': info.state,
      'aria-label': `step ${st.key}: ${info.state}`,
      onclick: () => onPick(st.key),
      onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onPick(st.key); } } },
    s('title', null, `${st.key} (${st.kind}): ${info.state}${items}`),
    s('rect', { width: W, height: H, rx: 6 }),
    s('text', { x: 10, y: 17, class: 'key' }, label),
    s('text', { x: 10, y: 32, class: 'kind' }, `${st.kind} · ${info.state}${items}`));
  });
  return s('svg', { class: 'graph', viewBox: `0 0 ${width} ${height}`, width, height,
    role: 'group', 'aria-label': 'step graph' }, edges, nodes);
}
