"""Keys, scopes, model lists, limits, usage and metrics through the gateway's routes (scripted engine, real
SQLite file, auth on)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import Gateway, build_gateway
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bitinglip.core import GatewaySettings, ServerSettings, SettingsError, load_settings
from bitinglip.gateway import KeyCreate, auth_enabled
from bitinglip.gateway.keys import digest
from doubles import ScriptedEngine


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Gateway:
    return build_gateway(ScriptedEngine(), tmp_path, auth=True, db_url=db_url, model_limits={"fake": {"rpm": 1000}})


@pytest.fixture
def client(gateway: Gateway) -> Iterator[TestClient]:
    with TestClient(gateway.app) as c:
        yield c


def make_key(client: TestClient, gateway: Gateway, **spec: Any) -> str:
    made = client.blocking_portal.call(gateway.keys.create, KeyCreate(**{"name": "k"} | spec))
    return made.key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(**extra: object) -> dict[str, object]:
    return {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **extra}


def test_missing_wrong_revoked_and_expired_keys_are_401_in_the_openai_envelope(
    client: TestClient, gateway: Gateway
) -> None:
    key = make_key(client, gateway)
    assert client.post("/v1/chat/completions", json=chat(), headers=bearer(key)).status_code == 200
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for headers, code in (
        ({}, "missing_api_key"),
        (bearer("sk-not-ours"), "invalid_api_key"),
        (bearer(wrong), "invalid_api_key"),
        ({"Authorization": f"Basic {key}"}, "missing_api_key"),
    ):
        r = client.post("/v1/chat/completions", json=chat(), headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == code and r.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"x-api-key": key}).status_code == 200

    admin = make_key(client, gateway, name="root", scope="admin")
    revoked = client.delete(f"/api/keys/{key.split('_')[1]}", headers=bearer(admin))
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    r = client.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"  # at once, despite the cache

    soon = make_key(client, gateway, expires_at=time.time() + 0.3)
    assert client.get("/v1/models", headers=bearer(soon)).status_code == 200
    time.sleep(0.4)
    r = client.get("/v1/models", headers=bearer(soon))
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"


def test_only_the_hash_is_stored(client: TestClient, gateway: Gateway, tmp_path: Path) -> None:
    key = make_key(client, gateway)
    stored = client.blocking_portal.call(gateway.keys.get, key.split("_")[1])
    assert stored is not None and stored.hash == digest(key)
    client.blocking_portal.call(gateway.usage.flush)
    assert key.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))


def test_scopes_inference_keys_stay_out_of_the_admin_api(client: TestClient, gateway: Gateway) -> None:
    user, admin = make_key(client, gateway), make_key(client, gateway, name="root", scope="admin")
    r = client.get("/api/keys", headers=bearer(user))
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert client.get("/metrics", headers=bearer(user)).status_code == 403
    assert client.get("/metrics", headers=bearer(admin)).status_code == 200
    listed = client.get("/api/keys", headers=bearer(admin)).json()["data"]
    assert {k["name"] for k in listed} == {"k", "root"} and all("hash" not in k and "key" not in k for k in listed)
    made = client.post("/api/keys", json={"name": "via-api", "rpm": 5}, headers=bearer(admin))
    assert made.status_code == 201 and made.json()["key"].startswith("bl_")
    assert client.get("/v1/models", headers=bearer(made.json()["key"])).status_code == 200
    # Public by default: health and the docs; metrics is not.
    assert client.get("/health").status_code == 200
    assert client.get("/schema/openapi.json").status_code == 200
    assert client.get("/metrics").status_code == 401


def test_a_key_limited_to_models_sees_and_uses_only_those(client: TestClient, gateway: Gateway) -> None:
    other = make_key(client, gateway, models=["other"])
    r = client.post("/v1/chat/completions", json=chat(), headers=bearer(other))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert r.json()["error"]["param"] == "model"
    assert client.get("/v1/models", headers=bearer(other)).json()["data"] == []
    assert client.get("/v1/models/fake", headers=bearer(other)).status_code == 404
    mine = make_key(client, gateway, models=["fake"])
    assert [m["id"] for m in client.get("/v1/models", headers=bearer(mine)).json()["data"]] == ["fake"]


def test_where_a_model_lives_on_disk_is_shown_to_admin_keys_only(client: TestClient, gateway: Gateway) -> None:
    user, admin = make_key(client, gateway), make_key(client, gateway, name="root", scope="admin")
    assert [m["root"] for m in client.get("/v1/models", headers=bearer(user)).json()["data"]] == [None]
    assert client.get("/v1/models/fake", headers=bearer(user)).json()["root"] is None
    assert [m["root"] for m in client.get("/v1/models", headers=bearer(admin)).json()["data"]] == ["/models/fake"]


def test_limits_refuse_with_retry_after_and_openai_headers_on_every_response(
    client: TestClient, gateway: Gateway
) -> None:
    key = make_key(client, gateway, rpm=2, tpm=10_000)
    ok = client.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    used = ok.json()["usage"]["total_tokens"]
    assert ok.headers["x-ratelimit-remaining-tokens"] == str(10_000 - used)  # settled on the real count
    streamed = client.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(key))
    assert streamed.status_code == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "0"
    refused = client.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 59
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert client.get("/v1/models", headers=bearer(key)).headers["x-ratelimit-limit-tokens"] == "10000"


def test_tokens_per_minute_count_prompt_plus_max_tokens_until_the_request_ends(
    client: TestClient, gateway: Gateway
) -> None:
    key = make_key(client, gateway, tpm=40)
    # The scripted prompt is ~20 tokens; with max_tokens 30 the reservation is over the limit by itself.
    r = client.post("/v1/chat/completions", json=chat(max_tokens=30), headers=bearer(key))
    assert r.status_code == 429 and r.json()["error"]["code"] == "request_too_large"
    ok = client.post("/v1/chat/completions", json=chat(max_tokens=3), headers=bearer(key))
    assert ok.status_code == 200
    left = int(ok.headers["x-ratelimit-remaining-tokens"])
    assert left == 40 - ok.json()["usage"]["total_tokens"]


def test_usage_is_counted_per_key_and_model_and_an_inference_key_sees_its_own(
    client: TestClient, gateway: Gateway
) -> None:
    a, b = make_key(client, gateway, name="a"), make_key(client, gateway, name="b")
    admin = make_key(client, gateway, name="root", scope="admin")
    bodies = [client.post("/v1/chat/completions", json=chat(), headers=bearer(a)).json() for _ in range(2)]
    client.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(b))
    client.post("/v1/chat/completions", json=chat(temperature=-1), headers=bearer(b))  # a 400: an error
    mine = client.get("/api/usage", headers=bearer(a)).json()
    assert [(r["key_id"], r["requests"]) for r in mine["data"]] == [(a.split("_")[1], 2)]
    assert mine["total"]["prompt_tokens"] == sum(x["usage"]["prompt_tokens"] for x in bodies)
    assert mine["total"]["completion_tokens"] == sum(x["usage"]["completion_tokens"] for x in bodies)
    everyone = client.get("/api/usage", headers=bearer(admin)).json()
    by_key = {r["key_id"]: r for r in everyone["data"]}
    assert by_key[b.split("_")[1]]["requests"] == 2 and by_key[b.split("_")[1]]["errors"] == 1
    assert by_key[b.split("_")[1]]["completion_tokens"] == 3
    assert client.get("/api/usage?start=yesterday", headers=bearer(admin)).status_code == 400


def test_metrics_parse_with_prometheus_own_parser(client: TestClient, gateway: Gateway) -> None:
    admin = make_key(client, gateway, scope="admin")
    client.post("/v1/chat/completions", json=chat(), headers=bearer(admin))
    client.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(admin))
    client.post("/v1/chat/completions", json=chat(), headers=bearer("bl_000000000000_nope-nope-nope-nope-nope"))
    text = client.get("/metrics", headers=bearer(admin)).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(name.startswith("bitinglip_") for name in families)
    requests = {
        (s.labels["route"], s.labels["status"], s.labels["model"]): s.value
        for s in families["bitinglip_requests"].samples
        if s.name == "bitinglip_requests_total"
    }
    assert requests[("/v1/chat/completions", "200", "fake")] == 2
    assert requests[("/v1/chat/completions", "401", "")] == 1
    completion = [s for s in families["bitinglip_completion_tokens"].samples if s.name.endswith("_total")]
    assert completion[0].value == 6
    ttft = [s for s in families["bitinglip_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
    assert ttft[0].value == 1  # the streamed one: a whole response has no first-token time


@pytest.mark.parametrize(
    ("host", "auth", "allow", "expected"),
    [
        ("127.0.0.1", "auto", False, False),
        ("::1", "auto", False, False),
        ("localhost", "auto", False, False),
        ("0.0.0.0", "auto", False, True),
        ("10.1.2.3", "auto", False, True),
        ("127.0.0.1", True, False, True),
        ("0.0.0.0", False, True, False),
        ("0.0.0.0", False, False, SettingsError),
        ("my-host.lan", False, False, SettingsError),
    ],
)
def test_auth_is_on_off_loopback_and_public_without_it_needs_saying_so(
    host: str, auth: Any, allow: bool, expected: object
) -> None:
    server = ServerSettings(host=host)
    gateway = GatewaySettings(auth=auth, allow_public_without_auth=allow)
    if expected is SettingsError:
        with pytest.raises(SettingsError) as refused:
            auth_enabled(server, gateway)
        assert refused.value.param == "gateway.auth" and "allow_public_without_auth" in refused.value.message
    else:
        assert auth_enabled(server, gateway) is expected


def test_settings_take_auth_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITINGLIP_GATEWAY__AUTH", "true")
    monkeypatch.setenv("BITINGLIP_GATEWAY__MODEL_LIMITS__TINY__RPM", "60")
    settings = load_settings(directory=None).settings.gateway
    assert settings.auth is True and settings.model_limits["tiny"].rpm == 60
    monkeypatch.setenv("BITINGLIP_GATEWAY__PUBLIC", '["health", "nope"]')
    with pytest.raises(SettingsError):
        load_settings(directory=None)


def test_model_limits_hold_over_every_key_and_admin_keys_obey_theirs(tmp_path: Path) -> None:
    gateway = build_gateway(ScriptedEngine(), tmp_path, auth=True, model_limits={"fake": {"rpm": 3}})
    with TestClient(gateway.app) as client:
        a, b = make_key(client, gateway, name="a"), make_key(client, gateway, name="b")
        admin = make_key(client, gateway, name="root", scope="admin", rpm=1)
        assert client.post("/v1/chat/completions", json=chat(), headers=bearer(admin)).status_code == 200
        limited = client.post("/v1/chat/completions", json=chat(), headers=bearer(admin))
        assert limited.status_code == 429 and "key" in limited.json()["error"]["message"]  # no master key
        assert client.post("/v1/chat/completions", json=chat(), headers=bearer(a)).status_code == 200
        assert client.post("/v1/chat/completions", json=chat(), headers=bearer(b)).status_code == 200
        over = client.post("/v1/chat/completions", json=chat(), headers=bearer(b))
        assert over.status_code == 429 and "model fake" in over.json()["error"]["message"]
        assert int(over.headers["retry-after"]) >= 59
