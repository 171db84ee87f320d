"""The dashboard's Models, Keys and usage, and Batches and tasks pages in a real browser, against the session's
shared server (auth off) and, for keys that must really be checked, a server of this module with auth on and no
engine (it starts in seconds)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from e2e.browser import Console, browser, shoot
from e2e.conftest import MODEL, Hub, Server, make_key, start_server, stop_server

__all__ = ["browser"]  # the fixture, used by name

PULLED = "org/ui-pull"  # a second copy of the tiny model on the hub stand-in, pulled through the page
WAIT_MS = 60_000
KEY = re.compile(r"^\s*bl_[0-9a-f]{12}_[A-Za-z0-9_-]{20,100}\s*$")


def open_page(browser: Browser, server: Server, page_id: str, key: str | None = None) -> tuple[Page, Console]:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    console = Console(page)
    page.on("dialog", lambda dialog: dialog.accept())  # every confirm() says yes
    if key is not None:  # signed in as the key prompt would leave it (this tab's sessionStorage)
        page.add_init_script(f"sessionStorage.setItem('bitinglip.key', {json.dumps(key)})")
    page.goto(f"{server.url}/ui/#/{page_id}")
    return page, console


# --- Models ------------------------------------------------------------------------------------------------


def test_models_registry_pull_deploy_refusal_and_delete(
    browser: Browser, server: Server, hub: Hub, tiny_model_dir: Path
) -> None:
    hub.stub.add_repo_from_dir(PULLED, tiny_model_dir, downloads=1234)
    page, console = open_page(browser, server, "models")
    registry = page.locator("#registry")
    expect(registry.locator(f"tr[data-model='{MODEL}']")).to_contain_text("LlamaForCausalLM", timeout=WAIT_MS)
    expect(registry.locator(f"tr[data-model='{MODEL}']")).to_contain_text("ready")

    # Hub search: the stand-in answers with the repo and whether vLLM can serve it.
    page.locator("#search input[name=q]").fill("ui-pull")
    page.locator("#search button[type=submit]").click()
    found = page.locator("#search tbody tr", has_text=PULLED)
    expect(found).to_contain_text("1,234", timeout=WAIT_MS)
    expect(found).to_contain_text("yes")

    # Pull it, slowed down so the bar is seen moving, then at 100 % and in the registry.
    hub.stub.throttle_bytes_per_s = 600_000  # the tiny model's ~2.9 MB in about 5 s
    try:
        found.get_by_role("button", name="Pull…").click()
        page.locator("#pulls button[type=submit]").click()
        pull = page.locator("#pulls .pull", has_text=PULLED)
        seen: list[tuple[str, int]] = []  # (state, percent) as the page showed them, read together
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not seen or seen[-1][0] not in ("ready", "failed", "cancelled")):
            state, percent = pull.evaluate(
                "el => [el.dataset.state, +el.querySelector('[role=progressbar]').getAttribute('aria-valuenow')]",
                timeout=WAIT_MS,
            )
            seen.append((state, percent))
            page.wait_for_timeout(100)
    finally:
        hub.stub.throttle_bytes_per_s = None
    assert seen[-1] == ("ready", 100), seen
    assert any(state == "downloading" and percent < 100 for state, percent in seen), seen
    percents = [percent for _, percent in seen]
    assert percents == sorted(percents), seen
    expect(pull.locator(".badge")).to_have_text("ready")
    expect(pull).to_contain_text("100 %")
    expect(registry.locator(f"tr[data-model='{PULLED}']")).to_contain_text("ready", timeout=WAIT_MS)

    # A deployment that cannot fit: the placement's refusal, as it is, at once.
    page.locator("#deploy select[name=model]").select_option(MODEL)
    page.locator("#deploy input[name=name]").fill("too-many")
    page.locator("#deploy input[name=replicas]").fill("1000")
    page.locator("#deploy button[type=submit]").click()
    refusal = page.locator("#deploy .refusal")
    expect(refusal).to_contain_text("409 insufficient_memory", timeout=WAIT_MS)
    expect(refusal).to_contain_text("not enough memory for deployment too-many")
    expect(page.locator(f"#deployments tr[data-deployment='{MODEL}']")).to_contain_text("ready", timeout=WAIT_MS)
    expect(page.locator("#deployments tr[data-deployment='too-many']")).to_have_count(0)

    # The served model is refused with the server's reason and a way to force it (not taken: others use it).
    page.locator(f"#registry tr[data-model='{MODEL}']").get_by_role("button", name="Delete").click()
    served = page.locator(f"#registry tr[data-model='{MODEL}'] .refusal")
    expect(served).to_contain_text("served", timeout=WAIT_MS)
    expect(served.get_by_role("button", name="Delete anyway")).to_be_visible()

    # The pulled one goes.
    page.locator(f"#registry tr[data-model='{PULLED}']").get_by_role("button", name="Delete").click()
    expect(page.locator(f"#registry tr[data-model='{PULLED}']")).to_have_count(0, timeout=WAIT_MS)
    shoot(page, "models")
    assert console.unexpected(409) == []
    page.close()


# --- Keys and usage ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """Auth on, no engine: keys made on the page are really checked."""
    home = tmp_path_factory.mktemp("dashboard-keys")
    admin = make_key(
        os.environ | {"BITINGLIP_HOME": str(home), "BITINGLIP_ENV": "test"}, "--name", "ops", "--scope", "admin"
    )
    srv = start_server(home, "", BITINGLIP_GATEWAY__AUTH="true")
    yield srv, admin
    stop_server(srv)


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_a_key_made_on_the_page_works_then_is_revoked(browser: Browser, guarded: tuple[Server, str]) -> None:
    server, admin = guarded
    page, console = open_page(browser, server, "keys", key=admin)
    form = page.locator("#create-key form")
    form.locator("input[name=name]").fill("from-the-page")
    form.locator("input[name=rpm]").fill("60")
    form.locator("input[name=tpm]").fill("5000")
    form.get_by_role("button", name="Create key").click()
    secret = page.locator("#create-key .secret")
    expect(secret).to_have_text(KEY, timeout=WAIT_MS)
    key = secret.inner_text().strip()
    expect(page.locator("#create-key .warn")).to_contain_text("shown this once")

    # The key works with the openai client (auth is on here: a wrong key would be a 401).
    assert client(server, key).models.list().object == "list"
    with pytest.raises(openai.AuthenticationError):
        client(server, key[:-2] + "xx").models.list()

    row = page.locator("#keys tr[data-name='from-the-page']")
    expect(row).to_contain_text("active", timeout=WAIT_MS)
    expect(row).to_contain_text("60 req/min")
    expect(row.locator(".headroom")).to_contain_text("left this minute")
    shoot(page, "keys")

    # The key's own view: its limits and headroom, no key list, no create form.
    own, own_console = open_page(browser, server, "keys", key=key)
    expect(own.locator("#own-key")).to_contain_text("from-the-page", timeout=WAIT_MS)
    expect(own.locator("#own-key .headroom")).to_contain_text("of 60 requests")
    expect(own.locator("#create-key")).to_have_count(0)
    shoot(own, "keys-inference")
    assert own_console.unexpected() == []
    own.close()

    # Revoke: gone from the list of live keys, shown as revoked with them, refused by the server.
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_have_count(0, timeout=WAIT_MS)
    page.locator("input[name=include_revoked]").check()
    expect(page.locator("#keys tr[data-name='from-the-page'] .badge")).to_have_text("revoked", timeout=WAIT_MS)
    with pytest.raises(openai.AuthenticationError):
        client(server, key).models.list()
    assert console.unexpected() == []
    page.close()


def test_the_usage_chart_and_table_show_the_models_tokens(browser: Browser, server: Server) -> None:
    reply = server.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    page, console = open_page(browser, server, "keys")
    today = datetime.now(UTC).date().isoformat()
    row = page.locator(f"#usage-table tbody tr[data-model='{MODEL}'][data-day='{today}']")
    expect(row).to_contain_text("no key (auth off)", timeout=WAIT_MS)  # the report writes what is counted first
    cells = row.locator("td").all_inner_texts()
    assert int(cells[3].replace(",", "")) >= 1 and int(cells[5].replace(",", "")) >= 6
    bar = page.locator(f"#usage svg.chart g[data-day='{today}']")
    assert int(bar.get_attribute("data-tokens") or "0") >= reply.usage.total_tokens
    expect(bar.locator("rect")).to_have_count(2)  # prompt and completion
    page.locator("#usage select[name=split]").select_option("model")
    expect(page.locator("#usage .legend")).to_contain_text(MODEL)
    page.locator("#usage select[name=range]").select_option("30")
    expect(page.locator("#usage svg.chart g[data-day]")).to_have_count(30)
    shoot(page, "usage")
    assert console.unexpected() == []
    page.close()


# --- Batches and tasks -------------------------------------------------------------------------------------


def line(custom_id: str, max_tokens: int) -> str:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Say {custom_id}."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def test_batches_progress_download_and_cancel(browser: Browser, server: Server) -> None:
    page, console = open_page(browser, server, "batches")
    page.evaluate("window.notReloaded = true")
    # 96,000 tokens: several seconds even when the engine has the machine to itself, so the page reads it part done.
    lines = [line(f"ui{i}", 400) for i in range(240)]
    page.locator("#submit-batch input[type=file]").set_input_files(
        {"name": "ui.jsonl", "mimeType": "application/jsonl", "buffer": "\n".join(lines).encode()}
    )
    page.locator("#submit-batch button[type=submit]").click()
    answer = page.locator("#submit-batch [role=status]")
    expect(answer).to_contain_text("with 240 requests", timeout=WAIT_MS)
    batch_id = answer.locator(".mono").inner_text()
    row = page.locator(f"#batches tr[data-batch='{batch_id}']")
    bar = row.get_by_role("progressbar")

    # The bar and the counts follow the batch to its end, without a reload.
    seen: list[int] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        value = bar.get_attribute("aria-valuenow", timeout=WAIT_MS)
        seen.append(int(value or "0"))
        if row.get_attribute("data-state", timeout=WAIT_MS) == "completed":
            break
        page.wait_for_timeout(200)
    assert row.get_attribute("data-state") == "completed", seen
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(row.locator(".counts")).to_have_text("240 of 240")
    assert seen[0] < 100 and seen == sorted(seen), seen
    assert page.evaluate("window.notReloaded") is True

    # Its output, downloaded through the page (a Blob: no URL carries the key).
    with page.expect_download(timeout=WAIT_MS) as info:
        row.get_by_role("button", name="Download output").click()
    download = info.value
    assert download.suggested_filename == f"{batch_id}-output.jsonl"
    assert not download.url.startswith("http")  # blob:, not the server's URL
    output = [json.loads(x) for x in Path(download.path()).read_text().splitlines()]
    assert [o["custom_id"] for o in output] == [f"ui{i}" for i in range(240)]
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert output[0]["response"]["body"]["usage"]["completion_tokens"] == 400
    # Its lines are tasks too, listed when asked for.
    expect(page.locator("#tasks td", has_text=batch_id)).to_have_count(0)
    page.locator("#tasks input[name=batch_lines]").check()
    expect(page.locator("#tasks td", has_text=batch_id).first).to_be_visible(timeout=WAIT_MS)
    page.locator("#tasks input[name=batch_lines]").uncheck()

    # Another batch, long enough to be cancelled on the page while it runs.
    api = server.openai()
    big = api.files.create(
        file=("big.jsonl", "\n".join(line(f"big{i}", 256) for i in range(300)).encode()), purpose="batch"
    )
    other = api.batches.create(input_file_id=big.id, endpoint="/v1/chat/completions", completion_window="24h")
    page.locator("#batches").get_by_role("button", name="Refresh").click()
    other_row = page.locator(f"#batches tr[data-batch='{other.id}']")
    other_row.get_by_role("button", name="Cancel").click(timeout=WAIT_MS)
    expect(other_row).to_have_attribute("data-state", "cancelled", timeout=WAIT_MS)
    assert api.batches.retrieve(other.id).status == "cancelled"
    shoot(page, "batches")
    assert console.unexpected() == []
    page.close()


def test_a_task_is_listed_and_cancelled(browser: Browser, server: Server) -> None:
    """Enough long tasks (120 of 2,000 tokens each: 240,000 tokens, half a minute and more of the engine) that the
    last is still queued or running when the page cancels it; the others are cancelled after, as the engine is
    the session's."""
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Go on."}],
        "max_tokens": 2000,
        "ignore_eos": True,
    }
    ids = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(120):
                r = http.post("/api/tasks", json={"kind": "chat", "request": request})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
        page, console = open_page(browser, server, "batches")
        row = page.locator(f"#tasks tr[data-task='{ids[-1]}']")
        expect(row).to_have_attribute("data-state", re.compile("queued|running"), timeout=WAIT_MS)
        row.get_by_role("button", name="Cancel").click()
        expect(row).to_have_attribute("data-state", "cancelled", timeout=WAIT_MS)
        assert httpx.get(f"{server.url}/api/tasks/{ids[-1]}", timeout=30).json()["state"] == "cancelled"
        shoot(page, "tasks")
        assert console.unexpected() == []
        page.close()
    finally:
        for task_id in ids[:-1]:
            httpx.post(f"{server.url}/api/tasks/{task_id}/cancel", timeout=30)
