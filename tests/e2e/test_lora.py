"""LoRA adapters on the real engine: four random adapters of the tiny model, registered before the server starts,
served by name on the base's one engine, through every API, keys, usage, metrics and batches; a third registered
while it runs makes the idle engine restart for it. An adapter's greedy output is checked against vLLM's offline
`LLM.generate` with the same `LoRARequest`."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bitinglip.cli.tables import _deployments_table
from e2e.conftest import BIN, Server, make_key, start_server, stop_server

BASE = "tiny"
# As many as the engine's adapter slots (`max_loras` 4): the last slot is in use when the base runs beside them.
ADAPTERS = ("tiny-a", "tiny-b", "tiny-c", "tiny-d")
PROMPT = [5, 17, 42, 99, 7, 123, 64, 8]  # token ids: the same prompt reaches the server and the offline engine
TOKENS = 16  # greedy, the end of text ignored


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[Server, str]]:
    home = tmp_path_factory.mktemp("lora")
    env = os.environ | {"BITINGLIP_HOME": str(home), "BITINGLIP_ENV": "test"}

    def cli(*args: str) -> None:
        done = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr

    cli("models", "import", str(tiny_model_dir), "--name", BASE)
    # At once, as several users' CLIs may: each checks its adapter with vLLM's own code (~10 s of import).
    creating = [
        subprocess.Popen(
            [str(BIN), "models", "create-tiny", "--adapter-of", BASE, "--name", name, "--seed", str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, name in enumerate(ADAPTERS, start=1)
    ]
    for proc in creating:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    admin = make_key(env, "--name", "ops", "--scope", "admin")
    srv = start_server(
        home,
        BASE,
        BITINGLIP_GATEWAY__AUTH="true",
        BITINGLIP_GATEWAY__USAGE_FLUSH_S="0.5",
        BITINGLIP_CLUSTER__KV_CACHE_GIB="0.25",
    )
    yield srv, admin
    stop_server(srv)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def key_for(server: Server, admin: str, **spec: Any) -> str:
    r = httpx.post(f"{server.url}/api/keys", json={"name": "t"} | spec, headers=bearer(admin))
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def greedy(c: openai.OpenAI, model: str) -> str:
    """The greedy text of PROMPT: TOKENS tokens, the end of text ignored."""
    done = c.completions.create(
        model=model, prompt=PROMPT, temperature=0, max_tokens=TOKENS, extra_body={"ignore_eos": True}
    )
    assert done.model == model and done.usage is not None and done.usage.completion_tokens == TOKENS
    return done.choices[0].text


def deployment(server: Server, admin: str) -> dict[str, Any]:
    (d,) = [
        d for d in httpx.get(f"{server.url}/api/deployments", headers=bearer(admin)).json()["data"] if d["name"] == BASE
    ]
    return d


def test_adapters_are_listed_with_their_parent_and_its_capabilities(lora: tuple[Server, str]) -> None:
    server, admin = lora
    cards = {m.id: m for m in client(server, admin).models.list().data}
    assert {BASE, *ADAPTERS} <= set(cards)
    for name in ADAPTERS:
        extra = cards[name].model_extra or {}
        assert extra["parent"] == BASE and extra["status"] == "ready"
        assert extra["capabilities"] == (cards[BASE].model_extra or {})["capabilities"]
        assert extra["max_model_len"] == 2048
    assert (cards[BASE].model_extra or {})["parent"] is None


def test_base_and_adapters_give_their_own_outputs_each_the_same_every_time(lora: tuple[Server, str]) -> None:
    server, admin = lora
    c = client(server, admin)
    models = [BASE, *ADAPTERS]
    alone = {m: greedy(c, m) for m in models}
    assert len(set(alone.values())) == len(models), alone
    assert {m: greedy(c, m) for m in models} == alone
    # All at once, so the engine batches the base's rows and every adapter's in the same steps (on the CPU build
    # this needs cluster/vllm/cpu_lora.py: unpatched, the base's rows took the adapter in the last slot).
    with concurrent.futures.ThreadPoolExecutor(len(models) * 3) as pool:
        together = list(pool.map(lambda m: (m, greedy(c, m)), models * 3))
    for model, tokens in together:
        assert tokens == alone[model], model
    d = deployment(server, admin)
    assert d["adapters"] == sorted(ADAPTERS) and len(d["replicas"]) == 1  # one engine: none started for them
    assert d["engine_args"]["enable_lora"] is True and d["engine_args"]["max_lora_rank"] == 8
    assert d["memory"]["lora_bytes"] > 0
    deadline = time.monotonic() + 5
    while set(d["replicas"][0]["adapters"]) != set(ADAPTERS) and time.monotonic() < deadline:
        time.sleep(0.2)  # the supervisor asks the engine once a second
        d = deployment(server, admin)
    assert set(d["replicas"][0]["adapters"]) == set(ADAPTERS)
    assert f"{len(ADAPTERS)}/{len(ADAPTERS)} loaded" in _deployments_table([d])  # what `bitinglip ps` prints of it


def test_an_adapters_output_is_vllms_offline_output(lora: tuple[Server, str], tmp_path: Path) -> None:
    server, admin = lora
    served = greedy(client(server, admin), ADAPTERS[0])
    d = deployment(server, admin)
    (adapter,) = [
        m
        for m in httpx.get(f"{server.url}/api/models", headers=bearer(admin)).json()["data"]
        if m["name"] == ADAPTERS[0]
    ]
    lora_args = {k: v for k, v in d["engine_args"].items() if "lora" in k}
    script = textwrap.dedent(
        f"""
        import json
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        if __name__ == "__main__":
            llm = LLM(model={d["path"]!r}, enforce_eager=True, max_model_len=2048, kv_cache_memory_bytes=1 << 28,
                      distributed_executor_backend="uni", **json.loads({json.dumps(lora_args)!r}))
            params = SamplingParams(temperature=0, max_tokens={TOKENS}, ignore_eos=True)
            request = LoRARequest("{ADAPTERS[0]}", 1, {adapter["path"]!r})
            out = llm.generate({{"prompt_token_ids": {PROMPT!r}}}, params, lora_request=request, use_tqdm=False)
            print("TEXT", json.dumps(out[0].outputs[0].text))
        """
    )
    (tmp_path / "offline.py").write_text(script)
    # vLLM's engine core and its worker in this one process (no process of vLLM's own to start, each importing vLLM
    # again): the same computation, one import instead of three.
    env = os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "offline.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("TEXT ")]
    assert json.loads(line.removeprefix("TEXT ")) == served


def test_every_api_serves_an_adapter_by_name(lora: tuple[Server, str]) -> None:
    server, admin = lora
    c = client(server, admin)
    name = ADAPTERS[1]
    hi: Any = [{"role": "user", "content": "Hi"}]
    chat = c.chat.completions.create(model=name, messages=hi, max_tokens=4)
    assert chat.model == name and chat.usage is not None and chat.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model=name, messages=hi, max_tokens=4, stream=True))
    assert chunks and all(ch.model == name for ch in chunks)
    response = c.responses.create(model=name, input="Hi", max_output_tokens=4)
    assert response.model == name and response.status in ("completed", "incomplete")
    claude = anthropic.Anthropic(base_url=server.url, api_key=admin, max_retries=0, timeout=120)
    message = claude.messages.create(model=name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert message.model == name and message.usage.output_tokens > 0
    tokens = httpx.post(f"{server.url}/tokenize", json={"model": name, "prompt": "Hi there"}, headers=bearer(admin))
    assert tokens.status_code == 200 and tokens.json()["count"] > 0
    refused = httpx.post(f"{server.url}/v1/embeddings", json={"model": name, "input": "Hi"}, headers=bearer(admin))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"


def test_keys_usage_and_metrics_go_by_adapter_name(lora: tuple[Server, str]) -> None:
    server, admin = lora
    only_a = key_for(server, admin, name="only-a", models=[ADAPTERS[0]])
    only_base = key_for(server, admin, name="only-base", models=[BASE])
    assert greedy(client(server, only_a), ADAPTERS[0])
    for key, model in ((only_a, BASE), (only_a, ADAPTERS[1]), (only_base, ADAPTERS[0])):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            greedy(client(server, key), model)
        assert refused.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    assert greedy(client(server, only_base), BASE)
    time.sleep(1.2)  # two usage flushes
    rows = httpx.get(f"{server.url}/api/usage", headers=bearer(only_a)).json()["data"]
    # Counted under the name the request gave: its one answer, and the two refusals (no tokens) apart.
    assert {r["model"]: (r["requests"], r["completion_tokens"]) for r in rows} == {
        ADAPTERS[0]: (1, TOKENS),
        BASE: (1, 0),
        ADAPTERS[1]: (1, 0),
    }
    text = httpx.get(f"{server.url}/metrics", headers=bearer(admin)).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counted = {s.labels.get("model") for s in families["bitinglip_requests"].samples if s.value > 0}
    assert {BASE, *ADAPTERS} <= counted


def test_a_batch_line_names_an_adapter(lora: tuple[Server, str]) -> None:
    server, admin = lora
    c = client(server, admin)
    lines = [
        json.dumps(
            {
                "custom_id": m,
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": m, "prompt": PROMPT, "temperature": 0, "max_tokens": TOKENS},
            }
        )
        for m in (BASE, *ADAPTERS)
    ]
    file = c.files.create(file=("lines.jsonl", "\n".join(lines).encode()), purpose="batch").id
    batch = c.batches.create(input_file_id=file, endpoint="/v1/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while (batch := c.batches.retrieve(batch.id)).status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert batch.status == "completed" and batch.output_file_id is not None
    output = {
        json.loads(x)["custom_id"]: json.loads(x) for x in c.files.content(batch.output_file_id).text.splitlines()
    }
    texts = {m: output[m]["response"]["body"]["choices"][0]["text"] for m in (BASE, *ADAPTERS)}
    assert {output[m]["response"]["body"]["model"] for m in texts} == set(texts)
    assert len(set(texts.values())) == len(texts)


def test_registry_guards_a_base_with_adapters(lora: tuple[Server, str]) -> None:
    server, admin = lora
    removed = httpx.delete(f"{server.url}/api/models/{BASE}", headers=bearer(admin))
    assert removed.status_code == 409 and "tiny-a" in removed.text
    deployed = httpx.post(
        f"{server.url}/api/deployments", json={"model": ADAPTERS[0], "name": "x"}, headers=bearer(admin)
    )
    assert deployed.status_code == 400 and "adapter" in deployed.text


def test_a_new_adapter_of_higher_rank_restarts_the_idle_engine_for_it(lora: tuple[Server, str]) -> None:
    server, admin = lora
    made = server.cli(
        "models", "create-tiny", "--adapter-of", BASE, "--name", "tiny-wide", "--seed", "9", "--rank", "16"
    )
    assert made.returncode == 0, made.stderr
    pids = deployment(server, admin)["replicas"][0]["pids"]
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=admin, max_retries=0, timeout=300)
    wide = greedy(c, "tiny-wide")  # waits for the restart
    d = deployment(server, admin)
    assert d["replicas"][0]["pids"] != pids and d["engine_args"]["max_lora_rank"] == 16
    assert d["adapters"] == sorted([*ADAPTERS, "tiny-wide"])
    assert len({greedy(c, m) for m in (BASE, *ADAPTERS, "tiny-wide")}) == len(ADAPTERS) + 2 and wide
    events = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
    assert any(e.get("event") == "deployment.stopped" and "tiny-wide" in (e.get("reason") or "") for e in events)
