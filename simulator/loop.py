"""A closed loop for benches: the in-process world and an in-process decision maker on one simulated clock.

Every record the world emits goes to ``react(topic, record, now)`` at the instant it is emitted; the
records ``react`` publishes in return, as ``(topic, record)`` pairs, are handed to ``observe`` (if given),
and those on ``tasks.assignments.v1`` are delivered to their node (a car, or a site's controller for
``site:<site_id>``) at the same simulated instant, as events of the world's queue (never inside the
emitting call). ``tick(now)`` runs every ``tick_ms`` from the run's start, its records handled the same
way. Nothing here knows the scheduler: a bench adapts it, e.g.::

    sched = Scheduler(config)

    def react(topic, rec, now):
        if topic == "tasks.requests.v1":
            return [(o.topic, o.value) for o in sched.on_request(rec, now=now)]
        ...

    loop = ClosedLoop(SimConfig(site_compute=SITE_COMPUTE_PROFILES["realistic"]), react,
                      tick=lambda now: [(o.topic, o.value) for o in sched.on_tick(now)])
    loop.run()
    islands = [r for r in loop.truth.items if r["type"] == "island"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from simulator.config import SimConfig
from simulator.sinks import Sink
from simulator.truth import Truth, TruthList
from simulator.world import World
from streams.topics import ASSIGNMENTS_TOPIC

__all__ = ["ClosedLoop", "Published"]

Published = Iterable[tuple[str, dict[str, Any]]]
React = Callable[[str, dict[str, Any], int], Published | None]
Tick = Callable[[int], Published | None]
Observe = Callable[[str, dict[str, Any], int], None]


class _ReactSink(Sink):
    def __init__(self, loop: ClosedLoop) -> None:
        super().__init__()
        self.loop = loop

    def write(self, topic: str, key: str, record: dict[str, Any]) -> None:
        super().write(topic, key, record)
        self.loop.publish(self.loop.react(topic, record, self.loop.world.now))


class ClosedLoop:
    def __init__(
        self,
        config: SimConfig,
        react: React,
        tick: Tick | None = None,
        tick_ms: int = 5_000,
        observe: Observe | None = None,
        truth: Truth | None = None,
    ) -> None:
        self.react = react
        self.tick = tick
        self.tick_ms = tick_ms
        self.observe = observe
        self.truth = truth if truth is not None else TruthList()
        self.world = World(config, _ReactSink(self), self.truth)
        self.delivered = 0  # assignment commands handed to the nodes
        self._closed = False

    def publish(self, records: Published | None) -> None:
        w = self.world
        for topic, record in records or ():
            if self.observe is not None:
                self.observe(topic, record, w.now)
            if topic == ASSIGNMENTS_TOPIC:
                self.delivered += 1
                w.q.schedule(w.now, self._deliver, record)

    def _deliver(self, command: dict[str, Any]) -> None:
        self.world.emulators.handle(command)

    def _tick(self) -> None:
        w = self.world
        if self.tick is not None:
            self.publish(self.tick(w.now))
        w.q.schedule(w.now + self.tick_ms, self._tick)

    def run(self, until_ms: int | None = None) -> World:
        """Run to ``until_ms`` (default: the end of the run); the open islands and charge sessions then
        go to the truth. Can be called again with a later time to continue."""
        w = self.world
        if not w.started:
            w.start()
            w.q.schedule(w.config.start_ms, self._tick)
        w.run_until(until_ms if until_ms is not None else w.config.end_ms)
        if w.finished and not self._closed:
            self._closed = True
            w.write_open_sessions()
        return w
