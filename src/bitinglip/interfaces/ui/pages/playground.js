// Playground (any key): a streamed chat with a served model through `POST /v1/chat/completions`, with a system
// prompt and the sampling parameters, a stop button, the last answer's usage and speed, and the request as it
// stands written as curl and as Python (the `openai` client), the key left as $BITINGLIP_API_KEY.
//
// The conversation lives in this module, so leaving the page and coming back keeps it; a different key (after
// signing out and in) starts a new one.

import { ApiError, api, h, session, sse, toast } from "../api.js";

// The parameters offered: [name, label, input attributes]. Empty means the model's default (not sent).
const NUMBERS = [
  ["temperature", "Temperature", { min: 0, max: 2, step: 0.1 }],
  ["top_p", "Top p", { min: 0, max: 1, step: 0.05 }],
  ["max_tokens", "Max tokens", { min: 1, step: 1 }],
  ["seed", "Seed", { step: 1 }],
  ["presence_penalty", "Presence penalty", { min: -2, max: 2, step: 0.1 }],
  ["frequency_penalty", "Frequency penalty", { min: -2, max: 2, step: 0.1 }],
];
const INTEGERS = new Set(["max_tokens", "seed"]);

const state = {
  key: null, // the key this conversation was had with
  model: "",
  system: "",
  params: { max_tokens: "256" }, // a bound by default: a random-weights model may otherwise write its whole context
  stop: "",
  messages: [], // {role, content} as sent
  last: null, // the last answer's figures
};

