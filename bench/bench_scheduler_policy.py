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
  8 tasks/h on 60 cars (20/h on 150 before issue 13): a few percent of the idle nodes are busy on
  average. 60 cars and five seeds keep a default run (15 runs, ``--jobs 2``) to a few minutes of CPU
  per core; ``--cars 150 --tasks-per-hour 20`` is the older, larger setting.

Measured, per policy:
- preemptions: assignments whose node was lost before the task ended (the scheduler's PREEMPTED
  events, or FAILED ``abandoned: owner_returned`` reports, whichever came first), as a share of
  assignments that STARTED, by cause: ``owner`` (gear left P, cable out, ... or the owner_returned
  report), ``departure`` (DEPARTURE_SOON: the scheduled departure came near), ``lease`` (LEASE_EXPIRED:
  the car stopped reporting for longer than ``claim_lease_s``; in the simulator always a weak-Wi-Fi gap
  of a parked, awake, plugged car, which no ranking by idle time can foresee);
- preemptions where a choice existed (``choice_*``): only assignments for which at least one other
  feasible node (same pool, enough hardware and SoC, eligible) was idle when the task was placed: the
  only place where any ranking can matter;
- wait: request -> first ASSIGN (mean, p50/p95/p99, tasks requested in the measured window), and
  request -> COMPLETED;
- completed tasks, expired tasks, tasks given up (final FAILED: ``MAX_FAILURES`` / ``MAX_ATTEMPTS``),
  of which ``gave_up_owner`` because of an owner's return (``owner_returned`` or ``node_unavailable``);
- utilisation of eligible idle node-hours while work waits: sampled every tick, in each pool with a
  queued task: nodes running work / (nodes running work + free eligible nodes with enough hardware for
  one of the queued tasks); ``wait_node_h`` is how many node-hours that covers (little without bursts);
- wasted compute: node-seconds from STARTED to the loss of every preempted assignment.

Owner habits: ``--habits realistic`` (the default here; ``off`` is the project's original fleet, as in
the table of docs/scheduler.md before issue 13): cars doze off after charging, the owner walks up
2-12 minutes before the drive-off (the emulator abandons work with ``owner_returned`` and refuses new
work), announced departures are late, early or skipped per owner, fast charges end at full, gig drivers,
Wi-Fi quality per location (see ``simulator.config.Habits``).

Policies (``--policies``): ``random``; ``predictive`` (the scheduler's ``prediction.stay_probability``);
``legacy`` (the pre-issue-13 session model, ``prediction.habit_stay_probability``, for comparison); and
``oracle``, non-deployable, a ceiling: the predictive ranking with the probability replaced by the
simulator's truth (the car's next planned trip, the owner-back window, the end of a fast charge, sleep,
and the scheduled departure guard). It shows how much any ranking by idle time could gain on this fleet.

Run: ``python bench/bench_scheduler_policy.py [--cars 150 --days 1 --learn-days 2 --seeds 7,8,9,10,11]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.scheduler import (  # noqa: E402
    DEFAULT_CONFIG,
    InvalidRecord,
    Out,
    Scheduler,
    SchedulerConfig,
    evaluate,
)
from processors.scheduler import matching as _matching  # noqa: E402
from processors.scheduler import prediction as _prediction  # noqa: E402
from processors.scheduler.config import HW_RANK  # noqa: E402

