"""Rate mode: push a fixed number of events per wall-clock second, for load tests.

The world runs as fast as needed (its simulated clock races ahead of the wall clock); records go out
in small batches paced by a token bucket, so the rate holds second by second. When the generator and
producer cannot keep up, the achieved rate is simply lower: the summary reports achieved/requested.
"""

from __future__ import annotations

import threading
import time

from simulator.runner import RunSummary, summarize
from simulator.world import World

TICK_S = 0.01


def run_rate(
    world: World,
    rate: float,
    wall_duration_s: float,
    progress=None,  # type: ignore[no-untyped-def]
    stop: threading.Event | None = None,
) -> RunSummary:
    sink = world.sink
    world.run_until(world.config.start_ms)  # warm-up
    base = sink.total
    wall0 = time.monotonic()
    last_progress = 0.0
    producer = getattr(sink, "producer", None)
    while not (stop is not None and stop.is_set()):
        elapsed = time.monotonic() - wall0
        if elapsed >= wall_duration_s or world.finished:
            break
        due = int(rate * min(elapsed + TICK_S, wall_duration_s)) - (sink.total - base)
        if due <= 0:
            if producer is not None:
                producer.poll(0)
            time.sleep(min(TICK_S, -due / rate if rate else TICK_S))
            continue
        target = sink.total + min(due, max(1000, int(rate * 0.05)))  # check the clock every ~50 ms
        while sink.total < target and not world.finished:
            world.run_until(world.config.end_ms, max(64, (target - sink.total) // 2))
        if progress is not None and elapsed - last_progress >= 0.5:
            last_progress = elapsed
            progress(world, elapsed)
    produce_s = time.monotonic() - wall0
    pending = sink.flush()
    summary = summarize(world, time.monotonic() - wall0)
    sent = sink.total - base
    summary.extra.update(
        requested_rate=rate,
        achieved_rate=round(sent / max(1e-9, produce_s), 1),
        ratio=round(sent / max(1e-9, produce_s) / rate, 3) if rate else None,
        delivered_rate=round(sent / max(1e-9, summary.wall_s), 1),
        pending_after_flush=pending,
    )
    return summary