export default {
  async render(root) {
    if (state.key !== session.key) {
      Object.assign(state, { key: session.key, messages: [], last: null });
    }
    let controller = null; // the answer being streamed

    const modelSelect = h("select", { id: "model", onchange: () => ((state.model = modelSelect.value), showCode()) });
    const system = h("textarea", {
      id: "system",
      rows: 2,
      placeholder: "You are a helpful assistant.",
      oninput: () => ((state.system = system.value), showCode()),
    });
    system.value = state.system;
    const chat = h("div", { class: "chat", id: "chat", "aria-live": "polite" });
    const input = h("textarea", {
      id: "prompt",
      rows: 3,
      placeholder: "Ask something; Enter sends, Shift+Enter adds a line",
      oninput: () => showCode(),
      onkeydown: (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          send();
        }
      },
    });
    const sendButton = h("button", { id: "send", onclick: () => send() }, "Send");
    const stopButton = h("button", { class: "danger", id: "stop", disabled: true, onclick: () => controller && controller.abort() }, "Stop");
    const clearButton = h("button", { class: "secondary", id: "clear", onclick: clear }, "Clear conversation");
    const error = h("p", { class: "error", id: "chat-error", role: "alert" });
    const figures = h("p", { class: "muted", id: "figures" });

    const paramInputs = new Map();
    const paramFields = NUMBERS.map(([name, label, attrs]) => {
      const field = h("input", {
        type: "number",
        id: `param-${name}`,
        placeholder: "default",
        ...attrs,
        oninput: () => {
          state.params[name] = field.value;
          showCode();
        },
      });
      field.value = state.params[name] || "";
      paramInputs.set(name, field);
      return h("div", { class: "field" }, h("label", { for: `param-${name}` }, label), field);
    });
    const stop = h("textarea", {
      id: "param-stop",
      rows: 2,
      placeholder: "one a line",
      oninput: () => ((state.stop = stop.value), showCode()),
    });
    stop.value = state.stop;

    const code = h("pre", { id: "code", class: "mono" });
    let codeKind = "curl";
    const tabs = ["curl", "python"].map((kind) =>
      h(
        "button",
        {
          class: kind === codeKind ? "" : "secondary",
          id: `code-${kind}`,
          "aria-pressed": String(kind === codeKind),
          onclick: () => {
            codeKind = kind;
            for (const t of tabs) {
              const on = t.id === `code-${kind}`;
              t.className = on ? "" : "secondary";
              t.setAttribute("aria-pressed", String(on));
            }
            showCode();
          },
        },
        kind === "curl" ? "curl" : "Python",
      ),
    );
    const copy = h("button", { class: "secondary", id: "copy", onclick: () => copyText(code.textContent) }, "Copy");

    root.append(
      h(
        "div",
        { class: "playground" },
        h(
          "section",
          { class: "card" },
          h("div", { class: "field" }, h("label", { for: "model" }, "Model"), modelSelect),
          h("div", { class: "field" }, h("label", { for: "system" }, "System prompt"), system),
          chat,
          error,
          h("div", { class: "field" }, h("label", { for: "prompt" }, "Message"), input),
          h("div", { class: "row" }, sendButton, stopButton, clearButton),
          figures,
        ),
        h(
          "aside",
          {},
          h("section", { class: "card" }, h("h2", {}, "Parameters"), h("div", { class: "params" }, paramFields, h("div", { class: "field" }, h("label", { for: "param-stop" }, "Stop sequences"), stop))),
          h("section", { class: "card" }, h("div", { class: "spread" }, h("h2", {}, "This request"), h("div", { class: "row" }, tabs, copy)), code),
        ),
      ),
    );

    // The chat models: `/v1/models` says what each serves once loaded; one that loads on demand is not known
    // yet, so it is offered (its first answer tells).
    let models = [];
    try {
      const list = await api("/v1/models");
      models = list.data.filter((m) => !(m.capabilities && (m.capabilities.embeddings || m.capabilities.chat === false)));
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) throw e;
      error.textContent = `The model list failed: ${e.message}`;
    }
    if (!models.length) {
      modelSelect.disabled = sendButton.disabled = true;
      const what = session.scope === "admin" ? [" Deploy one from ", h("a", { href: "#/models" }, "Models"), "."] : " Ask an admin to deploy one, or to allow your key one.";
      chat.replaceChildren(h("p", { class: "muted", id: "no-models" }, "No chat model is served to this key.", what));
    } else {
      modelSelect.replaceChildren(
        ...models.map((m) => h("option", { value: m.id }, m.status && m.status !== "ready" ? `${m.id} (${m.status.replace("_", " ")})` : m.id)),
      );
      if (!models.some((m) => m.id === state.model)) state.model = (models.find((m) => m.status === "ready") || models[0]).id;
      modelSelect.value = state.model;
      for (const m of state.messages) chat.append(bubble(m.role, m.content));
      if (!state.messages.length) chat.append(hint());
    }
    showFigures();
    showCode();

    function hint() {
      return h("p", { class: "muted empty" }, "Send a message to start; the request it makes is shown on the right as curl and Python.");
    }

    function body(messages) {
      const b = { model: state.model, messages };
      for (const [name] of NUMBERS) {
        const raw = (state.params[name] || "").trim();
        if (raw === "") continue;
        const n = Number(raw);
        b[name] = Number.isFinite(n) ? (INTEGERS.has(name) ? Math.trunc(n) : n) : raw; // the server says what is wrong
      }
      const stops = state.stop.split("\n").filter((s) => s !== "");
      if (stops.length) b.stop = stops;
      b.stream = true;
      b.stream_options = { include_usage: true };
      return b;
    }

    function conversation(next) {
      const messages = state.system.trim() ? [{ role: "system", content: state.system }] : [];
      messages.push(...state.messages);
      if (next) messages.push({ role: "user", content: next });
      return messages;
    }

    async function send() {
      const text = input.value;
      if (!text.trim() || controller || !state.model) return;
      error.textContent = "";
      chat.querySelector(".empty")?.remove();
      const request = body(conversation(text));
      state.messages.push({ role: "user", content: text });
      chat.append(bubble("user", text));
      input.value = "";
      const answer = bubble("assistant", "");
      answer.classList.add("streaming");
      const reasoning = h("div", { class: "reasoning muted", hidden: true });
      answer.prepend(reasoning);
      const content = h("span", { class: "content" });
      answer.append(content);
      chat.append(answer);
      controller = new AbortController();
      sendButton.disabled = true;
      stopButton.disabled = false;
      const started = performance.now();
      let first = null;
      let usage = null;
      let finish = null;
      let stopped = false;
      try {
        for await (const { data } of sse("/v1/chat/completions", { method: "POST", body: request, signal: controller.signal })) {
          if (data && data.error) throw new ApiError(200, data, null); // an error after the stream began
          if (data.usage) usage = data.usage;
          for (const choice of data.choices || []) {
            const delta = choice.delta || {};
            const thought = delta.reasoning_content || delta.reasoning;
            if (thought) {
              reasoning.hidden = false;
              reasoning.textContent += thought;
            }
            if (delta.content) {
              if (first === null) first = performance.now();
              content.textContent += delta.content;
              chat.scrollTop = chat.scrollHeight;
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      } catch (e) {
        if (e.name === "AbortError" && content.textContent) stopped = true;
        else if (e.name === "AbortError") {
          // Stopped before the first token: as if it was never sent, the message back in the box.
          answer.remove();
          state.messages.pop();
          chat.lastElementChild?.remove();
          input.value = text;
        } else {
          if (!content.textContent) {
            // Nothing came back: the message goes back into the box to send again.
            answer.remove();
            state.messages.pop();
            chat.lastElementChild?.remove();
            input.value = text;
          }
          // Retry-After, where the message does not already say when to retry.
          const wait = e instanceof ApiError && e.retryAfter && !/retry/i.test(e.message) ? ` (retry after ${e.retryAfter} s)` : "";
          error.textContent = `${e instanceof ApiError && e.status !== 200 ? `${e.status}: ` : ""}${e.message}${wait}`;
        }
      } finally {
        controller = null;
        sendButton.disabled = false;
        stopButton.disabled = true;
        answer.classList.remove("streaming");
      }
      if (answer.isConnected) {
        if (stopped) answer.append(h("div", { class: "muted" }, "(stopped)"));
        state.messages.push({ role: "assistant", content: content.textContent });
        const ended = performance.now();
        const completion = usage ? usage.completion_tokens : null;
        state.last = {
          usage,
          finish: stopped ? "stopped" : finish,
          ttft: first === null ? null : first - started,
          // The decode rate: the tokens after the first over the time after it.
          rate: completion > 1 && first !== null && ended > first ? (completion - 1) / ((ended - first) / 1000) : null,
        };
      }
      showFigures();
      showCode();
      input.focus();
    }

    function clear() {
      if (controller) controller.abort();
      state.messages = [];
      state.last = null;
      error.textContent = "";
      chat.replaceChildren(hint());
      showFigures();
      showCode();
    }

    function showFigures() {
      const l = state.last;
      if (!l) {
        figures.textContent = "";
        return;
      }
      const parts = [];
      if (l.usage) parts.push(`${l.usage.prompt_tokens} prompt + ${l.usage.completion_tokens} completion tokens`);
      if (l.ttft !== null) parts.push(`TTFT ${l.ttft.toFixed(0)} ms`);
      if (l.rate !== null) parts.push(`${l.rate.toFixed(1)} tokens/s`);
      if (l.finish) parts.push(`finish: ${l.finish}`);
      figures.textContent = parts.length ? `Last answer: ${parts.join(" · ")}` : "";
    }

    function showCode() {
      const draft = input.value.trim() ? input.value : null;
      const b = body(conversation(draft));
      code.textContent = codeKind === "curl" ? curl(b) : python(b);
    }
  },
};

function bubble(role, text) {
  return h("div", { class: `msg ${role}`, dataset: { role } }, text);
}

// curl, for a POSIX shell: the body in single quotes (a quote inside becomes '\''), the key from the environment.
function curl(body) {
  const json = JSON.stringify(body, null, 2).replaceAll("'", "'\\''");
  const lines = [`curl -N ${location.origin}/v1/chat/completions \\`];
  if (session.authOn) lines.push(`  -H "Authorization: Bearer $BITINGLIP_API_KEY" \\`);
  lines.push(`  -H "Content-Type: application/json" \\`, `  -d '${json}'`);
  return lines.join("\n");
}

// Python with the `openai` client. JSON strings and numbers are Python literals as they are; the body holds no
// true/false/null.
function python(body) {
  const { model, messages, stream, stream_options: options, ...params } = body;
  const key = session.authOn ? 'os.environ["BITINGLIP_API_KEY"]' : 'os.environ.get("BITINGLIP_API_KEY", "unused")';
  const args = [`    model=${JSON.stringify(model)},`, `    messages=${pyMessages(messages)},`];
  for (const [name, value] of Object.entries(params)) args.push(`    ${name}=${JSON.stringify(value)},`);
  args.push(`    stream=${stream ? "True" : "False"},`);
  if (options) args.push(`    stream_options={"include_usage": True},`);
  return [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(`${location.origin}/v1`)}, api_key=${key})`,
    "stream = client.chat.completions.create(",
    ...args,
    ")",
    "for chunk in stream:",
    "    if chunk.choices and chunk.choices[0].delta.content:",
    '        print(chunk.choices[0].delta.content, end="", flush=True)',
    "    if chunk.usage:",
    "        print()",
    "        print(chunk.usage)",
  ].join("\n");
}

function pyMessages(messages) {
  if (!messages.length) return "[]";
  const items = messages.map((m) => `        {"role": ${JSON.stringify(m.role)}, "content": ${JSON.stringify(m.content)}},`);
  return ["[", ...items, "    ]"].join("\n");
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text); // only in a secure context (https, or this machine)
  } catch {
    // Plain http from another machine has no clipboard API: the older way, through a selected text field.
    const area = h("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) {
      toast("The browser refused to copy: select the text and copy it by hand.", "error");
      return;
    }
  }
  toast("Copied", "ok");
}
