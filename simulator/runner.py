"""Running a world against the wall clock: time acceleration, the emulator runtime's inbox, progress.

``speed`` is simulated seconds per wall second (1440: a day in a minute); 0 runs as fast as possible.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulator.world import World

CHUNK = 5_000  # events between checks of the clock, the inbox and progress
POLL_EVERY_S = 0.05


@dataclass
class RunSummary:
    counts: dict[str, int]
    counters: dict[str, int]
    wall_s: float
    sim_start_ms: int
    sim_end_ms: int
    truth_rows: int = 0
    delivered: int | None = None
    failed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(self.counts.values())


Progress = Callable[[World, float], None]


def run_simulation(
    world: World,
    speed: float,
    inbox: Any | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run ``world`` to its end (or until ``stop`` is set), paced by ``speed``."""
    config = world.config
    world.run_until(config.start_ms)  # warm-up: habits only, nothing emitted
    wall0 = time.monotonic()
    last_poll = last_progress = 0.0
    end = config.end_ms
    while not world.finished and not (stop is not None and stop.is_set()):
        elapsed = time.monotonic() - wall0
        if speed > 0:
            target = min(end, config.start_ms + int(elapsed * 1000 * speed) + 1)
            ran = world.run_until(target, CHUNK)
            if ran == 0:
                nxt = world.q.next_time() or end
                wait = (nxt - config.start_ms) / 1000 / speed - elapsed
                time.sleep(min(POLL_EVERY_S, max(0.0, wait)))
                _serve(world)
        else:
            world.run_until(end, CHUNK)
        now = time.monotonic()
        if inbox is not None and now - last_poll >= POLL_EVERY_S:
            last_poll = now
            for command in inbox.poll():
                world.emulators.handle(command)
        if progress is not None and now - last_progress >= 0.5:
            last_progress = now
            progress(world, now - wall0)
    world.sink.flush()
    if progress is not None:
        progress(world, time.monotonic() - wall0)
    return summarize(world, time.monotonic() - wall0)


def _serve(world: World) -> None:
    producer = getattr(world.sink, "producer", None)
    if producer is not None:
        producer.poll(0)


def summarize(world: World, wall_s: float) -> RunSummary:
    stats = getattr(getattr(world.sink, "producer", None), "stats", None)
    summary = RunSummary(
        counts=dict(world.sink.counts),
        counters=dict(world.counters),
        wall_s=wall_s,
        sim_start_ms=world.config.start_ms,
        sim_end_ms=max(world.config.start_ms, world.q.now),
        truth_rows=world.truth.rows,
        delivered=None if stats is None else stats.delivered,
        failed=None if stats is None else stats.failed,
    )
    mapped = getattr(world.sink, "mapped_unknown", 0)
    if mapped:
        summary.extra["charge_state_mapped_to_unknown"] = mapped
    return summary
