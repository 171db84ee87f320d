// Overview (admin): the devices with what each deployment holds of their memory, the deployments with their
// load, and the timeline of their state changes, all from the live feed (`cluster` every 2 s, `timeline` as it
// happens).

import { bytes, duration, h, live, time } from "../api.js";

const TIMELINE_KEEP = 300; // entries kept in the page (the server keeps its own backlog)

export default {
  render(root) {
    const devices = h("div", {}, h("p", { class: "muted" }, "Waiting for the first snapshot…"));
    const deployments = h("div", {}, h("p", { class: "muted" }, "Waiting for the first snapshot…"));
    const timeline = h("ol", { class: "timeline", id: "timeline" });
    const timelineEmpty = h(
      "p",
      { class: "muted" },
      "No state changes yet: loads, sleeps, evictions and restarts appear here as they happen.",
    );
    root.append(
      h("section", { class: "card", id: "devices" }, h("h2", {}, "Devices"), devices),
      h("section", { class: "card", id: "deployments" }, h("h2", {}, "Deployments"), deployments),
      h("section", { class: "card" }, h("h2", {}, "Timeline"), timelineEmpty, timeline),
    );

    // tokens/s: the growth of each deployment's `tokens_generated` between two snapshots over the time between
    // them. A snapshot handed over at once on subscribing is the feed's last one, of an unknown age: it is shown
    // but not used as the start of a rate.
    let previous = null; // {at: ms, tokens: Map(name -> tokens_generated)}
    let rates = new Map();
    let replaying = true;

    function onCluster(snapshot) {
      const now = performance.now();
      const tokens = new Map(snapshot.deployments.map((d) => [d.name, d.stats.tokens_generated]));
      if (!replaying) {
        if (previous) {
          const seconds = (now - previous.at) / 1000;
          rates = new Map();
          for (const [name, n] of tokens) {
            const before = previous.tokens.get(name);
            // Unknown before, or fewer now (its engines restarted): no rate until the next snapshot.
            if (before !== undefined && n >= before && seconds > 0) rates.set(name, (n - before) / seconds);
          }
        }
        previous = { at: now, tokens };
      }
      devices.replaceChildren(...renderDevices(snapshot));
      deployments.replaceChildren(renderDeployments(snapshot.deployments, rates));
    }

    function onTimeline(events) {
      if (!events.length) return;
      timelineEmpty.hidden = true;
      // Oldest first in each event: prepending one by one leaves the newest at the top.
      for (const e of events) timeline.prepend(timelineEntry(e));
      while (timeline.childElementCount > TIMELINE_KEEP) timeline.lastElementChild.remove();
    }

    const stops = [live.subscribe("cluster", onCluster), live.subscribe("timeline", onTimeline)];
    replaying = false;
    return () => stops.forEach((stop) => stop());
  },
};

function renderDevices(snapshot) {
  if (!snapshot.devices.length) return [h("p", { class: "muted" }, "No device found: the server sees no CPU or GPU.")];
  return snapshot.devices.map((device) => {
    const total = device.memory_total_bytes;
    const parts = [];
    for (const d of snapshot.deployments) {
      if (d.device_kind !== device.kind || !d.devices.includes(device.index) || !d.memory) continue;
      const held = d.memory.held_bytes ?? d.memory.estimate_bytes;
      // A deployment over several devices: an even share on each (the engines split the model evenly).
      parts.push({ name: d.name, bytes: held / d.devices.length, measured: d.memory.held_bytes !== null });
    }
    const ours = parts.reduce((sum, p) => sum + p.bytes, 0);
    const other = Math.max(0, device.memory_used_bytes - ours);
    const pct = (n) => (total > 0 ? `${Math.min(100, (100 * n) / total).toFixed(2)}%` : "0%");
    const facts = [
      device.kind === "cpu" && device.cores ? `${device.cores} cores` : null,
      device.utilization_percent !== null && device.utilization_percent !== undefined
        ? `${device.utilization_percent.toFixed(0)}% busy`
        : null,
      device.temperature_c !== null && device.temperature_c !== undefined ? `${device.temperature_c} °C` : null,
    ].filter(Boolean);
    return h(
      "div",
      { class: "device", dataset: { device: `${device.kind}:${device.index}` } },
      h(
        "div",
        { class: "spread" },
        h("strong", {}, device.kind === "gpu" ? `GPU ${device.index}: ${device.name}` : `CPU: ${device.name}`),
        h("span", { class: "muted" }, `${bytes(device.memory_used_bytes)} used of ${bytes(total)}`, facts.length ? ` · ${facts.join(" · ")}` : ""),
      ),
      h(
        "div",
        { class: "bar", role: "img", "aria-label": `${bytes(device.memory_used_bytes)} of ${bytes(total)} used` },
        parts.map((p) => h("span", { style: `width: ${pct(p.bytes)}`, title: `${p.name}: ${bytes(p.bytes)}` })),
        h("span", { class: "other", style: `width: ${pct(other)}`, title: `other: ${bytes(other)}` }),
      ),
      h(
        "div",
        { class: "legend" },
        parts.map((p) => h("span", {}, `${p.name} ${bytes(p.bytes)}${p.measured ? "" : " (estimate)"}`)),
        h("span", {}, `other ${bytes(other)}`),
        h("span", {}, `free ${bytes(device.memory_free_bytes)}`),
      ),
    );
  });
}

