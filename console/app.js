// console/app.js: sign-in, the layout and the router. Views live at #/runs, #/runs/ID,
// #/workflows, #/workflows/NAME, #/batches, #/schedules, #/usage, #/limits, #/sends, #/webhooks
// and #/workers; each page module exports render(root, ctx) and returns a function that stops what
// it started (timers, streams). A page for a new API is one module and one entry in PAGES.
import * as api from './api.js';
import { h, replace } from './dom.js';
import * as runs from './runs.js';
import * as run from './run.js';
import * as workflows from './workflows.js';
import * as batches from './batches.js';
import * as limits from './limits.js';
import * as sends from './sends.js';
import * as schedules from './schedules.js';
import * as usage from './usage.js';
import * as webhooks from './webhooks.js';
import * as workers from './workers.js';

const PAGES = [
  { path: /^\/runs\/(\d+)$/, page: run, nav: 'runs' },
  { path: /^\/runs$/, page: runs, nav: 'runs', label: 'Runs' },
  { path: /^\/workflows\/([^/]+)$/, page: workflows, nav: 'workflows' },
  { path: /^\/workflows$/, page: workflows, nav: 'workflows', label: 'Workflows' },
  { path: /^\/batches(?:\/(\d+))?$/, page: batches, nav: 'batches', label: 'Batches' },
  { path: /^\/schedules\/([^/]+)$/, page: schedules, nav: 'schedules' },
  { path: /^\/schedules$/, page: schedules, nav: 'schedules', label: 'Schedules' },
  { path: /^\/usage$/, page: usage, nav: 'usage', label: 'Usage' },
  { path: /^\/limits$/, page: limits, nav: 'limits', label: 'Limits & suppressions' },
  { path: /^\/sends$/, page: sends, nav: 'sends', label: 'Sends' },
  { path: /^\/webhooks$/, page: webhooks, nav: 'webhooks', label: 'Webhooks' },
  { path: /^\/workers$/, page: workers, nav: 'workers', label: 'Workers & queue' },
];

const app = document.getElementById('app');
let who = null;
let stop = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/runs';
  const [path, q] = raw.split('?');
  return { path, params: new URLSearchParams(q || '') };
}

function signInView(message) {
  const key = h('input', { type: 'password', id: 'key', name: 'key', autocomplete: 'off',
    placeholder: 'fd_…', required: true, 'aria-label': 'API key' });
  const error = h('p', { class: 'error', role: 'alert' }, message || '');
  const form = h('form', { class: 'signin', onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = '';
    try {
      const body = await api.signIn(key.value.trim());
      key.value = '';
      who = body;
      route();
    } catch (err) {
      error.textContent = err.status === 401 ? 'This key is unknown or revoked.' : err.message;
    }
  } },
  h('h1', null, 'flowd console'),
  h('label', { for: 'key' }, 'API key'),
  key,
  h('button', { type: 'submit' }, 'Sign in'),
  error,
  h('p', { class: 'hint' }, 'scripts/run prints the key of a new install (it is also in flowd-data/api-key). ',
    'The key is sent once and kept nowhere; this tab then holds a session until you sign out or close the browser.'));
  replace(app, form);
  key.focus();
}

function layout(entry) {
  const nav = h('nav', { 'aria-label': 'views' },
    h('span', { class: 'brand' }, 'flowd'),
    PAGES.filter((p) => p.label).map((p) =>
      h('a', { href: `#/${p.nav}`, class: p.nav === entry.nav ? 'active' : null,
        'aria-current': p.nav === entry.nav ? 'page' : null }, p.label)),
    h('span', { class: 'who' }, `tenant ${who.tenant} · ${who.role}`),
    h('button', { class: 'link', onclick: async () => {
      await api.signOut().catch(() => {});
      who = null;
      signInView('Signed out.');
    } }, 'Sign out'));
  const main = h('main', { id: 'main', tabindex: '-1' });
  replace(app, h('header', null, nav), main);
  return main;
}

function route() {
  if (stop) {
    stop();
    stop = null;
  }
  if (!who) return signInView();
  const { path, params } = parseHash();
  const entry = PAGES.find((p) => p.path.test(path));
  if (!entry) {
    location.hash = '#/runs';
    return undefined;
  }
  const match = entry.path.exec(path);
  const main = layout(entry);
  stop = entry.page.render(main, { match, params, who, navigate: (to) => { location.hash = to; } }) || null;
  return undefined;
}

api.whenSignedOut(() => {
  who = null;
  if (stop) {
    stop();
    stop = null;
  }
  signInView('Your session ended: sign in again.');
});

// Keyboard: "/" focuses the page's search field; j and k move between the runs of a list; g then
// r/w/b/c/u/l/s/h/q goes to a view.
let pendingG = false;
document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT')) return;
  if (e.key === 'j' || e.key === 'k') {
    // the next or previous row's link in a list of runs
    const links = [...document.querySelectorAll('a.run-link')];
    if (!links.length) return;
    const i = links.indexOf(document.activeElement);
    const next = links[Math.max(0, Math.min(links.length - 1, i < 0 ? 0 : i + (e.key === 'j' ? 1 : -1)))];
    e.preventDefault();
    next.focus();
  } else if (e.key === '/') {
    const f = document.querySelector('[data-search]');
    if (f) {
      e.preventDefault();
      f.focus();
      f.select(); // what is typed next replaces the search
    }
  } else if (pendingG) {
    pendingG = false;
    const to = { r: '#/runs', w: '#/workflows', b: '#/batches', c: '#/schedules', u: '#/usage', l: '#/limits', s: '#/sends', h: '#/webhooks', q: '#/workers' }[e.key];
    if (to) location.hash = to;
  } else if (e.key === 'g') {
    pendingG = true;
    setTimeout(() => { pendingG = false; }, 1000);
  }
});

window.addEventListener('hashchange', route);

(async () => {
  // A tab that never signed in asks nothing: the sign-in form is all it can show.
  who = sessionStorage.getItem('flowd.csrf') ? await api.session() : null;
  route();
})();
