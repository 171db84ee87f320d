// Small pieces the Models, Keys and Batches pages share: a progress bar, a number, a date, a form field, a
// download that keeps the key out of every URL. Not a page: app.js never routes here.

import { api, h } from "./api.js";

// A bar for `done` of `total` (a fraction 0..1 when total is omitted); role=progressbar so a screen reader (and
// a test) reads its value.
export function progressBar(done, total) {
  const fraction = total === undefined ? done : total ? done / total : 0;
  const percent = Math.max(0, Math.min(100, Math.round((fraction || 0) * 100)));
  return h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(percent), title: `${percent} %` },
    h("span", { style: `width: ${percent}%` }),
  );
}

export function count(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

// Unix seconds (or ISO text) as a short local date and time.
export function when(value) {
  if (value === null || value === undefined) return "–";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function badge(state) {
  return h("span", { class: `badge ${state}` }, state);
}

// A labelled form field: field("Name", input).
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("span", { class: "muted small" }, hint) : null);
}

// The path of a registry or deployment name that may hold slashes ("org/name"): each segment encoded.
export function namePath(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}

// Fetch a file with the key in a header, then hand it to the browser as a download under `filename`: the
// object URL holds the bytes, never the key.
export async function download(path, filename) {
  const r = await api(path, { raw: true });
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, style: "display: none" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// A repeating call while a page is open: `every(fn, ms)` returns a stop function; calls never overlap.
export function every(fn, ms) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await fn();
    } catch {
      /* the page shows its own errors; the next tick tries again */
    } finally {
      if (!stopped) timer = setTimeout(tick, ms);
    }
  };
  timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// SVG elements (h() makes HTML ones): svg("rect", {x: 1, ...}, svg("title", {}, "text")).
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