DAY_MS = 86_400_000
TICK_MS = 5_000
CAUSES = ("owner", "departure", "lease")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def p95(values: list[float]) -> float:
    return pct(values, 0.95)


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
        from simulator.config import habits_profile, parse_mix
        from simulator.sinks import Sink

        self.sched = Scheduler(config)
        self.started_at: dict[str, int] = {}  # assignment id -> STARTED (measured tasks)
        self.choice: dict[str, bool] = {}  # assignment id -> another feasible node was idle
        self.picked: dict[str, bool] = {}  # task id -> choice of its latest pick (until its ASSIGNED)
        self.waste_s = 0.0
        self.gave_up = 0
        self.gave_up_owner = 0
        self.busy_node_s = 0.0  # while work waits: nodes running work, node-seconds
        self.idle_node_s = 0.0  # while work waits: free eligible nodes that could take a queued task
        pick = self.sched._pick

        def counting_pick(pool: Any, task: Any, now: int) -> Any:
            node = pick(pool, task, now)
            if node is not None:
                self.picked[task.task_id] = self.feasible_others(pool, task, node, now) > 0
            return node

        self.sched._pick = counting_pick  # type: ignore[method-assign]
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
            habits=habits_profile(args.habits),
        )
        self.world = World(sim, FeedSink())
        self.measure_from = sim.start_ms + args.learn_days * DAY_MS
        self.end = sim.end_ms

    def feasible_others(self, pool: Any, task: Any, chosen: Any, now: int) -> int:
        """Free nodes of ``pool`` other than ``chosen`` that could have taken ``task`` now."""
        s, need_hw, need_soc = self.sched, HW_RANK.get(task.min_hw, 0), task.min_soc_pct
        n = 0
        for shard in pool.free.values():
            for vin in shard:
                node = s.nodes[vin]
                if vin == chosen.vin or HW_RANK.get(node.hw, 0) < need_hw:
                    continue
                if need_soc is not None and (node.soc_pct is None or node.soc_pct < need_soc):
                    continue
                n += evaluate(node, now, s.cfg)[0]
        return n

    def lose(self, aid: str, cause: str) -> None:
        if aid in self.lost:
            return
        self.lost[aid] = cause
        if aid in self.started_at:
            self.waste_s += (self.world.now - self.started_at[aid]) / 1000.0

    def sample_utilisation(self) -> None:
        s = self.sched
        for pool in s._pools.values():
            if not pool.queue:
                continue
            need = min(HW_RANK.get(s.tasks[tid].min_hw, 0) for _, tid in pool.queue)
            free = sum(HW_RANK.get(s.nodes[v].hw, 0) >= need for shard in pool.free.values() for v in shard)
            busy = sum(1 for n in s.nodes.values() if n.pool == pool.name and n.running)
            self.busy_node_s += busy * TICK_MS / 1000.0
            self.idle_node_s += free * TICK_MS / 1000.0

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
                aid = rec["assignment_id"]
                if rec["status"] == "STARTED" and rec["task_id"] in self.requested:
                    self.started.add(aid)
                    self.started_at.setdefault(aid, now)
                if rec["status"] == "FAILED" and "abandoned: owner_returned" in (rec.get("error") or ""):
                    self.lose(aid, "owner")
                outs = s.on_status(rec, now=now)
            else:
                return
        except InvalidRecord:
            self.invalid += 1
            return
        self.apply(outs)

    def tick(self) -> None:
        self.apply(self.sched.on_tick(self.world.now))
        if self.world.now >= self.measure_from:
            self.sample_utilisation()
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
                    self.choice[v["assignment_id"]] = self.picked.pop(v["task_id"], False)
                elif st == "PREEMPTED":
                    self.lose(v["assignment_id"], cause_of(v["reason"]))
                elif st == "COMPLETED":
                    self.completed[v["task_id"]] = now
                elif st == "EXPIRED":
                    self.expired += 1
                elif st == "FAILED" and (v.get("reason") or "").startswith("MAX_"):
                    self.gave_up += 1
                    reason = v["reason"]
                    self.gave_up_owner += "owner_returned" in reason or "node_unavailable" in reason

    def oracle_probability(self, node: Any, duration_s: float, now: int, cfg: SchedulerConfig) -> float:
        """Not deployable: the simulator's truth. 1 when the car's next planned trip (less the owner-back
        window, and the end of a fast charge, and the scheduled departure guard) is beyond the task with a
        1.5x margin (true run times vary), else a share; 0 for a dozing or owner-attended car."""
        car = self.world.by_vin[node.vin]
        if car.owner_present or not car.awake:
            return 0.0
        end = car.next_departure(now) or now + 10 * DAY_MS
        if car.habits.owner_back_min[1] > 0:
            end -= int(car.habits.owner_back_min[1] * 60_000)
        if car.habits.fast_charge_to_full and car.plugged and car.charger_kw >= 50:
            car.advance(now)
            end = min(end, car.charge_done_at() - int(car.habits.owner_back_min[1] * 60_000))
        dep = node.scheduled_departure
        guard = cfg.departure_guard_s * 1000
        if dep is not None and dep + guard > now:
            end = min(end, int(dep - guard))
        left = (end - now) / 1000.0
        need = 1.5 * duration_s
        return 1.0 if left >= need else 0.5 * max(0.0, left) / need

    def run(self, policy: str) -> dict[str, Any]:
        w = self.world
        real = _matching.stay_probability
        if policy == "oracle":
            _matching.stay_probability = self.oracle_probability  # type: ignore[assignment]
        elif policy == "legacy":
            _matching.stay_probability = _prediction.habit_stay_probability
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
        with_choice = [a for a in self.started if self.choice.get(a)]
        return {
            "tasks": len(self.requested),
            "started": len(self.started),
            "preempted": len(lost),
            **{f"preempted_{c}": lost.count(c) for c in CAUSES},
            "choice_started": len(with_choice),
            "choice_preempted": sum(a in self.lost for a in with_choice),
            "waits": waits,
            "never_assigned": len(self.requested) - len(waits),
            "completed": len(done),
            "turnaround": done,
            "expired": self.expired,
            "gave_up": self.gave_up,
            "gave_up_owner": self.gave_up_owner,
            "wasted_node_s": int(self.waste_s),
            "busy_node_s": int(self.busy_node_s),
            "idle_node_s": int(self.idle_node_s),
            "telemetry": self.sched.counters["telemetry_applied"],
            "seconds": elapsed,
        }


