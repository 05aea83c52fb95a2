// tests/cron/compare.js: reads tests/cron/cron_driver's lines on stdin and recomputes each one's
// next 10 fire times with croner, which must agree with flowd's evaluator.
//
// One deliberate difference is excluded, and counted: flowd fires a repeated wall time once (its
// first occurrence) and folds the wall times of a spring-forward gap into one fire at the end of
// the gap, for every expression (engine/cron.h). Croner does so only for "fixed-time" expressions
// (a single value in each of second, minute and hour) and otherwise fires twice in a repeated hour
// and skips the gap. A triple is excluded only when its expression is not fixed-time, the two
// lists agree up to the first difference, and a UTC offset change of the zone lies between the
// last common fire time (or the start) and the first differing one.
//
// A second difference is croner's: it reads a day-of-week range that starts on Sunday and ends in
// the name SUN ("0-SUN", "SUN-SUN") as 0-7, every day; flowd reads it as Sunday alone. Triples
// with such a range are excluded, and counted, without comparing.
'use strict';
const { Cron } = require('croner');
const readline = require('readline');

const fmtCache = new Map();
function offsetMin(zone, ms) {
  let f = fmtCache.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone: zone, hourCycle: 'h23', year: 'numeric',
      month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric' });
    fmtCache.set(zone, f);
  }
  const p = {};
  for (const x of f.formatToParts(new Date(ms))) p[x.type] = x.value;
  const local = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
  return Math.round((local - Math.floor(ms / 1000) * 1000) / 60000);
}

// An offset change in (a, b]: sampled every 30 minutes (daily over long spans); a change and its
// reversal between two samples would be missed, which can only fail the test, never pass it.
function transitionBetween(zone, a, b) {
  const step = b - a > 60 * 86400000 ? 86400000 : 1800000;
  const o = offsetMin(zone, a);
  for (let t = a + step; ; t += step) {
    if (t > b) t = b;
    if (offsetMin(zone, t) !== o) return true;
    if (t === b) return false;
  }
}

const MACROS = { '@yearly': '0 0 1 1 *', '@annually': '0 0 1 1 *', '@monthly': '0 0 1 * *',
  '@weekly': '0 0 * * 0', '@daily': '0 0 * * *', '@midnight': '0 0 * * *', '@hourly': '0 * * * *' };
function fixedTime(expr) {
  const f = (MACROS[expr] || expr).trim().split(/\s+/);
  if (f.length === 5) f.unshift('0');
  return f.slice(0, 3).every((x) => /^\d+$/.test(x));
}

function sundayRange(expr) {
  const f = expr.trim().split(/\s+/);
  return f.length >= 5 && /(^|,)(0|sun)-sun(\/\d+)?(,|$)/i.test(f[f.length - 1]);
}

let sundayRanges = 0;
let total = 0, compared = 0, bothRefused = 0, excluded = 0, excludedRefused = 0, fires = 0;
const failures = [];
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line) return;
  total++;
  const [expr, zone, startStr, result] = line.split('\t');
  const start = Number(startStr);
  if (sundayRange(expr)) { sundayRanges++; return; }
  let ours = null, oursErr = null;
  if (result.startsWith('ERR ')) oursErr = result.slice(4);
  else {
    ours = result.split(' ').slice(1);
    const e = ours.indexOf('ERR');
    if (e >= 0) { oursErr = ours.slice(e + 1).join(' '); ours = ours.slice(0, e); }
    ours = ours.map(Number);
  }
  let theirs = null, theirsErr = null;
  try {
    const job = new Cron(expr, { timezone: zone, paused: true, mode: '5-or-6-parts' });
    theirs = job.nextRuns(10, new Date(start)).map((d) => d.getTime());
  } catch (e) {
    theirsErr = String(e.message || e);
  }
  if (oursErr && !ours) {
    // Both must refuse (croner by throwing, or by finding no fire time at all).
    if (theirsErr || (theirs && theirs.length === 0)) { bothRefused++; return; }
    failures.push(`${expr} | ${zone} | ${start}: flowd refused (${oursErr}), croner fires at ${theirs.slice(0, 3)}`);
    return;
  }
  if (theirsErr) {
    failures.push(`${expr} | ${zone} | ${start}: croner refused (${theirsErr}), flowd fires at ${ours.slice(0, 3)}`);
    return;
  }
  let i = 0;
  while (i < ours.length && i < theirs.length && ours[i] === theirs[i]) i++;
  if (i === ours.length && i === theirs.length) { compared++; fires += i; return; }
  if (i < ours.length && i < theirs.length && !fixedTime(expr) &&
      transitionBetween(zone, i ? ours[i - 1] : start, Math.max(ours[i], theirs[i]))) {
    excluded++;
    return;
  }
  const iso = (ms) => (ms === undefined ? 'none' : new Date(ms).toISOString());
  failures.push(`${expr} | ${zone} | start ${iso(start)}: fire #${i + 1} flowd ${iso(ours[i])} croner ${iso(theirs[i])}` +
    (oursErr ? ` (flowd: ${oursErr})` : ''));
});
rl.on('close', () => {
  console.log(`triples: ${total}; agreed on all 10 fire times: ${compared} (${fires} fire times); ` +
    `both refused: ${bothRefused}; excluded by the DST rule for interval expressions: ${excluded}; ` +
    `excluded for a day-of-week range 0-SUN or SUN-SUN: ${sundayRanges}; disagreed: ${failures.length}`);
  for (const f of failures.slice(0, 40)) console.log('MISMATCH ' + f);
  process.exit(failures.length || total === 0 ? 1 : 0);
});
