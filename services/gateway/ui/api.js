// The REST API and its live streams, as the dashboard uses them.
//
// Auth: a token the user enters is kept in this module's memory only (never in storage or a cookie), and sent
// as `Authorization: Bearer …` on every request and stream; reloading the page forgets it. Streams go through
// the `eventsource` package rather than the browser's EventSource because only it can send that header.
import { EventSource } from "eventsource";

export const API = "/api/distributed";

let token = null;
const authListeners = new Set();

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function setToken(value) {
  token = value ? value.trim() : null;
  for (const listener of authListeners) listener({ token: Boolean(token), needed: false });
}

export function hasToken() {
  return Boolean(token);
}

/** Called with {token, needed} when the token changes or the API answers 401. */
export function onAuth(listener) {
  authListeners.add(listener);
  return () => authListeners.delete(listener);
}

function authNeeded() {
  for (const listener of authListeners) listener({ token: Boolean(token), needed: true });
}

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** One request; resolves to the JSON body, rejects with ApiError carrying the API's sentence. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers({ Accept: "application/json" }) };
  if (method !== "GET") {
    // State-changing requests are JSON only (the API refuses forms: no cross-site request forgery).
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch {
    throw new ApiError(0, "The gateway does not answer.");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.status === 401) authNeeded();
  if (!response.ok) throw new ApiError(response.status, data?.error ?? `HTTP ${response.status}`);
  return data;
}

/**
 * Follow a server-sent event stream. `handlers` maps event kinds to functions of (payload, event).
 * `onState` hears "connecting", "live", "reconnecting" and "closed". The stream reconnects by itself after a
 * dropped connection, resuming after the last event id it saw. Returns a function that closes it.
 */
export function follow(path, handlers, onState = () => {}) {
  const source = new EventSource(API + path, {
    fetch: (url, init) => fetch(url, { ...init, headers: headers(init.headers) }),
  });
  onState("connecting");
  source.addEventListener("open", () => onState("live"));
  source.addEventListener("error", (event) => {
    if (event.code === 401) authNeeded();
    onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  });
  for (const [kind, handler] of Object.entries(handlers)) {
    source.addEventListener(kind, (event) => {
      let payload = null;
      try {
        payload = JSON.parse(event.data);
      } catch {
        return;
      }
      handler(payload, event);
    });
  }
  return () => {
    source.close();
    onState("closed");
  };
}
