// Requests (admin): the server's recent access lines as they finish (the live feed's `requests`), newest first,
// filterable by model, status class, path and key, with a pause. Each line is one row added to the table; a
// filter only hides rows, so an event costs its own rows and never a rebuild of the ones shown.

import { api, h, live } from "../api.js";

const KEEP = 500; // rows kept in the page

export default {
  async render(root) {
    // Key ids to names, for labels: the access lines carry the id only. A key made later shows its id.
    const names = new Map();
    try {
      for (const k of (await api("/api/keys?include_revoked=true")).data) names.set(k.id, k.name);
    } catch {
      /* labels only: the ids still show */
    }
    const filters = { model: "", status: "", path: "", key: "" };
    const models = new Set();
    const keys = new Set();
    let paused = false;
    let held = []; // lines that came while paused, oldest first

    const modelSelect = h("select", { id: "filter-model", "aria-label": "Model", onchange: () => setFilter("model", modelSelect.value) }, h("option", { value: "" }, "All models"));
    const statusSelect = h(
      "select",
      { id: "filter-status", "aria-label": "Status", onchange: () => setFilter("status", statusSelect.value) },
      h("option", { value: "" }, "All statuses"),
      ["2xx", "3xx", "4xx", "5xx"].map((c) => h("option", { value: c }, c)),
    );
    const pathInput = h("input", {
      id: "filter-path",
      type: "search",
      placeholder: "Path contains…",
      "aria-label": "Path contains",
      oninput: () => setFilter("path", pathInput.value.trim()),
    });
    const keySelect = h("select", { id: "filter-key", "aria-label": "Key", onchange: () => setFilter("key", keySelect.value) }, h("option", { value: "" }, "All keys"));
    const pause = h("button", { class: "secondary", id: "pause", "aria-pressed": "false", onclick: togglePause }, "Pause");
    const counter = h("span", { class: "muted", id: "shown" });

    const head = ["Time", "Method", "Path", "Status", "Model", "Key", "Prompt", "Completion", "TTFT ms", "Total ms", "Request id"];
    const numeric = new Set(["Prompt", "Completion", "TTFT ms", "Total ms"]);
    const tbody = h("tbody", {});
    const empty = h(
      "p",
      { class: "muted", id: "requests-empty" },
      "No requests yet: send one from the ",
      h("a", { href: "#/playground" }, "Playground"),
      " or with any OpenAI client; each appears here when it ends.",
    );
    const noMatch = h("p", { class: "muted", hidden: true }, "No request shown matches the filters.");

    root.append(
      h("div", { class: "card row filters" }, modelSelect, statusSelect, pathInput, keySelect, pause, counter),
      h(
        "div",
        { class: "card" },
        empty,
        noMatch,
        h("table", { class: "requests" }, h("thead", {}, h("tr", {}, head.map((t) => h("th", { class: numeric.has(t) ? "num" : "" }, t)))), tbody),
      ),
    );

    const lineOf = new WeakMap(); // row -> its access line

    function matches(line) {
      if (filters.model && line.model !== filters.model) return false;
      if (filters.status && `${Math.floor(line.status / 100)}xx` !== filters.status) return false;
      if (filters.path && !line.path.toLowerCase().includes(filters.path.toLowerCase())) return false;
      if (filters.key && line.key_id !== filters.key) return false;
      return true;
    }

    function setFilter(name, value) {
      filters[name] = value;
      for (const row of tbody.rows) row.hidden = !matches(lineOf.get(row));
      updateCounts();
    }

    function updateCounts() {
      const total = tbody.rows.length;
      let shown = 0;
      for (const row of tbody.rows) if (!row.hidden) shown += 1;
      empty.hidden = total > 0;
      noMatch.hidden = total === 0 || shown > 0;
      counter.textContent = total ? `${shown} of ${total} shown` : "";
    }

    function remember(set, select, value) {
      if (!value || set.has(value)) return;
      set.add(value);
      select.append(h("option", { value }, names.has(value) ? `${names.get(value)} (${value})` : value));
    }

    function row(line) {
      const cls = `s${Math.floor(line.status / 100)}xx`;
      const num = (v) => (v === undefined || v === null ? "" : String(v));
      const tr = h(
        "tr",
        { dataset: { requestId: line.request_id } },
        h("td", { class: "mono", title: line.at }, clock(line.at)),
        h("td", {}, line.method),
        h("td", { class: "mono" }, line.path),
        h("td", {}, h("span", { class: `status ${cls}` }, String(line.status))),
        h("td", { class: "mono" }, line.model || ""),
        h("td", { class: "mono", title: names.get(line.key_id) }, line.key_id || ""),
        h("td", { class: "num" }, num(line.prompt_tokens)),
        h("td", { class: "num" }, num(line.completion_tokens)),
        h("td", { class: "num" }, line.ttft_ms === undefined ? "" : line.ttft_ms.toFixed(0)),
        h("td", { class: "num" }, line.ms.toFixed(line.ms < 10 ? 1 : 0)),
        h("td", { class: "mono muted" }, line.request_id),
      );
      tr.hidden = !matches(line);
      lineOf.set(tr, line);
      return tr;
    }

    function add(lines) {
      if (!lines.length) return;
      for (const line of lines.slice(-KEEP)) {
        remember(models, modelSelect, line.model);
        remember(keys, keySelect, line.key_id);
      }
      // Oldest first: reversed, they go on top with the newest first.
      tbody.prepend(...lines.slice(-KEEP).reverse().map(row));
      while (tbody.rows.length > KEEP) tbody.lastElementChild.remove();
      updateCounts();
    }

    function togglePause() {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      if (!paused) {
        const lines = held;
        held = [];
        add(lines);
      }
      pause.textContent = paused ? "Resume" : "Pause";
    }

    const stop = live.subscribe("requests", (lines) => {
      if (!paused) return add(lines);
      held = held.concat(lines).slice(-KEEP);
      pause.textContent = `Resume (${held.length} new)`;
    });
    updateCounts();
    return stop;
  },
};

// "14:02:07.123": the time of day with milliseconds, local time (requests come many a second).
function clock(iso) {
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