function renderDeployments(list, rates) {
  if (!list.length) {
    return h(
      "p",
      { class: "muted" },
      "No deployments: deploy one from ",
      h("a", { href: "#/models" }, "Models"),
      ", or with `bitinglip deploy MODEL`.",
    );
  }
  const head = ["Name", "Model", "State", "Replicas", "Memory", "In flight", "KV cache", "Tokens/s", "Up / unloads", "Adapters"];
  const numeric = new Set(["Memory", "In flight", "KV cache", "Tokens/s"]);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { class: numeric.has(t) ? "num" : "" }, t)))),
    h(
      "tbody",
      {},
      list.map((d) => {
        const ready = d.replicas.filter((r) => r.state === "ready").length;
        const restarts = d.replicas.reduce((n, r) => n + r.restarts, 0);
        const rate = rates.get(d.name);
        const s = d.stats;
        return h(
          "tr",
          { dataset: { deployment: d.name } },
          h("td", {}, h("strong", {}, d.name)),
          h("td", { class: "mono" }, d.model),
          h("td", {}, h("span", { class: `badge ${d.state}` }, d.state), d.reason ? h("div", { class: "muted reason" }, d.reason) : null),
          h("td", {}, `${ready}/${d.replicas.length}`, restarts ? h("div", { class: "muted" }, `${restarts} restarts`) : null),
          h("td", { class: "num memory" }, memory(d.memory)),
          h(
            "td",
            { class: "num", title: `${s.running} running, ${s.waiting} waiting in the engines; ${s.queued_tokens} prompt tokens queued` },
            String(s.in_flight),
            s.waiting ? h("div", { class: "muted" }, `${s.waiting} queued`) : null,
          ),
          h("td", { class: "num" }, `${(s.kv_cache_usage * 100).toFixed(1)}%`),
          h("td", { class: "num tokens-rate" }, rate === undefined ? "–" : rate.toFixed(1)),
          h("td", {}, lifetime(d)),
          h("td", { class: "mono" }, d.adapters.length ? d.adapters.join(", ") : h("span", { class: "muted" }, "–")),
        );
      }),
    ),
  );
}

function memory(m) {
  if (!m) return h("span", { class: "muted" }, "–");
  if (m.held_bytes === null) return h("span", { title: "estimate: weights + KV cache + overhead" }, `~${bytes(m.estimate_bytes)}`);
  return h("span", { title: `measured; estimate ${bytes(m.estimate_bytes)}` }, bytes(m.held_bytes));
}

function lifetime(d) {
  if (d.state === "loading") return `loading for ${duration(d.loading_for_s)}`;
  if (d.uptime_s === null) return h("span", { class: "muted" }, d.last_used ? `last used ${time(d.last_used)}` : "–");
  const up = `up ${duration(d.uptime_s)}`;
  if (d.unloads_in_s !== null) return [up, h("div", { class: "muted" }, `unloads in ${duration(d.unloads_in_s)}`)];
  return d.keep_alive_s === null ? [up, h("div", { class: "muted" }, "stays loaded")] : up;
}

function timelineEntry(e) {
  return h(
    "li",
    { dataset: { deployment: e.deployment, state: e.state } },
    h("span", { class: "muted mono", title: e.at }, time(e.at)),
    h("strong", {}, e.deployment),
    h("span", { class: `badge ${e.state}` }, e.state),
    e.reason ? h("span", { class: "reason" }, e.reason) : null,
  );
}
