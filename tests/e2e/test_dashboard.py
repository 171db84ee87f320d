"""The dashboard's overview, requests and playground pages in a real browser against the real server, and signing
in with auth on: what each page shows comes live from the server, the playground streams and its curl works, and
the key never lands in a URL or the server's log."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from e2e.browser import Console, browser, shoot
from e2e.conftest import Server, make_key, start_server, stop_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["browser"]  # the fixture, used by name

WAIT_MS = 20_000  # a live part: the feed polls every 0.5 s, snapshots every 2 s; the machine may be busy
ANSWER_MS = 60_000  # a streamed answer from the engine on a shared CPU


@pytest.fixture(scope="module")
def shared(browser: Browser, server: Server) -> Iterator[tuple[Page, Console]]:
    """One tab on the shared server (auth off) for the page tests, with its console watched."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    console = Console(page)
    yield page, console
    context.close()


@pytest.fixture
def tab(shared: tuple[Page, Console]) -> tuple[Page, Console]:
    """The shared tab, its console errors so far (the last test's, each checked by it) forgotten."""
    shared[1].errors.clear()
    return shared


def chat_model(server: Server) -> str:
    """The shared server's chat deployment, as /v1/models names it."""
    models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    return next(m["id"] for m in models if m["capabilities"] and m["capabilities"]["chat"])


def test_overview_shows_the_deployment_its_memory_the_devices_and_a_live_timeline(
    server: Server, tab: tuple[Page, Console]
) -> None:
    from playwright.sync_api import expect

    page, console = tab
    name = chat_model(server)
    page.goto(f"{server.url}/ui/#/overview")

    row = page.locator(f'#deployments tr[data-deployment="{name}"]')
    expect(row.locator(".badge")).to_have_text("ready", timeout=WAIT_MS)
    expect(row.locator("td.memory")).to_have_text(re.compile(r"\d+(\.\d)? (MiB|GiB)"))
    # Two snapshots apart, the rate is a number (nothing is generating: 0.0), not "–".
    expect(row.locator(".tokens-rate")).to_have_text(re.compile(r"^\d+\.\d$"), timeout=WAIT_MS)

    cpu = page.locator('#devices .device[data-device="cpu:0"]')
    expect(cpu).to_contain_text("used of")
    # The deployment's part of the CPU's memory bar, labelled by its name, beside "other".
    expect(cpu.locator(f'.bar > span[title^="{name}: "]')).to_have_count(1)
    expect(cpu.locator(".legend")).to_contain_text(name)
    expect(cpu.locator(".legend")).to_contain_text("other")

    # The backlog holds the loads since the server started.
    expect(page.locator(f'#timeline li[data-deployment="{name}"][data-state="ready"]').first).to_be_visible(
        timeout=WAIT_MS
    )
    # Live: a deploy refused at once (no such model) goes through loading to failed, newest on top.
    refused = httpx.post(
        f"{server.url}/api/deployments",
        json={"model": "/nonexistent/dashboard-model", "name": "ui-refused"},
        timeout=30,
    )
    assert refused.status_code == 404, refused.text
    newest = page.locator("#timeline li").first
    expect(newest).to_have_attribute("data-deployment", "ui-refused", timeout=WAIT_MS)
    expect(newest.locator(".badge")).to_have_text("failed")
    expect(newest).to_contain_text("neither a registered model")

    shoot(page, "overview")
    assert console.unexpected() == []


