// How every page talks to the server: the key, JSON calls, server-sent events and the shared live feed.
// The key is kept in this tab's sessionStorage (or localStorage when the user asks to be remembered) and sent
// as a header: never in a URL, so it never lands in a log or the browser's history.

const KEY = "bitinglip.key";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
  },
  save(key, remember) {
    sessionStorage.setItem(KEY, key);
    if (remember) localStorage.setItem(KEY, key);
    else localStorage.removeItem(KEY);
  },
  forget() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
  },
  // What the key may do, found by `whoami()`: "admin" (or auth off), "inference", or null before it is known.
  scope: null,
  authOn: false,
  me: null,
};

export class ApiError extends Error {
  constructor(status, body, headers) {
    const err = body && body.error ? body.error : null;
    super(err && err.message ? err.message : `HTTP ${status}`);
    this.status = status;
    this.code = err ? err.code : null;
    this.param = err ? err.param : null;
    this.retryAfter = headers ? headers.get("retry-after") : null;
  }
}

function headers(extra) {
  const h = { ...extra };
  if (session.key) h.Authorization = `Bearer ${session.key}`;
  return h;
}

// The request itself: `body` as JSON unless it is FormData; a failure as an ApiError with the envelope's message.
async function send(path, method, body, signal, sent) {
  const init = { method, signal, headers: sent };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  if (!r.ok) {
    let parsed = null;
    try {
      parsed = await r.json();
    } catch {
      /* not JSON: the status says it */
    }
    throw new ApiError(r.status, parsed, r.headers);
  }
  return r;
}

// A JSON call. `body` is sent as JSON unless it is FormData; `raw` returns the Response (files, text).
export async function api(path, { method = "GET", body, raw = false, signal } = {}) {
  const r = await send(path, method, body, signal, headers());
  if (raw) return r;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

// Server-sent events from a GET or a POST (fetch, not EventSource, so the key goes in a header).
// Yields {event, data} with `data` parsed as JSON when it is JSON; "[DONE]" ends the stream.
export async function* sse(path, { method = "GET", body, signal } = {}) {
  const r = await send(path, method, body, signal, headers({ Accept: "text/event-stream" }));
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    // Litestar ends lines with \r\n (the spec allows \r\n, \n or \r): one form, so "\n\n" ends an event. A
    // chunk that ends between \r and \n keeps its \r until the next one.
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      // Stopped: not one more event, even of those already read (a fast answer may arrive in one read).
      if (signal && signal.aborted) throw signal.reason;
      const text = data.join("\n");
      if (text === "[DONE]") return;
      let parsed = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        /* plain text data */
      }
      yield { event, data: parsed };
    }
  }
}

// The live feed (`GET /api/events`, admin keys): one connection shared by every page that subscribes, opened
// with the first subscriber, closed with the last, reopened after a drop. Events: cluster, timeline, requests.
const listeners = new Map(); // event name -> Set of functions
const last = new Map(); // event name -> last data (a page that subscribes late gets the latest snapshot at once)
let feed = null;

export const live = {
  subscribe(name, fn) {
    if (!listeners.has(name)) listeners.set(name, new Set());
    listeners.get(name).add(fn);
    if (last.has(name) && name === "cluster") fn(last.get(name));
    if (!feed) feed = openFeed();
    return () => {
      listeners.get(name).delete(fn);
      if ([...listeners.values()].every((s) => s.size === 0) && feed) {
        feed.abort();
        feed = null;
        last.clear();
      }
    };
  },
};

function openFeed() {
  const controller = new AbortController();
  (async () => {
    let wait = 1000;
    while (!controller.signal.aborted) {
      try {
        for await (const { event, data } of sse("/api/events", { signal: controller.signal })) {
          wait = 1000;
          last.set(event, data);
          for (const fn of listeners.get(event) || []) fn(data);
        }
      } catch (e) {
        if (controller.signal.aborted) return;
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) return;
      }
      await new Promise((done) => setTimeout(done, wait));
      wait = Math.min(wait * 2, 15000);
    }
  })();
  return controller;
}

// What the key may do (`GET /api/me`, which answers without a key and never with a 401, so signing in logs no
// errors): "admin" (or auth off), "inference", or null when a key is needed. `session.me` keeps the answer
// (the key's name, limits and headroom).
export async function whoami() {
  const me = await api("/api/me");
  session.me = me;
  session.authOn = me.auth;
  session.scope = me.scope;
  return me.scope;
}

// DOM: h("div", {class: "x", onclick: fn}, "text", child, [more]) builds elements; no HTML strings, so
// nothing the server sends (model names, answers) is ever parsed as markup.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function time(iso) {
  if (!iso) return "–";
  const d = typeof iso === "number" ? new Date(iso * 1000) : new Date(iso);
  return d.toLocaleTimeString();
}

export function toast(message, kind = "info") {
  const box = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  document.getElementById("toasts").append(box);
  setTimeout(() => box.remove(), kind === "error" ? 8000 : 4000);
}
