// Models (admin keys): the local registry with delete, hub search, pulls with their live progress, and the
// deployments: a deploy form that shows the placement's answer as it is, and undeploy.

import { ApiError, api, bytes, duration, h, live, sse, toast } from "../api.js";
import { badge, count, field, namePath, progressBar } from "../widgets.js";

const FINISHED = new Set(["ready", "failed", "cancelled"]);

export default {
  render(root) {
    const controller = new AbortController(); // ends every pull stream when the page is left
    let models = [];

    // --- Registry -------------------------------------------------------------------------------------------
    const registryBody = h("tbody");
    const registryNote = h("div", { role: "status" });
    const registry = h(
      "section",
      { class: "card", id: "registry" },
      h("div", { class: "spread" }, h("h2", {}, "Registry"), h("button", { class: "secondary", onclick: () => loadModels() }, "Refresh")),
      registryNote,
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Name"), h("th", {}, "Kind"), h("th", { class: "num" }, "Size"), h("th", {}, "Architecture"), h("th", {}, "State"), h("th", {}, "From"), h("th", {}, "")),
        ),
        registryBody,
      ),
    );

    function source(m) {
      if (m.repo_id) return `hub: ${m.repo_id}${m.revision ? `@${m.revision}` : ""}${m.commit_sha ? ` (${m.commit_sha.slice(0, 8)})` : ""}`;
      return `${m.source}: ${m.path}`;
    }

    function modelRow(m) {
      const actions = h("td", {});
      const row = h(
        "tr",
        { dataset: { model: m.name } },
        h("td", { class: "mono" }, m.name),
        h("td", {}, m.kind === "adapter" ? `adapter of ${m.base_model || "?"}` : "model"),
        h("td", { class: "num" }, bytes(m.size_bytes)),
        h("td", {}, m.architecture || "–", m.parameters ? h("span", { class: "muted" }, ` · ${count(m.parameters)} parameters`) : null),
        h("td", {}, badge(m.state), m.error ? h("div", { class: "error small" }, m.error) : null, m.used_by_pid ? h("div", { class: "muted small" }, `in use by pid ${m.used_by_pid}`) : null),
        h("td", { class: "muted small mono" }, source(m)),
        actions,
      );
      const remove = h("button", { class: "danger", onclick: () => removeModel(m, actions, false) }, "Delete");
      actions.append(remove);
      return row;
    }

    async function removeModel(m, cell, force) {
      const question = force
        ? `Delete ${m.name} anyway? Whatever uses it (a running engine, its adapters) loses it.`
        : `Delete ${m.name} and the files BitingLip keeps for it?`;
      if (!confirm(question)) return;
      cell.querySelectorAll(".refusal").forEach((n) => n.remove());
      try {
        await api(`/api/models/${namePath(m.name)}${force ? "?force=true" : ""}`, { method: "DELETE" });
        toast(`Deleted ${m.name}`, "ok");
        await loadModels();
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        const refusal = h("div", { class: "refusal error small", role: "alert" }, e.message);
        if (e.status === 409 && !force) {
          refusal.append(" ", h("button", { class: "danger", onclick: () => removeModel(m, cell, true) }, "Delete anyway"));
        }
        cell.append(refusal);
      }
    }

    async function loadModels() {
      try {
        models = (await api("/api/models")).data;
        registryNote.replaceChildren();
      } catch (e) {
        registryNote.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
        return;
      }
      registryBody.replaceChildren(
        ...(models.length
          ? models.map(modelRow)
          : [h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No models yet: pull one from the hub below, or `bitinglip models import DIR`."))]),
      );
      fillModelChoice();
    }

    // --- Pulls ---------------------------------------------------------------------------------------------
    const pullInput = h("input", { name: "pull", placeholder: "org/name or org/name@revision", required: true, size: 40, autocomplete: "off" });
    const pullError = h("p", { class: "error", role: "alert" });
    const pullList = h("div", { class: "pulls" });
    const shown = new Map(); // pull id -> its element
    const pulls = h(
      "section",
      { class: "card", id: "pulls" },
      h("h2", {}, "Pull from the hub"),
      h(
        "form",
        {
          class: "row",
          onsubmit: async (event) => {
            event.preventDefault();
            pullError.textContent = "";
            const button = event.target.querySelector("button");
            button.disabled = true;
            try {
              const status = await api("/api/models/pulls", { method: "POST", body: { model: pullInput.value.trim() } });
              follow(status);
              pullInput.value = "";
            } catch (e) {
              pullError.textContent = e.message;
            } finally {
              button.disabled = false;
            }
          },
        },
        field("Model", pullInput),
        h("button", { type: "submit" }, "Pull"),
      ),
      pullError,
      pullList,
    );

    function pullView(s) {
      const total = s.bytes_total;
      const fraction = s.state === "ready" ? 1 : total ? s.bytes_done / total : 0;
      const facts = [`${bytes(s.bytes_done)} of ${total === null ? "?" : bytes(total)}`];
      if (s.state === "downloading") {
        facts.push(`${bytes(s.rate)}/s`);
        if (s.eta_s !== null) facts.push(`${duration(s.eta_s)} left`);
      }
      if (s.resumed_bytes) facts.push(`resumed: ${bytes(s.resumed_bytes)} were already on disk`);
      if (s.up_to_date) facts.push("already up to date: nothing downloaded");
      const cancel = FINISHED.has(s.state)
        ? null
        : h(
            "button",
            {
              class: "danger",
              onclick: async () => {
                try {
                  await api(`/api/models/pulls/${encodeURIComponent(s.id)}`, { method: "DELETE" });
                } catch (e) {
                  toast(e.message, "error");
                }
              },
            },
            "Cancel",
          );
      return h(
        "div",
        { class: "pull", dataset: { pull: s.id, state: s.state } },
        h("div", { class: "spread" }, h("span", {}, h("strong", { class: "mono" }, s.ref), " ", badge(s.state)), cancel),
        progressBar(fraction),
        h("div", { class: "muted small" }, `${Math.round(fraction * 100)} % · ${facts.join(" · ")}`),
        s.error ? h("div", { class: "error small", role: "alert" }, s.error) : null,
      );
    }

    function showPull(s) {
      const view = pullView(s);
      const old = shown.get(s.id);
      if (old) old.replaceWith(view);
      else pullList.prepend(view);
      shown.set(s.id, view);
    }

    async function follow(s) {
      showPull(s);
      if (FINISHED.has(s.state)) return;
      try {
        for await (const { data } of sse(`/api/models/pulls/${encodeURIComponent(s.id)}/events`, { signal: controller.signal })) {
          showPull(data);
          if (FINISHED.has(data.state)) {
            if (data.state === "ready") {
              toast(`Pulled ${data.ref}`, "ok");
              await loadModels();
            }
            return;
          }
        }
      } catch (e) {
        if (controller.signal.aborted) return;
        toast(`Following the pull of ${s.ref} stopped: ${e.message}`, "error");
      }
    }

    async function loadPulls() {
      try {
        const { data } = await api("/api/models/pulls");
        // Oldest first, so the newest ends on top (each is prepended).
        for (const s of [...data].sort((a, b) => a.started_at.localeCompare(b.started_at))) follow(s);
      } catch (e) {
        pullError.textContent = e.message;
      }
    }

    // --- Hub search ----------------------------------------------------------------------------------------
    const searchInput = h("input", { name: "q", type: "search", placeholder: "qwen, llama, org/…", size: 30 });
    const searchResult = h("div", {});
    const search = h(
      "section",
      { class: "card", id: "search" },
      h("h2", {}, "Search the hub"),
      h(
        "form",
        {
          class: "row",
          onsubmit: async (event) => {
            event.preventDefault();
            searchResult.replaceChildren(h("p", { class: "muted" }, "Searching…"));
            try {
              const { data } = await api(`/api/models/search?q=${encodeURIComponent(searchInput.value.trim())}`);
              searchResult.replaceChildren(searchTable(data));
            } catch (e) {
              searchResult.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
            }
          },
        },
        field("Search", searchInput),
        h("button", { type: "submit" }, "Search"),
      ),
      searchResult,
    );

    function searchTable(results) {
      if (!results.length) return h("p", { class: "muted" }, "Nothing on the hub matches.");
      const servable = (r) =>
        r.servable === true
          ? h("span", { class: "badge ok" }, "yes")
          : r.servable === false
            ? h("span", { class: "badge failed", title: (r.architectures || []).join(", ") }, "no")
            : h("span", { class: "muted", title: "the hub does not say which architecture it is" }, "unknown");
      return h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", { class: "num" }, "Downloads"), h("th", { class: "num" }, "Likes"), h("th", {}, "Task"), h("th", {}, "vLLM can serve it"), h("th", {}, ""))),
        h(
          "tbody",
          {},
          results.map((r) =>
            h(
              "tr",
              {},
              h("td", { class: "mono" }, r.id),
              h("td", { class: "num" }, count(r.downloads)),
              h("td", { class: "num" }, count(r.likes)),
              h("td", {}, r.task || "–"),
              h("td", {}, servable(r)),
              h(
                "td",
                {},
                h(
                  "button",
                  {
                    class: "secondary",
                    onclick: () => {
                      pullInput.value = r.id;
                      pullInput.focus();
                    },
                  },
                  "Pull…",
                ),
              ),
            ),
          ),
        ),
      );
    }

    // --- Deploy ---------------------------------------------------------------------------------------------
    const modelChoice = h("select", { name: "model", required: true });
    const nameInput = h("input", { name: "name", placeholder: "default: the model's name", autocomplete: "off" });
    const replicasInput = h("input", { name: "replicas", type: "number", min: "1", value: "1", style: "width: 6rem" });
    const keepAliveInput = h("input", { name: "keep_alive", placeholder: "5m, 1h, -1 (never)", style: "width: 9rem" });
    const maxLenInput = h("input", { name: "max_model_len", type: "number", min: "1", placeholder: "the model's", style: "width: 9rem" });
    const deployAnswer = h("div", { class: "answer" });
    const deploy = h(
      "section",
      { class: "card", id: "deploy" },
      h("h2", {}, "Deploy"),
      h(
        "form",
        {
          class: "row",
          onsubmit: async (event) => {
            event.preventDefault();
            const body = { model: modelChoice.value, replicas: Number(replicasInput.value || 1) };
            if (nameInput.value.trim()) body.name = nameInput.value.trim();
            const keep = keepAliveInput.value.trim();
            if (keep) body.keep_alive = /^-?\d+(\.\d+)?$/.test(keep) ? Number(keep) : keep;
            if (maxLenInput.value) body.engine = { max_model_len: Number(maxLenInput.value) };
            const button = event.target.querySelector("button");
            button.disabled = true;
            deployAnswer.replaceChildren(h("p", { class: "muted" }, "Placing…"));
            try {
              const d = await api("/api/deployments", { method: "POST", body });
              deployAnswer.replaceChildren(
                h("p", { role: "status" }, "Accepted: deployment ", h("strong", { class: "mono" }, d.name), " is ", badge(d.state), d.reason ? ` (${d.reason})` : ""),
              );
              await loadDeployments();
            } catch (e) {
              const code = e instanceof ApiError && e.code ? ` (${e.status} ${e.code})` : e instanceof ApiError ? ` (${e.status})` : "";
              deployAnswer.replaceChildren(h("p", { class: "error refusal", role: "alert" }, `Refused${code}: ${e.message}`));
            } finally {
              button.disabled = false;
            }
          },
        },
        field("Model", modelChoice),
        field("Name", nameInput),
        field("Replicas", replicasInput),
        field("Keep alive", keepAliveInput),
        field("max_model_len", maxLenInput),
        h("button", { type: "submit" }, "Deploy"),
      ),
      deployAnswer,
    );

    function fillModelChoice() {
      const chosen = modelChoice.value;
      const choices = models.filter((m) => m.kind !== "adapter" && m.state === "ready");
      modelChoice.replaceChildren(
        ...(choices.length ? choices.map((m) => h("option", { value: m.name }, m.name)) : [h("option", { value: "" }, "no ready model: pull one first")]),
      );
      if (choices.some((m) => m.name === chosen)) modelChoice.value = chosen;
    }

    // --- Deployments ----------------------------------------------------------------------------------------
    const deploymentsBody = h("tbody");
    const deployments = h(
      "section",
      { class: "card", id: "deployments" },
      h("h2", {}, "Deployments"),
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Name"), h("th", {}, "Model"), h("th", {}, "State"), h("th", {}, "Replicas"), h("th", { class: "num" }, "Memory"), h("th", {}, "Keep alive"), h("th", { class: "num" }, "Requests"), h("th", {}, "")),
        ),
        deploymentsBody,
      ),
    );

    function deploymentRow(d) {
      const keep = d.keep_alive_s === null ? "never put away" : `${duration(d.keep_alive_s)}${d.unloads_in_s !== null ? ` (unloads in ${duration(d.unloads_in_s)})` : ""}`;
      const memory = d.memory ? (d.memory.held_bytes !== null ? `${bytes(d.memory.held_bytes)} held` : `${bytes(d.memory.estimate_bytes)} planned`) : "–";
      const undeploy =
        d.state === "draining"
          ? h("span", { class: "muted" }, "stopping…")
          : h(
              "button",
              {
                class: "danger",
                onclick: async () => {
                  if (!confirm(`Undeploy ${d.name}? Requests in flight finish first; new ones are refused.`)) return;
                  try {
                    await api(`/api/deployments/${namePath(d.name)}`, { method: "DELETE" });
                    toast(`Undeploying ${d.name}`, "ok");
                    await loadDeployments();
                  } catch (e) {
                    toast(e.message, "error");
                  }
                },
              },
              "Undeploy",
            );
      return h(
        "tr",
        { dataset: { deployment: d.name } },
        h("td", { class: "mono" }, d.name, d.declared ? h("span", { class: "muted small" }, " (declared)") : null),
        h("td", { class: "mono" }, d.model),
        h("td", {}, badge(d.state), d.reason ? h("div", { class: "muted small" }, d.reason) : null),
        h("td", {}, d.replicas.map((r) => badge(r.state)).reduce((acc, b) => (acc.length ? [...acc, " ", b] : [b]), [])),
        h("td", { class: "num" }, memory),
        h("td", {}, keep),
        h("td", { class: "num" }, count(d.stats.requests)),
        h("td", {}, undeploy),
      );
    }

    function showDeployments(list) {
      deploymentsBody.replaceChildren(
        ...(list.length
          ? list.map(deploymentRow)
          : [h("tr", {}, h("td", { colspan: "8", class: "muted" }, "No deployments: deploy a model with the form above."))]),
      );
    }

    async function loadDeployments() {
      try {
        showDeployments((await api("/api/deployments")).data);
      } catch (e) {
        toast(e.message, "error");
      }
    }

    root.append(registry, deploy, deployments, pulls, search);
    loadModels();
    loadPulls();
    loadDeployments();
    const unsubscribe = live.subscribe("cluster", (snapshot) => showDeployments(snapshot.deployments));
    return () => {
      controller.abort();
      unsubscribe();
    };
  },
};
