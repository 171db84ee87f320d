"""The dashboard's plumbing over the scripted engine: `/` sends browsers to `/ui`, whose files need no key, and
`GET /api/events` (admin only) streams the cluster, the deployments' timeline and the recent access lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway_support import build_gateway
from litestar.testing import TestClient

from bitinglip.core import Feed
from bitinglip.gateway import KeyCreate
from doubles import ScriptedEngine

ASK = [{"role": "user", "content": "hi"}]


def test_a_feed_gives_what_is_new_and_forgets_the_oldest() -> None:
    feed: Feed[int] = Feed(3)
    assert feed.since(0) == []
    for n in range(5):
        feed.push(n)
    assert feed.since(0) == [2, 3, 4]  # only the last three are kept
    assert feed.since(4) == [4]
    assert feed.since(feed.seq) == []


def read_events(client: TestClient[Any], wanted: set[str], **headers: str) -> dict[str, Any]:
    got: dict[str, Any] = {}
    with client.stream("GET", "/api/events", params={"once": "true"}, headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name is not None:
                got.setdefault(name, json.loads(line.split(":", 1)[1]))
    assert wanted <= got.keys()
    return got


def test_browsers_go_to_the_dashboard_whose_files_need_no_key(tmp_path: Path) -> None:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path, auth=True).app) as c:
        home = c.get("/", headers={"accept": "text/html,application/xhtml+xml"}, follow_redirects=False)
        assert home.status_code in (302, 307) and home.headers["location"] == "/ui"
        assert c.get("/").json()["ui"] == "/ui"  # other clients still get JSON
        page = c.get("/ui")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert c.get("/api/events").status_code == 401


def test_the_event_stream_has_the_cluster_and_the_requests_so_far(tmp_path: Path) -> None:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path).app) as c:
        answer = c.post("/v1/chat/completions", json={"model": "fake", "messages": ASK, "max_tokens": 2})
        assert answer.status_code == 200, answer.text
        c.get("/v1/models/nope")
        events = read_events(c, {"cluster", "timeline", "requests"})
        assert {"devices", "deployments"} <= events["cluster"].keys()
        assert any(d["kind"] == "cpu" for d in events["cluster"]["devices"])
        assert events["timeline"] == []  # no deployment declared, none changed
        lines = events["requests"]
        chat = next(line for line in lines if line["path"] == "/v1/chat/completions")
        assert chat["status"] == 200 and chat["model"] == "fake" and chat["completion_tokens"] >= 1
        assert chat["request_id"] == answer.headers["x-request-id"]
        assert any(line["status"] == 404 for line in lines)


def test_me_says_who_a_key_is_and_never_answers_401(tmp_path: Path) -> None:
    gateway = build_gateway(ScriptedEngine(), tmp_path, auth=True)
    with TestClient(gateway.app) as c:
        nobody = c.get("/api/me")
        assert nobody.status_code == 200 and nobody.json() == {
            "auth": True,
            "scope": None,
            "key": None,
            "reason": nobody.json()["reason"],
        }
        assert "no API key" in nobody.json()["reason"]
        assert c.get("/api/me", headers={"authorization": "Bearer bl_nope_x"}).json()["scope"] is None
        made = c.blocking_portal.call(gateway.keys.create, KeyCreate(name="app", scope="inference", rpm=5))
        me = c.get("/api/me", headers={"authorization": f"Bearer {made.key}"}).json()
        assert me["scope"] == "inference" and me["key"]["name"] == "app"
        assert me["key"]["headroom"] == {"requests_left": 5, "tokens_left": None, "reset_s": 0.0}
        assert made.key not in str(me)
    with TestClient(build_gateway(ScriptedEngine(), tmp_path / "open").app) as c:
        assert c.get("/api/me").json()["scope"] == "admin"
