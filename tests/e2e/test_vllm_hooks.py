"""On the pinned vLLM every hook into its private state takes, on every engine: a generating one and a pooling one.

An upgrade of vLLM that renames what a hook uses fails here (and its server logs `vllm.hook_not_taken`)."""

from __future__ import annotations

import httpx

from bitinglip.cluster.vllm.hooks import HOOKS
from e2e.conftest import EMBEDDING_MODEL, MODEL, Server


def test_every_vllm_hook_took_on_every_engine_and_the_status_says_so(server: Server) -> None:
    deployments = {d["name"]: d for d in httpx.get(f"{server.url}/api/deployments", timeout=10).json()["data"]}
    took = {hook.name: True for hook in HOOKS}
    for name in (MODEL, EMBEDDING_MODEL):
        deployment = deployments[name]
        assert deployment["state"] == "ready", name
        assert deployment["hooks"] == took, name
        assert all(replica["pids"] for replica in deployment["replicas"])  # the pids hook, put to use
    assert "vllm.hook_not_taken" not in server.log()
