"""The event loop's lag is measured while the server serves: a stall of the loop shows in the histogram."""

from __future__ import annotations

import asyncio
import time

from bitinglip.gateway import Metrics


async def test_a_blocked_loop_shows_as_lag() -> None:
    metrics = Metrics()
    watcher = asyncio.create_task(metrics.watch_loop())
    try:
        await asyncio.sleep(0.25)  # a few samples of an idle loop
        time.sleep(0.3)  # the loop blocked, as by work on it that grows with the input
        await asyncio.sleep(0.25)
    finally:
        watcher.cancel()
    text = (await metrics.render()).decode()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("bitinglip_event_loop_lag_seconds")
    }
    assert samples["bitinglip_event_loop_lag_seconds_count"] >= 3
    assert samples["bitinglip_event_loop_lag_seconds_sum"] >= 0.19  # the stall, less one interval at most
    assert (
        samples['bitinglip_event_loop_lag_seconds_bucket{le="0.1"}'] < samples["bitinglip_event_loop_lag_seconds_count"]
    )
