// The HTTP API client: the session's token, JSON calls, streams, and the one 401 rule.
//
// The token (a login JWT) is kept in sessionStorage: it lives as long as the tab, is not sent
// by the browser on its own (no cookie, so no CSRF), and is gone when the tab closes. Every
// call sends it as Authorization: Bearer. A 401 from any call drops the token and fires
// "helios:unauthorized" on window; the router answers with the login page.

const TOKEN_KEY = "helios.token";

export class ApiError extends Error {
  /** status: HTTP status (0: no answer); body: the JSON answer ({error, column?, version?}). */
  constructor(status, body, message) {
    super(message || (body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const out = { ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function check(response) {
  if (response.ok) return response;
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = { error: `HTTP ${response.status} ${response.statusText}` };
  }
  if (response.status === 401) {
    clearToken();
    window.dispatchEvent(new CustomEvent("helios:unauthorized", { detail: body.error }));
  }
  throw new ApiError(response.status, body);
}

async function send(method, path, body, options) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
                 signal: options && options.signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, {}, `the node did not answer (${error.message})`);
  }
  return check(response);
}

/** A JSON call: api("GET", "/api/v1/datasets") → the parsed answer; errors throw ApiError. */
export async function api(method, path, body, options) {
  const response = await send(method, path, body, options);
  return response.json();
}

/** The text of a call (e.g. /metrics). */
export async function apiText(path, options) {
  const response = await send("GET", path, undefined, options);
  return response.text();
}

/** POST /api/v1/query: {q, from, to, dataset, limit} → {rows, stats}. */
export function query(request, options) {
  return api("POST", "/api/v1/query", request, options);
}

/** A streaming GET (live tail): the Response, whose body the caller reads. */
export function openStream(path, options) {
  return send("GET", path, undefined, options);
}

/** Log in: keeps the token; returns {token, expires_at}. */
export async function login(username, password) {
  const answer = await api("POST", "/api/v1/auth/login", { username, password });
  setToken(answer.token);
  return answer;
}

/** Who the token belongs to: {name, role}. */
export function whoami(options) {
  return api("GET", "/api/v1/auth/me", undefined, options);
}
