"""Grid-aware spillover against "no spillover", on the same seeded simulated days with failovers.

Pure policy simulation, no Kafka: the project's simulator (``simulator.loop.ClosedLoop``, datacenter sites
with emulator slots, long battery islands) drives the project's own deciders in process, on one simulated
clock: each site's power events go to the power processor's ``Detector`` (which derives
``sites.power_state.v1``), and telemetry, requests, statuses, capacity reports and those power states go
to ``processors.scheduler.Scheduler``, whose assignments go back to the cars and the sites' controllers.
Both policies run the same seeds (same fleet, sites, islands and task arrivals); only
``SchedulerConfig.spillover`` differs.

Printed per policy (sums over the seeds; the ratio is spillover / no spillover):

- ``sessions lost``: sessions a site cut itself at its battery's last reserve (the hall cut), from the
  simulator's truth: task completions lost to the failover;
- ``hall cuts`` and ``islands at reserve``: islands whose battery reached the reserve / had the emulator
  hall cut;
- ``battery min at reserve``: minutes the batteries spent at or below their reserve carrying the load;
- ``p95 wait, affected region``: request -> first assignment, of tasks requested in an islanded site's
  region while it was off the grid (never assigned by the end: waited until the end);
- ``completed`` and ``not completed`` tasks of those; ``moved``: tasks spilled and sessions shed.

Run: ``python bench/bench_spillover.py [--seeds 7,8,9] [--cars 200] [--sites 2] [--hours 24]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.power.detector import Detector  # noqa: E402
from processors.power.events import SitePowerState  # noqa: E402
from processors.scheduler import DEFAULT_CONFIG, InvalidRecord, Scheduler  # noqa: E402
from simulator.config import SimConfig, site_compute_profile  # noqa: E402
from simulator.loop import ClosedLoop  # noqa: E402
from simulator.options import parse_start_ms  # noqa: E402
from streams.topics import (  # noqa: E402
    LIFECYCLE_TOPIC,
    POWER_EVENTS_TOPIC,
    REQUESTS_TOPIC,
    SITE_CAPACITY_TOPIC,
    SPILLOVER_TOPIC,
    STATUS_TOPIC,
    TELEMETRY_TOPIC,
)

HOUR_MS = 3_600_000
MOVES = ("SPILLOVER_ISLANDED", "SHED_RESERVE", "SHED_LOAD")


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


class Run:
    """One seed under one policy."""

    def __init__(self, args: argparse.Namespace, seed: int, spillover: bool) -> None:
        self.sched = Scheduler(replace(DEFAULT_CONFIG, spillover=spillover, seed=seed))
        self.detectors: dict[str, Detector] = {}
        self.requested: dict[str, tuple[int, str | None]] = {}  # task -> (request ts, region)
        self.first_assign: dict[str, int] = {}
        self.ended: dict[str, str] = {}  # task -> final state
        self.moves: dict[str, int] = defaultdict(int)
        self.episodes: set[str] = set()
        sim = SimConfig(
            seed=seed,
            start_ms=parse_start_ms(args.start),
            cars=args.cars,
            sites=args.sites,
            duration_ms=int(args.hours * HOUR_MS),
            tasks_per_hour=args.tasks_per_hour,
            site_compute=site_compute_profile(args.site_compute),
            opt_in_share=0.8,
            action_interval_s=120.0,  # traces are not measured here: keep the event count low
        )
        self.loop = ClosedLoop(sim, self.react, tick=self.tick, tick_ms=5_000, observe=self.observe)

    # -- the deciders ------------------------------------------------------------------------------------
    def react(self, topic: str, rec: dict[str, Any], now: int) -> list[tuple[str, dict[str, Any]]]:
        s = self.sched
        try:
            if topic == TELEMETRY_TOPIC:
                outs = s.on_telemetry(rec, now=now)
            elif topic == REQUESTS_TOPIC:
                self.requested.setdefault(rec["task_id"], (int(rec["ts"]), rec.get("region")))
                outs = s.on_request(rec, now=now)
            elif topic == STATUS_TOPIC:
                outs = s.on_status(rec, now=now)
            elif topic == SITE_CAPACITY_TOPIC:
                outs = s.on_site_capacity(rec)
            elif topic == POWER_EVENTS_TOPIC:
                det = self.detectors.get(rec["site_id"])
                if det is None:
                    det = self.detectors[rec["site_id"]] = Detector(rec["site_id"])
                return self.power_states(det.on_event(rec), now)
            else:
                return []
        except InvalidRecord:
            return []
        return [(o.topic, o.value) for o in outs]

    def power_states(self, outputs: list[Any], now: int) -> list[tuple[str, dict[str, Any]]]:
        published: list[tuple[str, dict[str, Any]]] = []
        for out in outputs:
            if isinstance(out, SitePowerState):
                published += [(o.topic, o.value) for o in self.sched.on_site_power(out.to_record())]
        return published

    def tick(self, now: int) -> list[tuple[str, dict[str, Any]]]:
        published: list[tuple[str, dict[str, Any]]] = []
        for det in self.detectors.values():
            published += self.power_states(det.on_tick(now * 1000), now)
        return published + [(o.topic, o.value) for o in self.sched.on_tick(now)]

    # -- measuring ---------------------------------------------------------------------------------------
    def observe(self, topic: str, rec: dict[str, Any], now: int) -> None:
        if topic == LIFECYCLE_TOPIC:
            tid, state = rec["task_id"], rec["state"]
            if state == "ASSIGNED":
                self.first_assign.setdefault(tid, now)
            if state in ("COMPLETED", "FAILED", "EXPIRED", "REJECTED"):
                self.ended[tid] = state
            if rec.get("reason") in MOVES and state in ("ASSIGNED", "PREEMPTED"):
                self.moves[f"{state}/{rec['reason']}"] += 1
        elif topic == SPILLOVER_TOPIC:
            self.episodes.add(rec["episode_id"])

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        world = self.loop.run()
        end = world.config.end_ms
        truth = self.loop.truth.items
        region_of = {r["site_id"]: r["region"] for r in truth if r.get("type") == "site"}
        islands = [r for r in truth if r.get("type") == "island"]
        windows = [(region_of.get(i["site_id"]), i["start"], i["end"] or end) for i in islands]
        affected = [
            tid
            for tid, (ts, region) in self.requested.items()
            if any(region in (r, None) and a <= ts <= b for r, a, b in windows)
        ]
        waits = [(self.first_assign.get(t, end) - self.requested[t][0]) / 1000.0 for t in affected]
        return {
            "sessions_lost": sum(int(i.get("sessions_lost") or 0) for i in islands),
            "hall_cuts": sum(bool(i.get("hall_cut")) for i in islands),
            "islands": len(islands),
            "at_reserve": sum(bool(i.get("reached_reserve")) for i in islands),
            "reserve_min": sum(float(i.get("reserve_minutes") or 0.0) for i in islands),
            "affected": len(affected),
            "waits": waits,
            "completed": sum(self.ended.get(t) == "COMPLETED" for t in affected),
            "not_completed": sum(self.ended.get(t) in ("FAILED", "EXPIRED") for t in affected),
            "spilled": self.moves["ASSIGNED/SPILLOVER_ISLANDED"],
            "shed": self.moves["PREEMPTED/SHED_RESERVE"] + self.moves["PREEMPTED/SHED_LOAD"],
            "shed_to_cars": self.moves["ASSIGNED/SHED_RESERVE"] + self.moves["ASSIGNED/SHED_LOAD"],
            "episodes": len(self.episodes),
            "seconds": time.perf_counter() - started,
        }


def run_one(job: tuple[argparse.Namespace, int, bool]) -> dict[str, Any]:
    args, seed, spillover = job
    return Run(args, seed, spillover).run()


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = defaultdict(float)
    waits: list[float] = []
    for r in runs:
        for k, v in r.items():
            if k == "waits":
                waits += v
            else:
                total[k] += v
    total["p95_wait_s"] = pct(waits, 0.95)
    total["p50_wait_s"] = pct(waits, 0.50)
    return dict(total)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="7,8,9", help="comma-separated simulator seeds")
    ap.add_argument("--cars", type=int, default=200)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--start", default="2025-01-06T14:00:00Z", help="simulated start (evening peaks)")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--tasks-per-hour", type=float, default=80.0)
    ap.add_argument("--site-compute", default="small", choices=["small", "realistic"])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    jobs = [(args, seed, spill) for spill in (False, True) for seed in seeds]
    shape = f"{args.cars} cars, {args.sites} sites ({args.site_compute}), {args.hours:g} h"
    rate = f"{args.tasks_per_hour:g} tasks/h"
    print(f"spillover bench: {len(seeds)} seeds x 2 policies, {shape}, {rate}, from {args.start}", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run_one, jobs))
    off = combine(results[: len(seeds)])
    on = combine(results[len(seeds) :])
    rows = [
        ("islands (from the truth)", "islands", "{:.0f}"),
        ("spillover episodes", "episodes", "{:.0f}"),
        ("tasks spilled to cars", "spilled", "{:.0f}"),
        ("sessions shed off sites", "shed", "{:.0f}"),
        ("  of which now on cars", "shed_to_cars", "{:.0f}"),
        ("sessions lost (hall cut)", "sessions_lost", "{:.0f}"),
        ("hall cuts", "hall_cuts", "{:.0f}"),
        ("islands at reserve", "at_reserve", "{:.0f}"),
        ("battery min at reserve", "reserve_min", "{:.1f}"),
        ("tasks, affected region", "affected", "{:.0f}"),
        ("  completed", "completed", "{:.0f}"),
        ("  failed or expired", "not_completed", "{:.0f}"),
        ("  p50 wait s", "p50_wait_s", "{:.1f}"),
        ("  p95 wait s", "p95_wait_s", "{:.1f}"),
        ("CPU seconds", "seconds", "{:.1f}"),
    ]
    print(f"\n{'':28} {'no spillover':>14} {'spillover':>14} {'ratio':>8}")
    for label, key, fmt in rows:
        a, b = off.get(key, 0.0), on.get(key, 0.0)
        ratio = f"{b / a:.2f}" if a else "-"
        print(f"{label:28} {fmt.format(a):>14} {fmt.format(b):>14} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
