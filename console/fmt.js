// console/fmt.js: how times, durations and JSON are shown.

export function time(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 23)}`;
}

export function ago(iso, now = Date.now()) {
  if (!iso) return '';
  const s = Math.max(0, (now - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)}m ${Math.round((ms % 60000) / 1000)}s`;
  if (ms < 86400000) return `${Math.floor(ms / 3600000)}h ${Math.round((ms % 3600000) / 60000)}m`;
  return `${Math.floor(ms / 86400000)}d ${Math.round((ms % 86400000) / 3600000)}h`;
}

export function span(a, b) {
  if (!a) return null;
  return (b ? new Date(b).getTime() : Date.now()) - new Date(a).getTime();
}

export function json(v) {
  return v === undefined ? '' : JSON.stringify(v, null, 2);
}

export function count(n) {
  return Number(n).toLocaleString('en-US');
}
