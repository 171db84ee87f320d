// Batches and tasks (any key; each key sees its own): OpenAI batches with their progress, cancel and the
// output and error files as downloads; a form to submit a JSONL file as a batch; the background tasks.
// Refreshed every 2 s while something runs, every 15 s otherwise.

import { api, h, toast } from "../api.js";
import { badge, count, download, field, progressBar, when } from "../widgets.js";

const BATCH_RUNNING = new Set(["validating", "in_progress", "finalizing", "cancelling"]);
const TASK_RUNNING = new Set(["queued", "running"]);
const FETCHED_TASKS = 200;
const SHOWN_TASKS = 25;
const ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"];

export default {
  render(root) {
    let timer = null;
    let stopped = false;

    // --- Submit ---------------------------------------------------------------------------------------------
    const fileInput = h("input", { type: "file", name: "file", accept: ".jsonl,application/jsonl,application/x-ndjson,text/plain", required: true });
    const endpointInput = h("select", { name: "endpoint" }, ENDPOINTS.map((e) => h("option", { value: e }, e)));
    const windowInput = h("select", { name: "completion_window" }, h("option", { value: "24h" }, "24h"), h("option", { value: "1h" }, "1h"));
    const submitAnswer = h("div", {});
    const submit = h(
      "section",
      { class: "card", id: "submit-batch" },
      h("h2", {}, "New batch"),
      h(
        "form",
        {
          class: "row",
          onsubmit: async (event) => {
            event.preventDefault();
            const file = fileInput.files[0];
            if (!file) return;
            const button = event.target.querySelector("button");
            button.disabled = true;
            submitAnswer.replaceChildren(h("p", { class: "muted" }, "Uploading…"));
            try {
              const form = new FormData();
              form.append("purpose", "batch");
              form.append("file", file, file.name);
              const uploaded = await api("/v1/files", { method: "POST", body: form });
              const batch = await api("/v1/batches", {
                method: "POST",
                body: { input_file_id: uploaded.id, endpoint: endpointInput.value, completion_window: windowInput.value },
              });
              submitAnswer.replaceChildren(h("p", { role: "status" }, "Batch ", h("span", { class: "mono" }, batch.id), " is ", badge(batch.status), ` with ${count(batch.request_counts.total)} requests.`));
              event.target.reset();
              await refresh();
            } catch (e) {
              submitAnswer.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
            } finally {
              button.disabled = false;
            }
          },
        },
        field("JSONL file", fileInput, "one request a line: custom_id, method, url, body"),
        field("Endpoint", endpointInput),
        field("Window", windowInput),
        h("button", { type: "submit" }, "Submit"),
      ),
      submitAnswer,
    );

    // --- Batches --------------------------------------------------------------------------------------------
    const batchesBody = h("tbody");
    const batchesError = h("p", { class: "error", role: "alert" });
    const batches = h(
      "section",
      { class: "card", id: "batches" },
      h("div", { class: "spread" }, h("h2", {}, "Batches"), h("button", { class: "secondary", onclick: () => refresh() }, "Refresh")),
      batchesError,
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Batch"), h("th", {}, "State"), h("th", {}, "Endpoint"), h("th", {}, "Progress"), h("th", {}, "Created"), h("th", { class: "num" }, "Tokens"), h("th", {}, "")),
        ),
        batchesBody,
      ),
    );

    function batchRow(b) {
      const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
      const done = c.completed + c.failed;
      const actions = h("td", { class: "row" });
      if (BATCH_RUNNING.has(b.status) && b.status !== "cancelling") {
        actions.append(
          h(
            "button",
            {
              class: "danger",
              onclick: async () => {
                if (!confirm(`Cancel batch ${b.id}? Lines not finished end; the output keeps what finished.`)) return;
                try {
                  await api(`/v1/batches/${encodeURIComponent(b.id)}/cancel`, { method: "POST" });
                  await refresh();
                } catch (e) {
                  toast(e.message, "error");
                }
              },
            },
            "Cancel",
          ),
        );
      }
      for (const [id, what] of [[b.output_file_id, "output"], [b.error_file_id, "errors"]]) {
        if (!id) continue;
        actions.append(
          h(
            "button",
            {
              class: "secondary",
              onclick: () => download(`/v1/files/${encodeURIComponent(id)}/content`, `${b.id}-${what}.jsonl`).catch((e) => toast(e.message, "error")),
            },
            `Download ${what}`,
          ),
        );
      }
      const problems = b.errors && b.errors.data.length ? h("div", { class: "error small" }, b.errors.data.slice(0, 3).map((e) => h("div", {}, e.line ? `line ${e.line}: ` : "", e.message))) : null;
      return h(
        "tr",
        { dataset: { batch: b.id, state: b.status } },
        h("td", { class: "mono small" }, b.id, b.metadata ? h("div", { class: "muted" }, Object.entries(b.metadata).map(([k, v]) => `${k}=${v}`).join(" ")) : null),
        h("td", {}, badge(b.status), problems),
        h("td", { class: "mono small" }, b.endpoint),
        h(
          "td",
          {},
          progressBar(done, c.total),
          h("div", { class: "small counts" }, `${count(done)} of ${count(c.total)}`, c.failed ? h("span", { class: "error" }, ` (${count(c.failed)} failed)`) : null),
        ),
        h("td", {}, when(b.created_at)),
        h("td", { class: "num" }, b.usage ? h("span", { title: `${count(b.usage.input_tokens)} in, ${count(b.usage.output_tokens)} out` }, count(b.usage.total_tokens)) : "–"),
        actions,
      );
    }

    // --- Tasks ----------------------------------------------------------------------------------------------
    const tasksBody = h("tbody");
    const tasksError = h("p", { class: "error", role: "alert" });
    const batchLines = h("input", { type: "checkbox", name: "batch_lines", onchange: () => refresh() });
    const stateFilter = h(
      "select",
      { name: "state", "aria-label": "Task state", onchange: () => refresh() },
      h("option", { value: "" }, "every state"),
      ["queued", "running", "succeeded", "failed", "cancelled", "expired"].map((s) => h("option", { value: s }, s)),
    );
    const tasks = h(
      "section",
      { class: "card", id: "tasks" },
      h("div", { class: "spread" }, h("h2", {}, "Tasks"), h("div", { class: "row" }, stateFilter, h("label", { class: "check" }, batchLines, "Include the lines of batches"))),
      h("p", { class: "muted small" }, `Background requests (POST /api/tasks), newest first: the ${SHOWN_TASKS} newest of the last ${FETCHED_TASKS}.`),
      tasksError,
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Task"), h("th", {}, "Kind"), h("th", {}, "State"), h("th", {}, "Model"), h("th", {}, "Attempts"), h("th", {}, "Batch"), h("th", {}, "Created"), h("th", {}, "Took"), h("th", {}, "")),
        ),
        tasksBody,
      ),
    );

    function taskRow(t) {
      const took = t.started_at && t.finished_at ? `${(t.finished_at - t.started_at).toFixed(1)} s` : t.started_at ? "running" : "–";
      const cancel = TASK_RUNNING.has(t.state)
        ? h(
            "button",
            {
              class: "danger",
              onclick: async () => {
                try {
                  await api(`/api/tasks/${encodeURIComponent(t.id)}/cancel`, { method: "POST" });
                  await refresh();
                } catch (e) {
                  toast(e.message, "error");
                }
              },
            },
            "Cancel",
          )
        : null;
      return h(
        "tr",
        { dataset: { task: t.id, state: t.state } },
        h("td", { class: "mono small" }, t.id, t.custom_id ? h("div", { class: "muted" }, t.custom_id) : null),
        h("td", {}, t.kind),
        h("td", {}, badge(t.state), t.error ? h("div", { class: "error small" }, t.error.message) : null),
        h("td", { class: "mono small" }, t.model),
        h("td", {}, `${t.attempts} of ${t.max_attempts}`),
        h("td", { class: "mono small" }, t.batch_id || "–"),
        h("td", {}, when(t.created_at)),
        h("td", {}, took),
        h("td", {}, cancel),
      );
    }

    async function refresh() {
      let running = false;
      const [b, t] = await Promise.allSettled([api("/v1/batches?limit=50"), api(`/api/tasks?limit=${FETCHED_TASKS}${stateFilter.value ? `&state=${stateFilter.value}` : ""}`)]);
      if (b.status === "fulfilled") {
        batchesError.textContent = "";
        const list = b.value.data;
        running ||= list.some((x) => BATCH_RUNNING.has(x.status));
        batchesBody.replaceChildren(
          ...(list.length
            ? list.map(batchRow)
            : [h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No batches: submit a JSONL file above, or with the openai client's batches.create."))]),
        );
      } else batchesError.textContent = b.reason.message;
      if (t.status === "fulfilled") {
        tasksError.textContent = "";
        running ||= t.value.data.some((x) => TASK_RUNNING.has(x.state));
        const list = t.value.data.filter((x) => batchLines.checked || !x.batch_id).slice(0, SHOWN_TASKS);
        tasksBody.replaceChildren(
          ...(list.length ? list.map(taskRow) : [h("tr", {}, h("td", { colspan: "9", class: "muted" }, "No tasks here: POST /api/tasks queues one (kind chat or completion, and the request)."))]),
        );
      } else tasksError.textContent = t.reason.message;
      schedule(running ? 2000 : 15000);
    }

    function schedule(ms) {
      clearTimeout(timer);
      if (!stopped) timer = setTimeout(refresh, ms);
    }

    root.append(submit, batches, tasks);
    refresh();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  },
};