def run_one(args: argparse.Namespace, policy: str, seed: int) -> dict[str, Any]:
    """One (policy, seed) run; a top-level function so that ``--jobs`` can run it in another process."""
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    ranking: Literal["random", "predictive"] = "random" if policy == "random" else "predictive"
    cfg = replace(DEFAULT_CONFIG, ranking=ranking, seed=seed, claim_lease_s=args.claim_lease_s)
    return PolicyRun(args, cfg).run(policy)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum counts over seeds; rates from the sums; waits pooled over seeds."""
    total = {k: sum(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], int)}
    started = max(1, total["started"])
    waits = [x for r in runs for x in r["waits"]]
    done = [x for r in runs for x in r["turnaround"]]
    waiting = total["busy_node_s"] + total["idle_node_s"]
    return {
        **total,
        "preempt_rate": total["preempted"] / started,
        **{f"{c}_preempt_rate": total[f"preempted_{c}"] / started for c in CAUSES},
        "non_lease_preempt_rate": (total["preempted"] - total["preempted_lease"]) / started,
        "choice_preempt_rate": total["choice_preempted"] / max(1, total["choice_started"]),
        "wait_mean_s": statistics.fmean(waits) if waits else float("nan"),
        "wait_p50_s": pct(waits, 0.5),
        "wait_p95_s": p95(waits),
        "wait_p99_s": pct(waits, 0.99),
        "wait_node_h": waiting / 3600.0,
        "utilisation_waiting": total["busy_node_s"] / waiting if waiting else float("nan"),
        "wasted_node_h": total["wasted_node_s"] / 3600.0,
        "turnaround_mean_s": statistics.fmean(done) if done else float("nan"),
        "seconds": sum(r["seconds"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cars", type=int, default=60)
    ap.add_argument("--days", type=int, default=1, help="measured days")
    ap.add_argument("--learn-days", type=int, default=2, help="days before measuring (history is learned)")
    ap.add_argument("--tasks-per-hour", type=float, default=8.0)
    ap.add_argument("--bursts-per-day", type=float, default=0.0)
    ap.add_argument("--duration-scale", type=float, default=3.0, help="x the simulator's task medians")
    ap.add_argument("--regions", default="us-west=1,us-east=1", help="region mix = matching pools")
    ap.add_argument("--hw-mix", default="HW4=85,HW5=15")
    ap.add_argument("--opt-in", type=float, default=1.0)
    ap.add_argument(
        "--seeds", default="7,8,9,10,11", help="comma-separated seeds; counts are summed over them"
    )
    ap.add_argument(
        "--policies",
        default="random,predictive,oracle",
        help="comma-separated, from random, predictive, legacy (pre-issue-13 model), oracle (truth ceiling)",
    )
    ap.add_argument("--oracle", action="store_true", help="add oracle to --policies (kept for old commands)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (one per core)")
    ap.add_argument("--habits", default="realistic", choices=["off", "realistic"], help="simulator habits")
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
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.oracle and "oracle" not in policies:
        policies.append("oracle")
    if not policies or not set(policies) <= {"random", "predictive", "legacy", "oracle"}:
        print("--policies: any of random, predictive, legacy, oracle")
        return 2
    t0 = time.perf_counter()
    jobs = [(policy, seed) for policy in policies for seed in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(run_one, [args] * len(jobs), *zip(*jobs, strict=True)))
    else:
        done = [run_one(args, policy, seed) for policy, seed in jobs]
    results = {p: combine([r for (q, _), r in zip(jobs, done, strict=True) if q == p]) for p in policies}
    wall = time.perf_counter() - t0
    print(
        f"fleet: {args.cars} simulated candidate cars (opt-in {args.opt_in:g}, {args.hw_mix}, regions "
        f"{args.regions}), seeds {args.seeds}, {args.learn_days} day(s) learning + {args.days} measured per "
        f"seed, {args.tasks_per_hour:g} tasks/h, bursts/day {args.bursts_per_day:g}, durations "
        f"x{args.duration_scale:g}, claim_lease_s {args.claim_lease_s:g}, habits {args.habits}; "
        f"wall {wall:.0f} s"
    )
    print(f"{'metric':<24}" + "".join(f"{p:>14}" for p in policies))
    for c in results[policies[0]]:
        vals = [results[p][c] for p in policies]
        fmt = "{:>14.3f}" if isinstance(vals[0], float) else "{:>14}"
        print(f"{c:<24}" + "".join(fmt.format(v) for v in vals))
    r = results.get("random")
    o = results.get("oracle")
    if r is None:
        return 0
    for p in [p for p in policies if p != "random"]:
        q = results[p]
        for key in ("preempt_rate", "non_lease_preempt_rate", "owner_preempt_rate"):
            ratio = r[key] / q[key] if q[key] > 0 else float("inf")
            print(f"{p}: {key} random/{p}: {ratio:.2f}x (goal >= 1.5x)")
        if o is not None and p != "oracle":
            gain = r["choice_preempt_rate"] - o["choice_preempt_rate"]
            share = (r["choice_preempt_rate"] - q["choice_preempt_rate"]) / gain if gain > 0 else float("nan")
            print(
                f"{p}: where a choice existed, share of the oracle's reduction vs random: {share:.0%} "
                f"(goal >= 80 %; random {r['choice_preempt_rate']:.3f}, {p} {q['choice_preempt_rate']:.3f}, "
                f"oracle {o['choice_preempt_rate']:.3f})"
            )
        print(f"{p}: p99 wait {p} vs random: {q['wait_p99_s']:.0f} s vs {r['wait_p99_s']:.0f} s (goal <=)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
