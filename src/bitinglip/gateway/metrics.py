"""`GET /metrics`: Prometheus text from our own registry, every name prefixed `bitinglip_`.

Two kinds of numbers:
- counted as requests happen (requests by route, status and model; latency and time to first token;
  tokens; refusals), updated once per request, never per token;
- read when scraped, from the parts that own them (deployments and their engines, the task queue, pulls):
  the app registers a source per part, and nothing is copied between scrapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bitinglip.cluster import DeploymentStatus
from bitinglip.models import PullStatus

# A source: an async call that returns the families it knows now (read at scrape time).
Source = Callable[[], Awaitable[Iterable[Metric]]]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LOOP_LAG_EVERY_S = 0.1  # how often the event loop's lag is sampled


class _Scraped(Collector):
    """Hands Prometheus what the sources said at this scrape."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "bitinglip_requests", "HTTP requests by route, status and model", ["route", "status", "model"], registry=r
        )
        self.latency = Histogram(
            "bitinglip_request_duration_seconds",
            "Time from the request's arrival to the end of its response (the whole stream)",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "bitinglip_time_to_first_token_seconds",
            "Time from the request's arrival to its first generated token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "bitinglip_prompt_tokens", "Prompt tokens of finished requests", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "bitinglip_completion_tokens", "Tokens generated for finished requests", ["model"], registry=r
        )
        self.refusals = Counter(
            "bitinglip_refusals",
            "Requests refused before they ran: over a limit (429) or a deployment at its bounds (503)",
            ["reason", "model"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "bitinglip_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LOOP_LAG_EVERY_S} s: how long any request could have "
            "waited for the one loop that serves them all",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        # Children by label values, kept here: prometheus_client's labels() costs more than the increment itself,
        # five times per generated response.
        self._children: dict[tuple[object, ...], Any] = {}
        self._scraped = _Scraped()
        r.register(self._scraped)
        self.sources: list[Source] = []

    def observe_http(self, scope: Mapping[str, Any], status: int, seconds: float) -> None:
        """Every request (the HTTP edge calls this when its response has ended)."""
        route = scope.get("path_template") or "unmatched"
        model = scope.get("state", {}).get("model", "")
        self._child(self.requests, route, str(status), model).inc()
        self._child(self.latency, route, model).observe(seconds)

    def observe_generation(self, model: str, prompt: int, completion: int, ttft_s: float | None) -> None:
        self._child(self.prompt_tokens, model).inc(prompt)
        self._child(self.completion_tokens, model).inc(completion)
        if ttft_s is not None:
            self._child(self.ttft, model).observe(ttft_s)

    async def watch_loop(self) -> None:
        """Sample the event loop's lag until cancelled (the server runs it while it serves)."""
        loop = asyncio.get_running_loop()
        observe = self.loop_lag.observe
        while True:
            due = loop.time() + LOOP_LAG_EVERY_S
            await asyncio.sleep(LOOP_LAG_EVERY_S)
            observe(max(0.0, loop.time() - due))

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    async def render(self) -> bytes:
        families: list[Metric] = []
        for source in self.sources:
            families.extend(await source())
        self._scraped.families = families
        return generate_latest(self.registry)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def deployment_families(statuses: Iterable[DeploymentStatus]) -> list[Metric]:
    """Per deployment (label `model`): its state, requests admitted and waiting, its engines' last step."""
    ready = _gauge("bitinglip_deployment_ready", "1 while the deployment serves, else 0", ["model", "state"])
    in_flight = _gauge("bitinglip_deployment_in_flight", "Requests admitted (running and queued)", ["model"])
    background = _gauge("bitinglip_deployment_background", "Of which tasks and batch lines", ["model"])
    queued_tokens = _gauge(
        "bitinglip_deployment_queued_prompt_tokens",
        "Prompt tokens admitted that have not had an engine step",
        ["model"],
    )
    queue_limit = _gauge("bitinglip_deployment_max_queue", "Queued requests allowed per engine", ["model"])
    running = _gauge("bitinglip_engine_running_requests", "Requests in the engines' running batch", ["model"])
    waiting = _gauge("bitinglip_engine_waiting_requests", "Requests waiting in the engines' scheduler", ["model"])
    kv = _gauge("bitinglip_engine_kv_cache_usage_ratio", "KV cache in use, 0 to 1 (the fullest engine)", ["model"])
    generated = _gauge("bitinglip_engine_generated_tokens", "Tokens the engines made since they started", ["model"])
    for d in statuses:
        ready.add_metric([d.name, d.state], 1.0 if d.state == "ready" else 0.0)
        in_flight.add_metric([d.name], d.stats.in_flight)
        background.add_metric([d.name], d.stats.background)
        queued_tokens.add_metric([d.name], d.stats.queued_tokens)
        queue_limit.add_metric([d.name], d.limits.max_queue)
        running.add_metric([d.name], d.stats.running)
        waiting.add_metric([d.name], d.stats.waiting)
        kv.add_metric([d.name], d.stats.kv_cache_usage)
        generated.add_metric([d.name], d.stats.tokens_generated)
    return [ready, in_flight, background, queued_tokens, queue_limit, running, waiting, kv, generated]


def task_families(depth: Mapping[tuple[str, str], int]) -> list[Metric]:
    """Tasks (single tasks and batch lines) waiting or running, by model and state."""
    tasks = _gauge("bitinglip_tasks", "Background tasks queued or running, by model", ["model", "state"])
    for (model, state), n in sorted(depth.items()):
        tasks.add_metric([model, state], n)
    return [tasks]


def pull_families(pulls: Iterable[PullStatus]) -> list[Metric]:
    """Model downloads under way: bytes done and expected, by model."""
    done = _gauge("bitinglip_pull_bytes_done", "Bytes downloaded by a pull under way", ["model"])
    total = _gauge("bitinglip_pull_bytes_total", "Bytes a pull under way will download (0 while unknown)", ["model"])
    for pull in pulls:
        done.add_metric([pull.model], pull.bytes_done)
        total.add_metric([pull.model], pull.bytes_total or 0)
    return [done, total]
