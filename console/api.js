// console/api.js: the flowd API as the console uses it. The console authenticates with its
// session cookie (HttpOnly: this code never sees it); requests that change something carry the
// session's CSRF value, kept in this tab's sessionStorage. The API key itself is sent once, to
// sign in, and kept nowhere.

const CSRF = 'flowd.csrf';

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.field = e.field || null;
  }
}

let onSignedOut = () => {};
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

export async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = sessionStorage.getItem(CSRF) || '';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 204) return null;
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (e) {
    parsed = null;
  }
  if (res.status === 401 && path !== '/v1/console/session') onSignedOut();
  if (!res.ok) throw new ApiError(res.status, parsed);
  return parsed;
}

export const get = (path) => request('GET', path);
export const post = (path, body) => request('POST', path, body === undefined ? {} : body);
export const del = (path) => request('DELETE', path);

// Signs in with an API key; the answer's CSRF value stays in this tab.
export async function signIn(key) {
  const res = await fetch('/v1/console/session', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    credentials: 'same-origin',
    body: JSON.stringify({ key }),
  });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body);
  sessionStorage.setItem(CSRF, body.csrf);
  return body;
}

// The current session ({tenant, role}), or null when the tab has none.
export async function session() {
  const res = await fetch('/v1/console/session', {
    headers: { Accept: 'application/json' },
    credentials: 'same-origin',
  });
  if (!res.ok) return null;
  const body = await res.json();
  if (body.csrf) sessionStorage.setItem(CSRF, body.csrf);
  return body;
}

export async function signOut() {
  try {
    await del('/v1/console/session');
  } finally {
    sessionStorage.removeItem(CSRF);
  }
}

// A query string from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.append(k, String(v));
  }
  const t = q.toString();
  return t ? `?${t}` : '';
}
