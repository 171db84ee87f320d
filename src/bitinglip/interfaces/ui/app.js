// The dashboard's shell: which pages there are, who may see them, the key prompt, and the hash router
// (#/overview, #/models, ...). Each page is a module in pages/ whose default export is
// { title, admin, render(root) }: `render` fills `root` and may return a function that stops what it started
// (timers, live subscriptions, streams) when the user leaves the page.

import { ApiError, h, session, whoami } from "./api.js";

const PAGES = [
  { id: "overview", title: "Overview", admin: true },
  { id: "models", title: "Models", admin: true },
  { id: "playground", title: "Playground", admin: false },
  { id: "keys", title: "Keys and usage", admin: false },
  { id: "batches", title: "Batches and tasks", admin: false },
  { id: "requests", title: "Requests", admin: true },
];

let cleanup = null;

function allowed(page) {
  return !page.admin || session.scope === "admin";
}

function renderNav(current) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(
    ...PAGES.filter(allowed).map((p) =>
      h("a", { href: `#/${p.id}`, class: p.id === current ? "active" : "", "aria-current": p.id === current ? "page" : null }, p.title),
    ),
  );
  const who = document.getElementById("who");
  who.replaceChildren();
  if (session.authOn) {
    who.append(
      h("span", { class: "muted" }, `${session.scope} key`),
      " ",
      h("button", { class: "link", onclick: signOut }, "Sign out"),
    );
  } else if (session.scope) {
    who.append(h("span", { class: "muted", title: "gateway.auth is off: every caller is admin" }, "auth off"));
  }
}

function signOut() {
  session.forget();
  session.scope = null;
  location.hash = "#/overview";
  start();
}

function askForKey(message) {
  if (cleanup) cleanup();
  cleanup = null;
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  const input = h("input", { type: "password", id: "key", name: "key", autocomplete: "off", placeholder: "bl-…", required: true });
  const remember = h("input", { type: "checkbox", id: "remember" });
  const error = h("p", { class: "error", role: "alert" }, message || "");
  const form = h(
    "form",
    {
      class: "card login",
      onsubmit: async (event) => {
        event.preventDefault();
        session.save(input.value.trim(), remember.checked);
        const scope = await whoami().catch(() => null);
        if (!scope) {
          session.forget();
          error.textContent = "That key was refused: check it, or make one with `bitinglip keys create`.";
          return;
        }
        route();
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, "This server needs an API key. An admin key sees everything; an inference key the playground and its own usage."),
    h("label", { for: "key" }, "API key"),
    input,
    h("label", { class: "check" }, remember, " Remember on this browser"),
    h("button", { type: "submit" }, "Sign in"),
    error,
  );
  document.getElementById("page").replaceChildren(form);
  input.focus();
}

async function route() {
  const id = (location.hash.replace(/^#\/?/, "").split("/")[0] || "overview").split("?")[0];
  let page = PAGES.find((p) => p.id === id) || PAGES[0];
  if (!allowed(page)) page = PAGES.find(allowed);
  renderNav(page.id);
  document.title = `${page.title} · BitingLip`;
  if (cleanup) cleanup();
  cleanup = null;
  const root = document.getElementById("page");
  root.replaceChildren(h("h1", {}, page.title));
  try {
    const module = await import(`./pages/${page.id}.js`);
    const stop = await module.default.render(root);
    cleanup = typeof stop === "function" ? stop : null;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return askForKey("The key was refused; sign in again.");
    root.append(h("p", { class: "error", role: "alert" }, `This page failed: ${e.message}`));
  }
}

async function start() {
  let scope = null;
  try {
    scope = await whoami();
  } catch (e) {
    document.getElementById("page").replaceChildren(h("p", { class: "error", role: "alert" }, `The server did not answer: ${e.message}`));
    return;
  }
  if (!scope) return askForKey(session.key ? "The saved key was refused." : "");
  route();
}

window.addEventListener("hashchange", () => {
  if (session.scope) route();
});
start();
