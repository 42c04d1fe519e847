"""Predictive vs random node ranking on the same simulated fleet: preemptions and task wait time.

Pure policy simulation, no Kafka: the project's simulator (``simulator.World``) generates the fleet's
telemetry, the task stream and the emulator runtime on the cars; every record it emits is fed
straight into ``processors.scheduler.Scheduler``, and the scheduler's ASSIGN/REVOKE commands go
straight back to the simulated cars (``world.emulators.handle``) at the same simulated instant. A tick
runs every few simulated seconds. All policies run the same seeds (same cars, habits, task arrivals);
only ``SchedulerConfig.ranking`` differs. The first ``--learn-days`` days let the scheduler collect each
car's plug-in history; only the last ``--days`` are measured.

The defaults are chosen so that ranking *can* matter (see docs/scheduler.md, "Measuring the ranking"):

- the fleet is the candidate pool (every car opted in, HW4/HW5): cars that can never take work cost
  simulation time and add no choice;
- two regions (two matching pools), so each task picks among tens of idle nodes. With four regions
  and 150 cars a task saw a median of 3 free nodes, every idle node got used, and even an oracle
  ranking cut preemptions only 1.2x;
- no bursts (a burst of 50-400 tasks takes every idle node, whatever the ranking);
- task durations 3x the simulator's kind medians (log-normal, sigma 0.8: ~2 minutes to 4 hours), at
  20 tasks/h: a few percent of the idle nodes are busy on average.

Measured, per policy:
- preemptions: assignments whose node was lost before the task ended (the scheduler's PREEMPTED
  events, or FAILED ``abandoned: owner_returned`` reports, whichever came first), as a share of
  assignments that STARTED, by cause: ``owner`` (gear left P, cable out, ... or the owner_returned
  report), ``departure`` (DEPARTURE_SOON: the scheduled departure came near), ``lease`` (LEASE_EXPIRED:
  the car stopped reporting for longer than ``claim_lease_s``; in the simulator always a weak-Wi-Fi gap
  of a parked, awake, plugged car, which no ranking by idle time can foresee);
- wait: request -> first ASSIGN (mean and p95, tasks requested in the measured window), and
  request -> COMPLETED;
- completed tasks, expired tasks.

``--oracle`` adds a third, non-deployable policy as a ceiling: the predictive ranking with the
probability replaced by the simulator's truth (the car's next planned trip, and the scheduled departure
guard). It shows how much any ranking by idle time could gain on this fleet.

Run: ``python bench/bench_scheduler_policy.py [--cars 150 --days 1 --learn-days 2 --seeds 7,8 --oracle]``.
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
from processors.scheduler import matching as _matching  # noqa: E402

DAY_MS = 86_400_000
TICK_MS = 5_000
CAUSES = ("owner", "departure", "lease")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(0.95 * len(s)))]


def cause_of(reason: str) -> str:
    if reason == "LEASE_EXPIRED":
        return "lease"
    if reason == "DEPARTURE_SOON":
        return "departure"
    return "owner"


class PolicyRun:
    """Feeds a simulated world into one scheduler and measures the outcome."""

    def __init__(self, args: argparse.Namespace, config: SchedulerConfig) -> None:
        from simulator import SimConfig, World
        from simulator.config import parse_mix
        from simulator.sinks import Sink

        self.sched = Scheduler(config)
        self.measure_from = 0
        self.requested: dict[str, int] = {}
        self.first_assign: dict[str, int] = {}
        self.completed: dict[str, int] = {}
        self.started: set[str] = set()  # assignment ids that STARTED (measured tasks)
        self.lost: dict[str, str] = {}  # assignment id -> cause (see CAUSES)
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
            bursts_per_day=args.bursts_per_day,
            task_duration_scale=args.duration_scale,
            region_mix=parse_mix(args.regions),
            hw_mix=parse_mix(args.hw_mix),
            opt_in_share=args.opt_in,
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
                    self.lost.setdefault(v["assignment_id"], cause_of(v["reason"]))
                elif st == "COMPLETED":
                    self.completed[v["task_id"]] = now
                elif st == "EXPIRED":
                    self.expired += 1

    def oracle_probability(self, node: Any, duration_s: float, now: int, cfg: SchedulerConfig) -> float:
        """Not deployable: the simulator's truth. 1 when the car's next planned trip (and the scheduled
        departure guard) is beyond the task with a 1.5x margin (true run times vary), else a share."""
        car = self.world.by_vin[node.vin]
        end = car.next_departure(now) or now + 10 * DAY_MS
        dep = node.scheduled_departure
        guard = cfg.departure_guard_s * 1000
        if dep is not None and dep + guard > now:
            end = min(end, int(dep - guard))
        left = (end - now) / 1000.0
        need = 1.5 * duration_s
        return 1.0 if left >= need else 0.5 * max(0.0, left) / need

    def run(self, oracle: bool = False) -> dict[str, Any]:
        w = self.world
        real = _matching.stay_probability
        if oracle:
            _matching.stay_probability = self.oracle_probability  # type: ignore[assignment]
        try:
            w.start()
            w.q.schedule(w.now + TICK_MS, self.tick)
            t0 = time.perf_counter()
            w.run_until(self.end)
            elapsed = time.perf_counter() - t0
        finally:
            _matching.stay_probability = real
        waits = [
            (self.first_assign[t] - r) / 1000 for t, r in self.requested.items() if t in self.first_assign
        ]
        done = [(self.completed[t] - r) / 1000 for t, r in self.requested.items() if t in self.completed]
        lost = [c for a, c in self.lost.items() if a in self.started]
        return {
            "tasks": len(self.requested),
            "started": len(self.started),
            "preempted": len(lost),
            **{f"preempted_{c}": lost.count(c) for c in CAUSES},
            "waits": waits,
            "never_assigned": len(self.requested) - len(waits),
            "completed": len(done),
            "turnaround": done,
            "expired": self.expired,
            "telemetry": self.sched.counters["telemetry_applied"],
            "seconds": elapsed,
        }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum counts over seeds; rates from the sums; waits pooled over seeds."""
    total = {k: sum(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], int)}
    started = max(1, total["started"])
    waits = [x for r in runs for x in r["waits"]]
    done = [x for r in runs for x in r["turnaround"]]
    return {
        **total,
        "preempt_rate": total["preempted"] / started,
        **{f"{c}_preempt_rate": total[f"preempted_{c}"] / started for c in CAUSES},
        "non_lease_preempt_rate": (total["preempted"] - total["preempted_lease"]) / started,
        "wait_mean_s": statistics.fmean(waits) if waits else float("nan"),
        "wait_p95_s": p95(waits),
        "turnaround_mean_s": statistics.fmean(done) if done else float("nan"),
        "seconds": sum(r["seconds"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cars", type=int, default=150)
    ap.add_argument("--days", type=int, default=1, help="measured days")
    ap.add_argument("--learn-days", type=int, default=2, help="days before measuring (history is learned)")
    ap.add_argument("--tasks-per-hour", type=float, default=20.0)
    ap.add_argument("--bursts-per-day", type=float, default=0.0)
    ap.add_argument("--duration-scale", type=float, default=3.0, help="x the simulator's task medians")
    ap.add_argument("--regions", default="us-west=1,us-east=1", help="region mix = matching pools")
    ap.add_argument("--hw-mix", default="HW4=85,HW5=15")
    ap.add_argument("--opt-in", type=float, default=1.0)
    ap.add_argument("--seeds", default="7,8", help="comma-separated seeds; counts are summed over them")
    ap.add_argument("--oracle", action="store_true", help="also run the (non-deployable) truth ranking")
    ap.add_argument(
        "--claim-lease-s",
        type=float,
        default=DEFAULT_CONFIG.claim_lease_s,
        help="SchedulerConfig.claim_lease_s: silence a node holding work survives (lease losses)",
    )
    args = ap.parse_args(argv)
    try:
        import simulator  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        print(f"simulator package not importable ({exc}); nothing to drive the policies with")
        return 2
    if len([p for p in args.regions.split(",") if p.strip()]) < 2:
        # With a single pool an any-region task that waits 32 x spill_after_s re-fires its spill timer
        # at the same instant forever (Scheduler._spill); keep at least two pools until that is fixed.
        print("use at least two regions (see the note in main())")
        return 2
    seeds = [int(x) for x in args.seeds.split(",")]
    policies = ["random", "predictive"] + (["oracle"] if args.oracle else [])
    results: dict[str, dict[str, Any]] = {}
    for policy in policies:
        runs = []
        for seed in seeds:
            args.seed = seed
            ranking = "random" if policy == "random" else "predictive"
            cfg = replace(DEFAULT_CONFIG, ranking=ranking, seed=seed, claim_lease_s=args.claim_lease_s)
            runs.append(PolicyRun(args, cfg).run(oracle=policy == "oracle"))
        results[policy] = combine(runs)
    print(
        f"fleet: {args.cars} simulated candidate cars (opt-in {args.opt_in:g}, {args.hw_mix}, regions "
        f"{args.regions}), seeds {args.seeds}, {args.learn_days} day(s) learning + {args.days} measured per "
        f"seed, {args.tasks_per_hour:g} tasks/h, bursts/day {args.bursts_per_day:g}, durations "
        f"x{args.duration_scale:g}, claim_lease_s {args.claim_lease_s:g}"
    )
    print(f"{'metric':<24}" + "".join(f"{p:>14}" for p in policies))
    for c in results["random"]:
        vals = [results[p][c] for p in policies]
        fmt = "{:>14.3f}" if isinstance(vals[0], float) else "{:>14}"
        print(f"{c:<24}" + "".join(fmt.format(v) for v in vals))
    r = results["random"]
    for p in policies[1:]:
        q = results[p]
        for key in ("preempt_rate", "non_lease_preempt_rate", "owner_preempt_rate"):
            ratio = r[key] / q[key] if q[key] > 0 else float("inf")
            print(f"{p}: {key} random/{p}: {ratio:.2f}x (goal >= 2x)")
        print(f"{p}: mean wait {p}/random: {q['wait_mean_s'] / max(r['wait_mean_s'], 1e-9):.2f} (goal <= 1)")
        print(f"{p}: p95 wait {p} vs random: {q['wait_p95_s']:.0f} s vs {r['wait_p95_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
