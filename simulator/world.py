"""The world: cars, task submitters, emulator nodes and power sites on one simulated clock.

The world starts ``warmup_ms`` before ``config.start_ms`` so cars are where their habits put them when
reporting begins; nothing is emitted or recorded during the warm-up.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from simulator.car import Car
from simulator.config import DAY_MS, SimConfig
from simulator.engine import EventQueue
from simulator.fleet import make_fleet
from simulator.nodes import EmulatorHost
from simulator.power import Site
from simulator.sinks import Sink
from simulator.tasks import TaskSource
from simulator.truth import Truth
from streams.topics import REQUESTS_TOPIC

TASKS = REQUESTS_TOPIC


class World:
    def __init__(
        self, config: SimConfig, sink: Sink | None = None, truth: Truth | None = None, warmup_ms: int = DAY_MS
    ) -> None:
        self.config = config
        self.sink = sink or Sink()
        self.truth = truth or Truth()
        self.q = EventQueue(config.start_ms - warmup_ms)
        self.emitting = False
        self.recording = False
        self.counters: Counter[str] = Counter()
        self.cars = [Car(spec, self) for spec in make_fleet(config)]
        self.by_vin = {c.spec.vin: c for c in self.cars}
        self.sites = [Site(i, self) for i in range(config.sites)]
        # node id (site:<site_id>) -> the controller that runs tasks placed on that site
        self.site_controllers = {
            s.compute.controller.node_id: s.compute.controller for s in self.sites if s.compute
        }
        self.tasks = TaskSource(config)
        self.task_durations: dict[str, float] = {}
        self.emulators = EmulatorHost(self)
        self.sessions_log: list[tuple[int, int, str]] = []  # (plug_in, unplug, location) of charge sessions
        self.started = False

    @property
    def now(self) -> int:
        return self.q.now

    def start(self) -> None:
        """Write the static truth and schedule everyone's first events."""
        if self.started:
            return
        self.started = True
        c = self.config
        self.truth.write(
            {
                "type": "config",
                "seed": c.seed,
                "start": c.start_ms,
                "end": c.end_ms,
                "cars": c.cars,
                "sites": c.sites,
                "tasks_per_hour": c.tasks_per_hour,
            }
        )
        for site in self.sites:
            if site.compute is not None:
                cap = site.compute.capacity
                self.truth.write(
                    {
                        "type": "site",
                        "site_id": site.site_id,
                        "region": site.region,
                        "slots_total": cap.slots_total,
                        "kw_per_slot": cap.kw_per_slot,
                        "critical_load_mw": round(cap.critical_load_mw, 3),
                        "battery_mwh": round(cap.battery_mwh, 3),
                        "generators": site.gens,
                    }
                )
        for car in self.cars:
            s = car.spec
            self.truth.write(
                {
                    "type": "car",
                    "vin": s.vin,
                    "hw": s.hw,
                    "region": s.region,
                    "opted_in": s.opted_in,
                    "profile": s.profile,
                    "faulty": s.faulty,
                    "home_charger_kw": s.home_charger_kw,
                    "departure_setting_h": s.departure_setting_h,
                }
            )
            offset = car.local_offset_ms
            car.start((self.q.now + offset) // DAY_MS * DAY_MS - offset)
        self.q.schedule(c.start_ms, self._begin)

    def _begin(self) -> None:
        self.emitting = self.recording = True
        for car in self.cars:
            car.begin_reporting()
        for site in self.sites:
            site.start()
        if self.config.tasks_per_hour > 0:
            now = self.q.now
            self.q.schedule(self.tasks.next_arrival(now), self._task_arrival)
            self._plan_bursts(now // DAY_MS * DAY_MS)

    # -- tasks --------------------------------------------------------------------------------------
    def _task_arrival(self) -> None:
        self._new_task()
        self.q.schedule(self.tasks.next_arrival(self.q.now), self._task_arrival)

    def _plan_bursts(self, day_start: int) -> None:
        for at, n, tenant, kind in self.tasks.bursts_for_day(day_start):
            if at < self.q.now:
                continue
            spread = self.tasks.rng.uniform(60_000, 300_000)
            self.counters["task_bursts"] += 1
            self.truth.write({"type": "burst", "ts": at, "tenant": tenant.name, "kind": kind, "tasks": n})
            for i in range(n):
                self.q.schedule(at + int(spread * i / n), self._new_task, tenant, kind)
        self.q.schedule(day_start + DAY_MS, self._plan_bursts, day_start + DAY_MS)

    def _new_task(self, tenant: Any = None, kind: str | None = None) -> None:
        record, duration = self.tasks.make_task(self.q.now, tenant, kind)
        task_id = str(record["task_id"])
        self.task_durations[task_id] = duration
        self.counters["tasks"] += 1
        self.emit(TASKS, task_id, record)
        self.truth.write(
            {"type": "task", **record, "true_duration_s": round(duration, 1), "burst": tenant is not None}
        )
        if self.config.self_assign:
            placement = record.get("placement")  # set only with sites as compute
            on_car = placement != "DATACENTER" and self.emulators.self_assign(record, duration)
            if not on_car and placement in ("ANY", "DATACENTER"):
                self._self_assign_to_site(record, duration)

    def _self_assign_to_site(self, task: dict[str, Any], duration_s: float) -> bool:
        """Without a matcher: run the task at the first site of its region with a free slot."""
        region = task["region"]
        for ctl in self.site_controllers.values():
            if ctl.slots.free and ctl.state != "TRIPPED" and region in (None, ctl.capacity.region):
                return ctl.assign(f"self-{task['task_id']}", str(task["task_id"]), duration_s)
        return False

    def write_open_sessions(self) -> None:
        """Truth for the charge sessions still plugged in when the run ends (``charge_session`` rows are
        written at unplug): without them, a car plugged in at the end would look ineligible all along.
        Likewise the islands of sites still off the grid."""
        if not self.recording:
            return
        for site in self.sites:
            if site.compute is not None:
                site.compute.close()
        for car in self.cars:
            if car.plugged:
                self.truth.write(
                    {
                        "type": "charge_open",
                        "vin": car.spec.vin,
                        "location": car.loc,
                        "plug_in": car.plug_ms,
                        "at": self.q.now,
                        "charger_kw": car.charger_kw,
                    }
                )

    # -- output -------------------------------------------------------------------------------------
    def emit(self, topic: str, key: str, record: dict[str, Any], delay_ms: int = 0) -> None:
        if delay_ms > 0:
            self.q.schedule(self.q.now + delay_ms, self.sink.write, topic, key, record)
        else:
            self.sink.write(topic, key, record)

    def run_until(self, end_ms: int, max_events: int | None = None) -> int:
        """Advance simulated time to ``end_ms`` (or by at most ``max_events`` events)."""
        self.start()
        return self.q.run_until(min(end_ms, self.config.end_ms), max_events)

    def run(self) -> None:
        self.run_until(self.config.end_ms)

    @property
    def finished(self) -> bool:
        nxt = self.q.next_time()
        return self.q.now >= self.config.end_ms or nxt is None or nxt >= self.config.end_ms

    def idle_share(self) -> float:
        return sum(c.is_idle(self.q.now) for c in self.cars) / max(1, len(self.cars))
