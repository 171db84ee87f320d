"""What `/api/deployments` shows of a deployment: a snapshot built from its live state, never stored."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from bitinglip.cluster.deployment import Deployment, DeploymentState
from bitinglip.cluster.placement import device_count
from bitinglip.cluster.protocol import ServedModel
from bitinglip.cluster.replica import ReplicaStatus


class DeploymentMemory(msgspec.Struct, kw_only=True):
    estimate_bytes: int  # weights + KV cache + overhead, over all its devices
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int  # per device
    lora_bytes: int  # LoRA adapters' slots (and, on the CPU, the adapters it keeps loaded)
    held_bytes: int | None  # measured: the resident memory of its engine processes (GPU: what NVML says they use)


class DeploymentStats(msgspec.Struct, kw_only=True):
    in_flight: int  # leased by requests now (running + queued)
    background: int  # of which for tasks and batch lines
    queued_tokens: int  # prompt tokens admitted that have not had their first engine step
    unfinished: int  # requests inside the engines now (a request with n > 1 counts n)
    running: int  # as of the engines' last step
    waiting: int
    kv_cache_usage: float
    tokens_generated: int
    requests: int


class DeploymentLimits(msgspec.Struct, kw_only=True):
    max_concurrency: int  # per engine
    max_queue: int  # per engine
    max_queue_tokens: int  # prompt tokens waiting per engine


class DeploymentStatus(msgspec.Struct, kw_only=True):
    name: str
    model: str
    path: str | None
    adapters: list[str]  # the LoRA adapters registered for its model (served by name on its engines)
    state: DeploymentState
    reason: str | None
    declared: bool
    device_kind: Literal["cpu", "gpu"] | None
    devices: list[int]
    replicas: list[ReplicaStatus]
    keep_alive_s: float | None  # None: never put away
    unloads_at: str | None
    unloads_in_s: float | None
    loading_for_s: float | None
    uptime_s: float | None
    last_used: str | None
    memory: DeploymentMemory | None
    stats: DeploymentStats
    limits: DeploymentLimits
    max_model_len: int | None
    engine_args: dict[str, Any]
    hooks: dict[str, bool]  # the engines' hooks into vLLM's private state: whether each took on every engine running


class DeploymentReadiness(msgspec.Struct):
    name: str
    state: DeploymentState
    reason: str | None
    hint: str | None = None  # what to do, for a failed one


class Readiness(msgspec.Struct):
    """What `GET /ready` answers: ready once every deployment the settings declare serves (or is put away)."""

    ready: bool
    # Why not ready: what it waits for, or which declared deployments failed (then it stays 503 until they are
    # removed or the server restarts with them fixed; their hints say how).
    reason: str | None
    failed: list[str]  # declared deployments that failed for good: waiting will not make the server ready
    deployments: list[DeploymentReadiness]


def readiness(deployments: list[Deployment]) -> Readiness:
    declared = [d for d in deployments if d.declared]
    failed = [d for d in declared if d.state == "failed"]
    waiting = [d for d in declared if d.state not in ("ready", "sleeping", "stopped", "failed")]
    reason = None
    if failed:
        reason = "; ".join(f"deployment {d.name} failed: {d.reason}" for d in failed)
    elif waiting:
        reason = "waiting for " + ", ".join(f"{d.name} ({d.state}: {d.reason})" for d in waiting)
    return Readiness(
        ready=not failed and not waiting,
        reason=reason,
        failed=[d.name for d in failed],
        deployments=[
            DeploymentReadiness(
                name=d.name, state=d.state, reason=d.reason, hint=d.failure_hint() if d.state == "failed" else None
            )
            for d in deployments
        ],
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def deployment_status(d: Deployment, adapters: list[str] | None = None) -> DeploymentStatus:
    now, mono = time.time(), time.monotonic()
    engines = [r.engine for r in d.replicas if r.engine is not None]
    unloads_in = None
    if d.state == "ready" and d.keep_alive_s is not None:
        unloads_in = max(0.0, d.keep_alive_s - d.idle_for)  # idle_for is 0 while requests are in flight
    held = [r.held_bytes for r in d.replicas if r.held_bytes is not None]
    count = len(d.placement.devices) // len(d.replicas) if d.placement else device_count(d.engine_args)
    concurrency, queue, queue_tokens = d.limits()
    return DeploymentStatus(
        name=d.name,
        model=d.spec.model,
        path=str(d.path) if d.path else None,
        adapters=adapters or [],
        state=d.state,
        reason=d.reason,
        declared=d.declared,
        device_kind=d.placement.kind if d.placement else None,
        devices=d.placement.devices if d.placement else [],
        replicas=[
            ReplicaStatus(
                index=r.index,
                state=r.state,
                pids=list(r.engine.pids) if r.engine else [],
                restarts=r.restarts,
                last_restart=r.last_restart,
                error=r.error,
                in_flight=r.in_flight,
                adapters=list(r.engine.adapters) if r.engine else [],
            )
            for r in d.replicas
        ],
        keep_alive_s=d.keep_alive_s,
        unloads_at=_iso(now + unloads_in) if unloads_in is not None else None,
        unloads_in_s=round(unloads_in, 1) if unloads_in is not None else None,
        loading_for_s=round(mono - d.loading_since, 1) if d.state == "loading" and d.loading_since else None,
        uptime_s=round(mono - d.ready_since, 1) if d.ready_since is not None else None,
        last_used=_iso(d.last_used) if d.requests else None,
        memory=DeploymentMemory(
            estimate_bytes=d.estimate.total(count) * len(d.replicas),
            weights_bytes=d.estimate.weights_bytes,
            kv_cache_bytes=d.estimate.kv_cache_bytes,
            overhead_bytes=d.estimate.overhead_bytes,
            lora_bytes=d.estimate.lora_bytes,
            held_bytes=sum(held) if held else None,
        )
        if d.estimate
        else None,
        stats=DeploymentStats(
            in_flight=d.in_flight,
            background=d.background,
            queued_tokens=sum(r.queued_tokens for r in d.replicas),
            unfinished=sum(e.unfinished_requests for e in engines),
            running=sum(e.stats.running for e in engines),
            waiting=sum(e.stats.waiting for e in engines),
            kv_cache_usage=round(max((e.stats.kv_cache_usage for e in engines), default=0.0), 4),
            tokens_generated=sum(e.stats.tokens_generated for e in engines),
            requests=d.requests,
        ),
        limits=DeploymentLimits(max_concurrency=concurrency, max_queue=queue, max_queue_tokens=queue_tokens),
        max_model_len=next((e.max_model_len for e in engines if e.max_model_len), None),
        engine_args=d.engine_args,
        hooks={name: all(e.hooks.get(name, False) for e in engines) for engine in engines for name in engine.hooks},
    )


def served_model(d: Deployment, adapter: str | None = None) -> ServedModel:
    """What clients see of a deployment in /v1/models: the facts its engine knows once loaded; ``adapter``: one of
    its model's LoRA adapters, served on it."""
    engine = next((r.engine for r in d.replicas if r.engine), None)
    loaded = engine is not None and engine.max_model_len > 0
    return ServedModel(
        name=adapter or d.name,
        parent=d.name if adapter else None,
        state=d.state,
        path=str(d.path) if d.path else None,
        max_model_len=engine.max_model_len if engine is not None else None,
        chat=engine.chat if engine is not None else None,
        tools=engine.chat and engine.tool_call_parser is not None if loaded else None,  # type: ignore[union-attr]
        reasoning=engine.chat and engine.reasoning_parser is not None if loaded else None,  # type: ignore[union-attr]
        embedding=engine.embedding if loaded else None,  # type: ignore[union-attr]
    )