def test_the_playground_streams_an_answer_and_its_curl_works(server: Server, tab: tuple[Page, Console]) -> None:
    from playwright.sync_api import expect

    page, console = tab
    page.goto(f"{server.url}/ui/#/playground")
    model = chat_model(server)
    expect(page.locator("#model")).to_have_value(model, timeout=WAIT_MS)
    # Only chat models: the embedding model is not offered.
    options = page.locator("#model option").all_text_contents()
    assert not any("embed" in o for o in options), options
    page.fill("#system", "You answer in one line.")
    page.fill("#param-max_tokens", "24")
    page.fill("#param-temperature", "0")
    page.fill("#prompt", "Say hello")

    # Count the answer's updates as they land: more than one is a stream, not one late body.
    page.evaluate(
        """() => {
            window.updates = 0;
            new MutationObserver((ms) => {
                for (const m of ms) if (m.target.classList && m.target.classList.contains("content")) window.updates++;
            }).observe(document.getElementById("chat"), { childList: true, subtree: true });
        }"""
    )
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answered:
        page.click("#send")
    response = answered.value
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    figures = page.locator("#figures")
    expect(figures).to_contain_text("completion tokens", timeout=ANSWER_MS)
    expect(figures).to_contain_text("TTFT")
    expect(figures).to_contain_text("tokens/s")
    answer = page.locator(".msg.assistant .content").last
    assert answer.text_content(), "no answer text"
    assert page.evaluate("window.updates") >= 2
    expect(page.locator("#send")).to_be_enabled()

    # The request shown is the conversation as it stands (system, question, answer, the next question typed).
    page.fill("#prompt", "And again")
    curl = page.locator("#code").text_content() or ""
    assert curl.startswith(f"curl -N {server.url}/v1/chat/completions")
    assert '"max_tokens": 24' in curl
    assert "Authorization" not in curl  # auth off: no key to send
    out = subprocess.run(
        ["bash", "-c", curl + " -sS -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("\n200"), out.stdout[-500:]
    assert "data: [DONE]" in out.stdout
    body = json.loads(re.search(r"-d '(.*)'", curl, re.S)[1].replace("'\\''", "'"))  # type: ignore[index]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]

    page.click("#code-python")
    python = page.locator("#code").text_content() or ""
    assert f'base_url="{server.url}/v1"' in python
    assert 'os.environ.get("BITINGLIP_API_KEY", "unused")' in python
    compile(python, "playground.py", "exec")  # it is Python
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.click("#copy")
    expect(page.locator(".toast")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == python
    shoot(page, "playground")

    # A refused request shows the envelope's message, and the message goes back into the box.
    page.fill("#param-temperature", "9")
    page.fill("#prompt", "Too hot")
    page.click("#send")
    expect(page.locator("#chat-error")).to_contain_text("400: `temperature` must be between 0 and 2", timeout=WAIT_MS)
    expect(page.locator("#prompt")).to_have_value("Too hot")
    expect(page.locator(".msg")).to_have_count(2)
    page.fill("#param-temperature", "0")

    # Clear, then stop a long answer while it streams.
    page.click("#clear")
    expect(page.locator(".msg")).to_have_count(0)
    page.fill("#param-max_tokens", "1500")
    page.fill("#prompt", "Go on for a while")
    # Stop as the first words land (a click from here could come after the end of a fast answer).
    page.evaluate(
        """() => new MutationObserver((ms, observer) => {
            const content = document.querySelector(".msg.assistant .content");
            if (content && content.textContent) {
                observer.disconnect();
                document.getElementById("stop").click();
            }
        }).observe(document.getElementById("chat"), { childList: true, subtree: true })"""
    )
    page.click("#send")
    expect(page.locator(".msg.assistant")).to_contain_text("(stopped)", timeout=WAIT_MS)
    expect(page.locator("#figures")).to_contain_text("finish: stopped")
    expect(page.locator("#send")).to_be_enabled()

    assert console.unexpected(400) == []


def test_the_requests_page_shows_requests_live_and_filters_them(
    server: Server, tab: tuple[Page, Console], browser: Browser
) -> None:
    from playwright.sync_api import expect

    page, console = tab
    page.goto(f"{server.url}/ui/#/requests")
    expect(page.locator("table.requests tbody tr").first).to_be_visible(timeout=WAIT_MS)

    # The playground, in another tab, sends a message while this page is open.
    other = browser.new_context(viewport={"width": 1400, "height": 900})
    playground = other.new_page()
    other_console = Console(playground)
    playground.goto(f"{server.url}/ui/#/playground")
    expect(playground.locator("#model")).to_have_value(chat_model(server), timeout=WAIT_MS)
    playground.fill("#param-max_tokens", "8")
    playground.fill("#prompt", "Hello from the playground")
    with playground.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answered:
        playground.click("#send")
    request_id = answered.value.headers["x-request-id"]
    expect(playground.locator("#figures")).to_contain_text("completion tokens", timeout=ANSWER_MS)
    assert other_console.unexpected() == []
    other.close()

    row = page.locator(f'tr[data-request-id="{request_id}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(row).to_contain_text("/v1/chat/completions")
    expect(row.locator(".status")).to_have_text("200")
    expect(row.locator(".status")).to_have_class(re.compile(r"\bs2xx\b"))
    assert page.locator("table.requests tbody tr").first.get_attribute("data-request-id") == request_id  # newest

    # Filters hide and show it.
    page.select_option("#filter-status", "4xx")
    expect(row).to_be_hidden()
    page.select_option("#filter-status", "2xx")
    expect(row).to_be_visible()
    page.fill("#filter-path", "/v1/embeddings")
    expect(row).to_be_hidden()
    page.fill("#filter-path", "chat/compl")
    expect(row).to_be_visible()
    page.select_option("#filter-model", chat_model(server))
    expect(row).to_be_visible()
    for visible in page.locator("table.requests tbody tr:visible").all():
        expect(visible).to_contain_text("chat/compl")
    page.fill("#filter-path", "")
    page.select_option("#filter-model", "")
    page.select_option("#filter-status", "")

    # Paused, a request is held back; resumed, it shows.
    page.click("#pause")
    held = httpx.get(f"{server.url}/v1/models", timeout=10).headers["x-request-id"]
    expect(page.locator("#pause")).to_have_text(re.compile(r"Resume \(\d+ new\)"), timeout=WAIT_MS)
    expect(page.locator(f'tr[data-request-id="{held}"]')).to_have_count(0)
    page.click("#pause")
    expect(page.locator(f'tr[data-request-id="{held}"]')).to_be_visible()

    shoot(page, "requests")
    assert console.unexpected() == []


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[Server, str]]:
    """A small server with auth on (the tiny model, a 512-token context, a quarter GiB of KV cache) and an
    admin key made by the CLI before it started."""
    home = tmp_path_factory.mktemp("dashboard-auth")
    env = os.environ | {"BITINGLIP_HOME": str(home), "BITINGLIP_ENV": "test"}
    admin = make_key(env, "--name", "ops", "--scope", "admin")
    srv = start_server(
        home,
        "",
        BITINGLIP_GATEWAY__AUTH="true",
        BITINGLIP_CLUSTER__DEPLOYMENTS="@json " + json.dumps([{"model": str(tiny_model_dir), "name": "tiny"}]),
        BITINGLIP_CLUSTER__ENGINE='@json {"max_model_len": 512, "max_num_seqs": 2}',
        BITINGLIP_CLUSTER__KV_CACHE_GIB="0.25",
    )
    yield srv, admin
    stop_server(srv)


def test_signing_in_with_auth_on(guarded: tuple[Server, str], browser: Browser) -> None:
    from playwright.sync_api import expect

    server, admin = guarded
    made = httpx.post(
        f"{server.url}/api/keys",
        json={"name": "ui-user", "scope": "inference"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    user = made.json()["key"]

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    console = Console(page)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    nav = page.locator("#nav a")

    page.goto(f"{server.url}/ui/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=WAIT_MS)
    expect(nav).to_have_count(0)
    shoot(page, "sign-in")
    assert console.unexpected() == []  # asking for a key logs nothing

    page.fill("#key", "bl-not-a-key")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("That key was refused", timeout=WAIT_MS)
    expect(nav).to_have_count(0)

    # An inference key: the playground, its own usage, batches and tasks; and it can chat.
    page.fill("#key", user)
    page.click("button[type=submit]")
    expect(nav).to_have_text(["Playground", "Keys and usage", "Batches and tasks"], timeout=WAIT_MS)
    expect(page.locator("#who")).to_contain_text("inference key")
    expect(page.locator("h1")).to_have_text("Playground")
    expect(page.locator("#model")).to_have_value("tiny", timeout=WAIT_MS)
    page.fill("#param-max_tokens", "8")
    page.fill("#prompt", "Hello")
    page.click("#send")
    expect(page.locator("#figures")).to_contain_text("completion tokens", timeout=ANSWER_MS)
    # An admin page asked for by its address is not shown to it.
    page.goto(f"{server.url}/ui/#/requests")
    expect(page.locator("h1")).to_have_text("Playground", timeout=WAIT_MS)

    # Its curl names the key by the environment variable and works with it.
    expect(page.locator("#code")).to_contain_text('-H "Authorization: Bearer $BITINGLIP_API_KEY"', timeout=WAIT_MS)
    curl = page.locator("#code").text_content() or ""
    assert user not in curl
    run = subprocess.run(
        ["bash", "-c", curl + " -sS -o /dev/null -w '%{http_code}'"],
        env=os.environ | {"BITINGLIP_API_KEY": user},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.stdout == "200", (run.stdout, run.stderr)

    # Signing out forgets the key.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=WAIT_MS)
    stored = page.evaluate("() => [sessionStorage.length, localStorage.length]")
    assert stored == [0, 0]
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=WAIT_MS)

    # An admin key, remembered: every page.
    page.fill("#key", admin)
    page.check("#remember")
    page.click("button[type=submit]")
    expect(nav).to_have_text(
        ["Overview", "Models", "Playground", "Keys and usage", "Batches and tasks", "Requests"], timeout=WAIT_MS
    )
    expect(page.locator('#deployments tr[data-deployment="tiny"] .badge')).to_have_text("ready", timeout=WAIT_MS)
    page.get_by_role("link", name="Requests").click()
    expect(page.locator("table.requests tbody tr").first).to_be_visible(timeout=WAIT_MS)
    # The inference key's chat is there, and the key filter names it.
    expect(page.locator("#filter-key option", has_text="ui-user")).to_have_count(1)
    shoot(page, "signed-in-admin")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=WAIT_MS)
    assert page.evaluate("() => [sessionStorage.length, localStorage.length]") == [0, 0]

    assert console.unexpected() == []
    context.close()
    assert urls, "the page requested nothing"
    for key in (user, admin):
        assert not [u for u in urls if key in u]
        assert key not in server.log()


def test_the_playground_shows_a_refusal_for_the_rate_limit_with_its_wait(
    guarded: tuple[Server, str], browser: Browser
) -> None:
    from playwright.sync_api import expect

    server, admin = guarded
    made = httpx.post(
        f"{server.url}/api/keys",
        json={"name": "ui-slow", "scope": "inference", "rpm": 1},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    console = Console(page)
    page.goto(f"{server.url}/ui/")
    page.fill("#key", made.json()["key"])
    page.click("button[type=submit]")
    expect(page.locator("#model")).to_have_value("tiny", timeout=WAIT_MS)
    page.fill("#param-max_tokens", "4")
    page.fill("#prompt", "One")
    page.click("#send")
    expect(page.locator("#figures")).to_contain_text("completion tokens", timeout=ANSWER_MS)

    page.fill("#prompt", "Two")
    page.click("#send")
    refusal = page.locator("#chat-error")
    expect(refusal).to_contain_text("429: ", timeout=WAIT_MS)
    expect(refusal).to_contain_text(re.compile(r"retry (in|after) \d+ s", re.I))  # the message's, or Retry-After
    expect(page.locator("#prompt")).to_have_value("Two")  # back in the box to send again
    shoot(page, "playground-rate-limited")
    assert console.unexpected(429) == []
    context.close()
