"""Predictive vs random node ranking on the same simulated fleet: preemptions and task wait time.

Pure policy simulation, no Kafka: the project's simulator (``simulator.World``) generates the fleet's
telemetry, the task stream and the emulator runtime on the cars; every record it emits is fed
straight into ``processors.scheduler.Scheduler``, and the scheduler's ASSIGN/REVOKE commands go
straight back to the simulated cars (``world.emulators.handle``) at the same simulated instant. A tick
runs every few simulated seconds. Both policies run the same seed (same cars, habits, task arrivals);
only ``SchedulerConfig.ranking`` differs. The first ``--learn-days`` days let the scheduler collect each
car's plug-in history; only the last ``--days`` are measured.

Measured, per policy:
- preemptions: assignments whose node was lost before the task ended, i.e. the scheduler's PREEMPTED
  events plus FAILED reports of sessions abandoned because the owner returned (whichever came first),
  as a share of assignments that STARTED;
- wait: request -> first ASSIGN (mean and p95, tasks requested in the measured window), and
  request -> COMPLETED;
- completed tasks, expired tasks.

Run: ``python bench/bench_scheduler_policy.py [--cars 150 --days 1 --learn-days 2 --seeds 7,8]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.scheduler import DEFAULT_CONFIG, InvalidRecord, Out, Scheduler, SchedulerConfig  # noqa: E402

DAY_MS = 86_400_000
TICK_MS = 5_000


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(0.95 * len(s)))]


class PolicyRun:
    """Feeds a simulated world into one scheduler and measures the outcome."""

    def __init__(self, args: argparse.Namespace, config: SchedulerConfig) -> None:
        from simulator import SimConfig, World
        from simulator.sinks import Sink

        self.sched = Scheduler(config)
        self.measure_from = 0
        self.requested: dict[str, int] = {}
        self.first_assign: dict[str, int] = {}
        self.completed: dict[str, int] = {}
        self.started: set[str] = set()  # assignment ids that STARTED (measured tasks)
        self.lost: dict[str, str] = {}  # assignment id -> cause ("owner" back, or "lease" lost)
        self.expired = 0
        self.invalid = 0
        run = self

        class FeedSink(Sink):
            def write(self, topic: str, key: str, record: dict[str, Any]) -> None:
                super().write(topic, key, record)
                run.on_record(topic, record)

        sim = SimConfig(
            seed=args.seed,
            cars=args.cars,
            duration_ms=(args.days + args.learn_days) * DAY_MS,
            tasks_per_hour=args.tasks_per_hour,
            sites=0,
            action_interval_s=120.0,  # actions are not measured here: keep the event count low
        )
        self.world = World(sim, FeedSink())
        self.measure_from = sim.start_ms + args.learn_days * DAY_MS
        self.end = sim.end_ms

    def on_record(self, topic: str, rec: dict[str, Any]) -> None:
        s, now = self.sched, self.world.now
        try:
            if topic == "fleet.telemetry.v1":
                outs = s.on_telemetry(rec, now=now)
            elif topic == "tasks.requests.v1":
                if now >= self.measure_from:
                    self.requested[rec["task_id"]] = now
                outs = s.on_request(rec, now=now)
            elif topic == "tasks.status.v1":
                if rec["status"] == "STARTED" and rec["task_id"] in self.requested:
                    self.started.add(rec["assignment_id"])
                if rec["status"] == "FAILED" and "owner_returned" in (rec.get("error") or ""):
                    self.lost.setdefault(rec["assignment_id"], "owner")
                outs = s.on_status(rec, now=now)
            else:
                return
        except InvalidRecord:
            self.invalid += 1
            return
        self.apply(outs)

    def tick(self) -> None:
        self.apply(self.sched.on_tick(self.world.now))
        self.world.q.schedule(self.world.now + TICK_MS, self.tick)

    def apply(self, outs: list[Out]) -> None:
        now = self.world.now
        for o in outs:
            v = o.value
            if o.topic == "tasks.assignments.v1":
                self.world.q.schedule(now, self.world.emulators.handle, v)
            elif o.topic == "tasks.lifecycle.v1" and v["task_id"] in self.requested:
                st = v["state"]
                if st == "ASSIGNED":
                    self.first_assign.setdefault(v["task_id"], now)
                elif st == "PREEMPTED":
                    cause = "lease" if v["reason"] == "LEASE_EXPIRED" else "owner"
                    self.lost.setdefault(v["assignment_id"], cause)
                elif st == "COMPLETED":
                    self.completed[v["task_id"]] = now
                elif st == "EXPIRED":
                    self.expired += 1

    def run(self) -> dict[str, float]:
        w = self.world
        w.start()
        w.q.schedule(w.now + TICK_MS, self.tick)
        t0 = time.perf_counter()
        w.run_until(self.end)
        elapsed = time.perf_counter() - t0
        waits = [
            (self.first_assign[t] - r) / 1000 for t, r in self.requested.items() if t in self.first_assign
        ]
        done = [(self.completed[t] - r) / 1000 for t, r in self.requested.items() if t in self.completed]
        lost = [c for a, c in self.lost.items() if a in self.started]
        return {
            "tasks": len(self.requested),
            "started": len(self.started),
            "preempted": len(lost),
            "preempted_owner": lost.count("owner"),
            "preempted_lease": lost.count("lease"),
            "wait_mean_s": statistics.fmean(waits) if waits else float("nan"),
            "wait_p95_s": p95(waits),
            "never_assigned": len(self.requested) - len(waits),
            "completed": len(done),
            "turnaround_mean_s": statistics.fmean(done) if done else float("nan"),
            "expired": self.expired,
            "telemetry": self.sched.counters["telemetry_applied"],
            "seconds": elapsed,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cars", type=int, default=150)
    ap.add_argument("--days", type=int, default=1, help="measured days")
    ap.add_argument("--learn-days", type=int, default=2, help="days before measuring (history is learned)")
    ap.add_argument("--tasks-per-hour", type=float, default=8.0)
    ap.add_argument("--seeds", default="7,8", help="comma-separated seeds; counts are summed over them")
    args = ap.parse_args(argv)
    try:
        import simulator  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        print(f"simulator package not importable ({exc}); nothing to drive the policies with")
        return 2
    seeds = [int(x) for x in args.seeds.split(",")]
    results: dict[str, dict[str, float]] = {}
    for ranking in ("random", "predictive"):
        runs = []
        for seed in seeds:
            args.seed = seed
            runs.append(PolicyRun(args, replace(DEFAULT_CONFIG, ranking=ranking, seed=seed)).run())
        results[ranking] = combine(runs)
    print(
        f"fleet: {args.cars} simulated cars (simulator.World), seeds {args.seeds}, {args.learn_days} day(s) "
        f"learning + {args.days} measured per seed, {args.tasks_per_hour:g} tasks/h"
    )
    cols = list(results["random"])
    print(f"{'metric':<20}{'random':>14}{'predictive':>14}")
    for c in cols:
        r, p = results["random"][c], results["predictive"][c]
        fmt = "{:>14.3f}" if isinstance(r, float) else "{:>14}"
        print(f"{c:<20}" + fmt.format(r) + fmt.format(p))
    r, p = results["random"], results["predictive"]
    for key in ("preempt_rate", "owner_preempt_rate"):
        ratio = r[key] / p[key] if p[key] > 0 else float("inf")
        print(f"{key} random/predictive: {ratio:.2f}x (goal >= 2x)")
    print(f"mean wait predictive/random: {p['wait_mean_s'] / max(r['wait_mean_s'], 1e-9):.2f} (goal <= 1)")
    print(f"p95 wait predictive/random: {p['wait_p95_s'] / max(r['wait_p95_s'], 1e-9):.2f}")
    return 0


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum counts over seeds; rates from the sums; waits averaged over seeds (weighted by tasks)."""
    total = {k: sum(r[k] for r in runs) for k in runs[0] if not isinstance(runs[0][k], float)}
    started = max(1, total["started"])
    weights = [r["tasks"] for r in runs]

    def wavg(key: str) -> float:
        return sum(r[key] * w for r, w in zip(runs, weights, strict=True)) / max(1, sum(weights))

    return {
        **total,
        "preempt_rate": total["preempted"] / started,
        "owner_preempt_rate": total["preempted_owner"] / started,
        "lease_preempt_rate": total["preempted_lease"] / started,
        "wait_mean_s": wavg("wait_mean_s"),
        "wait_p95_s": wavg("wait_p95_s"),
        "turnaround_mean_s": wavg("turnaround_mean_s"),
        "seconds": sum(r["seconds"] for r in runs),
    }


if __name__ == "__main__":
    raise SystemExit(main())
