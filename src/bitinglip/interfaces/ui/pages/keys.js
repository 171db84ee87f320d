// Keys and usage. An admin key (or auth off): make keys (the key is shown once), list them with their limits
// and the headroom left this minute, revoke them, and read the usage of every key. An inference key: its own
// limits, headroom and usage (the server answers /api/usage with that key's rows alone).

import { api, h, session, toast, whoami } from "../api.js";
import { badge, count, every, field, svg, when } from "../widgets.js";

const DAY_MS = 86400000;
const PALETTE = ["#7c3aed", "#0ea5e9", "#f59e0b", "#15803d", "#db2777", "#64748b", "#b91c1c", "#0d9488"];

function utcDay(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function limits(k) {
  const parts = [];
  if (k.rpm !== null) parts.push(`${count(k.rpm)} req/min`);
  if (k.tpm !== null) parts.push(`${count(k.tpm)} tokens/min`);
  if (k.max_concurrent !== null) parts.push(`${count(k.max_concurrent)} at once`);
  return parts.length ? parts.join(" · ") : "none";
}

function headroom(k) {
  const room = k.headroom;
  if (!room) return h("span", { class: "muted" }, "no per-minute limits");
  const parts = [];
  if (room.requests_left !== null) parts.push(`${count(room.requests_left)} of ${count(k.rpm)} requests`);
  if (room.tokens_left !== null) parts.push(`${count(room.tokens_left)} of ${count(k.tpm)} tokens`);
  return h("span", { class: "headroom" }, `${parts.join(", ")} left this minute`, room.reset_s > 0 ? h("span", { class: "muted small" }, ` (full again in ${Math.ceil(room.reset_s)} s)`) : null);
}

function modelsText(k) {
  return k.models === null ? h("span", { class: "muted" }, "any") : k.models.join(", ");
}

export default {
  render(root) {
    const admin = session.scope === "admin";
    const stops = [];
    let keyNames = new Map(); // key id -> name, for the usage table
    let keyOptions = "";

    // --- One inference key: its own card ------------------------------------------------------------------
    const ownCard = h("section", { class: "card", id: "own-key" });
    function showOwn() {
      const k = session.me && session.me.key;
      if (!k) return ownCard.replaceChildren(h("p", { class: "muted" }, "No key details."));
      keyNames = new Map([[k.id, k.name]]);
      ownCard.replaceChildren(
        h("h2", {}, "Your key"),
        h(
          "table",
          {},
          h(
            "tbody",
            {},
            h("tr", {}, h("th", {}, "Name"), h("td", {}, k.name, " ", h("span", { class: "muted mono" }, `${k.prefix}…`))),
            h("tr", {}, h("th", {}, "State"), h("td", {}, badge(k.state))),
            h("tr", {}, h("th", {}, "Models"), h("td", {}, modelsText(k))),
            h("tr", {}, h("th", {}, "Limits"), h("td", {}, limits(k))),
            h("tr", {}, h("th", {}, "Headroom"), h("td", {}, headroom(k))),
            h("tr", {}, h("th", {}, "Expires"), h("td", {}, k.expires_at ? when(k.expires_at) : "never")),
          ),
        ),
      );
    }

    // --- Create a key (admin) ------------------------------------------------------------------------------
    const secretSlot = h("div", {});
    const nameInput = h("input", { name: "name", required: true, autocomplete: "off", placeholder: "ci-runner" });
    const scopeInput = h("select", { name: "scope" }, h("option", { value: "inference" }, "inference"), h("option", { value: "admin" }, "admin"));
    const modelsInput = h("input", { name: "models", placeholder: "any model", autocomplete: "off", size: 24, list: "key-model-names" });
    const modelNames = h("datalist", { id: "key-model-names" });
    const number = (name) => h("input", { name, type: "number", min: "1", placeholder: "no limit", style: "width: 7rem" });
    const rpmInput = number("rpm");
    const tpmInput = number("tpm");
    const concurrentInput = number("max_concurrent");
    const expiresInput = h("input", { name: "expires", type: "date" });
    const createError = h("p", { class: "error", role: "alert" });
    const create = h(
      "section",
      { class: "card", id: "create-key" },
      h("h2", {}, "New key"),
      h(
        "form",
        {
          class: "row",
          onsubmit: async (event) => {
            event.preventDefault();
            createError.textContent = "";
            const body = { name: nameInput.value.trim(), scope: scopeInput.value };
            const models = modelsInput.value.split(",").map((s) => s.trim()).filter(Boolean);
            if (models.length) body.models = models;
            for (const [input, key] of [[rpmInput, "rpm"], [tpmInput, "tpm"], [concurrentInput, "max_concurrent"]]) {
              if (input.value) body[key] = Number(input.value);
            }
            // The end of the chosen day, in this browser's time zone.
            if (expiresInput.value) body.expires_at = Math.floor(new Date(`${expiresInput.value}T23:59:59`).getTime() / 1000);
            try {
              const made = await api("/api/keys", { method: "POST", body });
              showSecret(made);
              event.target.reset();
              await loadKeys();
            } catch (e) {
              createError.textContent = e.message;
            }
          },
        },
        field("Name", nameInput),
        field("Scope", scopeInput),
        field("Models (comma list)", modelsInput),
        field("Requests/min", rpmInput),
        field("Tokens/min", tpmInput),
        field("At once", concurrentInput),
        field("Expires", expiresInput),
        h("button", { type: "submit" }, "Create key"),
        modelNames,
      ),
      createError,
      secretSlot,
    );

    // The key itself: in this answer only, kept in this element alone (gone when the page changes).
    function showSecret(made) {
      const copy = h(
        "button",
        {
          class: "secondary",
          onclick: async () => {
            try {
              await navigator.clipboard.writeText(made.key);
              toast("Copied", "ok");
            } catch {
              toast("The browser refused the clipboard: select the key and copy it by hand", "error");
            }
          },
        },
        "Copy",
      );
      secretSlot.replaceChildren(
        h(
          "div",
          { class: "card secret-box", role: "status" },
          h("p", { class: "warn" }, `Key “${made.info.name}” (${made.info.scope}): copy it now. It is shown this once; the server keeps only its hash.`),
          h("div", { class: "row" }, h("div", { class: "secret", style: "flex: 1" }, made.key), copy),
        ),
      );
    }

    // --- The keys (admin) ---------------------------------------------------------------------------------
    const includeRevoked = h("input", { type: "checkbox", name: "include_revoked", onchange: () => loadKeys() });
    const keysBody = h("tbody");
    const keysError = h("p", { class: "error", role: "alert" });
    const keyList = h(
      "section",
      { class: "card", id: "keys" },
      h("div", { class: "spread" }, h("h2", {}, "Keys"), h("label", { class: "check" }, includeRevoked, "Show revoked and expired")),
      keysError,
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Name"), h("th", {}, "State"), h("th", {}, "Scope"), h("th", {}, "Models"), h("th", {}, "Limits"), h("th", {}, "Headroom"), h("th", {}, "Created"), h("th", {}, "Expires"), h("th", {}, "")),
        ),
        keysBody,
      ),
    );

    function keyRow(k) {
      const revoke =
        k.state === "revoked"
          ? null
          : h(
              "button",
              {
                class: "danger",
                onclick: async () => {
                  if (!confirm(`Revoke the key “${k.name}”? Whatever uses it is refused from now on.`)) return;
                  try {
                    await api(`/api/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
                    toast(`Revoked ${k.name}`, "ok");
                    await loadKeys();
                  } catch (e) {
                    toast(e.message, "error");
                  }
                },
              },
              "Revoke",
            );
      return h(
        "tr",
        { dataset: { key: k.id, name: k.name } },
        h("td", {}, k.name, h("div", { class: "muted mono small" }, `${k.prefix}…`)),
        h("td", {}, badge(k.state)),
        h("td", {}, k.scope),
        h("td", {}, modelsText(k)),
        h("td", {}, limits(k)),
        h("td", {}, headroom(k)),
        h("td", {}, when(k.created_at)),
        h("td", {}, k.expires_at ? when(k.expires_at) : "never"),
        h("td", {}, revoke),
      );
    }

    async function loadKeys() {
      try {
        const [shown, all] = await Promise.all([
          api(`/api/keys${includeRevoked.checked ? "?include_revoked=true" : ""}`),
          api("/api/keys?include_revoked=true"),
        ]);
        keysError.textContent = "";
        keysBody.replaceChildren(
          ...(shown.data.length
            ? shown.data.map(keyRow)
            : [h("tr", {}, h("td", { colspan: "9", class: "muted" }, "No keys: make one above, or with `bitinglip keys create`."))]),
        );
        keyNames = new Map(all.data.map((k) => [k.id, k.name]));
        const options = all.data.map((k) => `${k.id}:${k.state}`).join(",");
        if (options === keyOptions) return; // rebuilt only when it changed, so an open list stays open
        keyOptions = options;
        const chosen = keyFilter.value;
        keyFilter.replaceChildren(h("option", { value: "" }, "every key"), ...all.data.map((k) => h("option", { value: k.id }, `${k.name} (${k.state})`)));
        keyFilter.value = all.data.some((k) => k.id === chosen) ? chosen : "";
      } catch (e) {
        keysError.textContent = e.message;
      }
    }

    // --- Usage ----------------------------------------------------------------------------------------------
    const rangeInput = h("select", { name: "range", onchange: () => loadUsage() }, h("option", { value: "7" }, "last 7 days"), h("option", { value: "30" }, "last 30 days"));
    const keyFilter = h("select", { name: "key_id", onchange: () => loadUsage() }, h("option", { value: "" }, "every key"));
    const modelFilter = h("select", { name: "model", onchange: () => loadUsage() }, h("option", { value: "" }, "every model"));
    const splitInput = h("select", { name: "split", onchange: () => draw() }, h("option", { value: "kind" }, "prompt and completion"), h("option", { value: "model" }, "by model"));
    const chartSlot = h("div", { class: "chart-slot" });
    const usageBody = h("tbody");
    const usageFoot = h("tfoot");
    const usageError = h("p", { class: "error", role: "alert" });
    const usage = h(
      "section",
      { class: "card", id: "usage" },
      h("h2", {}, "Usage"),
      h("div", { class: "row" }, field("Days (UTC)", rangeInput), admin ? field("Key", keyFilter) : null, field("Model", modelFilter), field("Bars", splitInput)),
      usageError,
      chartSlot,
      h(
        "table",
        { id: "usage-table" },
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Day"), h("th", {}, "Key"), h("th", {}, "Model"), h("th", { class: "num" }, "Requests"), h("th", { class: "num" }, "Prompt tokens"), h("th", { class: "num" }, "Completion tokens"), h("th", { class: "num" }, "Errors")),
        ),
        usageBody,
        usageFoot,
      ),
    );
    let report = null;
    let days = [];

    function keyName(id) {
      if (!id) return "no key (auth off)";
      return keyNames.get(id) || id;
    }

    async function loadUsage() {
      const n = Number(rangeInput.value);
      const now = Date.now();
      days = Array.from({ length: n }, (_, i) => utcDay(now - (n - 1 - i) * DAY_MS));
      const query = new URLSearchParams({ start: days[0], end: days[days.length - 1] });
      if (admin && keyFilter.value) query.set("key_id", keyFilter.value);
      if (modelFilter.value) query.set("model", modelFilter.value);
      try {
        report = await api(`/api/usage?${query}`);
        usageError.textContent = "";
      } catch (e) {
        usageError.textContent = e.message;
        return;
      }
      if (!modelFilter.value) {
        const names = [...new Set(report.data.map((r) => r.model))].sort();
        modelFilter.replaceChildren(h("option", { value: "" }, "every model"), ...names.map((m) => h("option", { value: m }, m)));
        modelNames.replaceChildren(...names.map((m) => h("option", { value: m })));
      }
      draw();
      usageBody.replaceChildren(
        ...(report.data.length
          ? report.data.map((r) =>
              h(
                "tr",
                { dataset: { model: r.model, day: r.day } },
                h("td", {}, r.day),
                h("td", {}, keyName(r.key_id)),
                h("td", { class: "mono" }, r.model),
                h("td", { class: "num" }, count(r.requests)),
                h("td", { class: "num" }, count(r.prompt_tokens)),
                h("td", { class: "num" }, count(r.completion_tokens)),
                h("td", { class: "num" }, count(r.errors)),
              ),
            )
          : [h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No usage in these days: requests show here a few seconds after they end."))]),
      );
      const t = report.total;
      usageFoot.replaceChildren(
        h(
          "tr",
          { class: "total" },
          h("th", { colspan: "3" }, "Total"),
          h("th", { class: "num" }, count(t.requests)),
          h("th", { class: "num" }, count(t.prompt_tokens)),
          h("th", { class: "num" }, count(t.completion_tokens)),
          h("th", { class: "num" }, count(t.errors)),
        ),
      );
    }

    // Stacked bars, one a day: prompt and completion tokens, or tokens by model.
    function draw() {
      if (!report) return;
      const byModel = splitInput.value === "model";
      const series = byModel ? [...new Set(report.data.map((r) => r.model))].sort() : ["prompt", "completion"];
      const color = (s, i) => (byModel ? PALETTE[i % PALETTE.length] : s === "prompt" ? PALETTE[0] : PALETTE[1]);
      const cells = new Map(days.map((d) => [d, new Map(series.map((s) => [s, 0]))]));
      for (const r of report.data) {
        const day = cells.get(r.day);
        if (!day) continue;
        if (byModel) day.set(r.model, day.get(r.model) + r.prompt_tokens + r.completion_tokens);
        else {
          day.set("prompt", day.get("prompt") + r.prompt_tokens);
          day.set("completion", day.get("completion") + r.completion_tokens);
        }
      }
      const totals = days.map((d) => [...cells.get(d).values()].reduce((a, b) => a + b, 0));
      const top = niceTop(Math.max(10, ...totals));
      const W = Math.max(400, Math.round(chartSlot.clientWidth || 800)); // one SVG unit a pixel: text stays its size
      const H = 220;
      const left = 56;
      const bottom = 24;
      const plotH = H - bottom - 10;
      const step = (W - left - 8) / days.length;
      const barW = Math.max(2, step * 0.7);
      const y = (v) => 10 + plotH - (v / top) * plotH;
      const grid = [0, 0.5, 1].map((f) => [
        svg("line", { class: "axis", x1: left, x2: W - 8, y1: y(top * f), y2: y(top * f) }),
        svg("text", { x: left - 6, y: y(top * f) + 4, "text-anchor": "end" }, compact(top * f)),
      ]);
      const bars = days.map((d, i) => {
        const x = left + i * step + (step - barW) / 2;
        let base = 0;
        const parts = series.map((s, j) => {
          const v = cells.get(d).get(s);
          const rect = v
            ? svg("rect", { x, y: y(base + v), width: barW, height: y(base) - y(base + v), fill: color(s, j) }, svg("title", {}, `${d} · ${s}: ${count(v)} tokens`))
            : null;
          base += v;
          return rect;
        });
        const labelEvery = Math.ceil(days.length / 10);
        const label = i % labelEvery === 0 || i === days.length - 1 ? svg("text", { x: x + barW / 2, y: H - 6, "text-anchor": "middle" }, d.slice(5)) : null;
        return svg("g", { "data-day": d, "data-tokens": totals[i] }, ...parts, label);
      });
      const chart = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `tokens per day, ${byModel ? "by model" : "prompt and completion"}` }, ...grid, ...bars);
      const legend = h("div", { class: "legend" }, series.map((s, j) => h("span", {}, h("span", { class: "swatch", style: `background: ${color(s, j)}` }), byModel ? s : `${s} tokens`)));
      chartSlot.replaceChildren(chart, legend);
    }

    if (admin) {
      root.append(create, keyList, usage);
      loadKeys().then(loadUsage);
      stops.push(every(loadKeys, 5000)); // the headroom moves with every request
    } else {
      showOwn();
      root.append(ownCard, usage);
      loadUsage();
      stops.push(
        every(async () => {
          await whoami();
          showOwn();
        }, 5000),
      );
    }
    stops.push(every(loadUsage, 15000));
    return () => stops.forEach((stop) => stop());
  },
};

function niceTop(v) {
  const magnitude = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * magnitude >= v) return m * magnitude;
  return 10 * magnitude;
}

function compact(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return String(+v.toFixed(1));
}

