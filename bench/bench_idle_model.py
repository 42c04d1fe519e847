"""Calibration of the idle-time model: the context model (``prediction.stay_probability``) vs the session
model before issue 13 (``prediction.habit_stay_probability``), on held-out simulated days.

The project's simulator (``simulator.World``, owner habits ``--habits realistic`` by default) feeds its
telemetry into a ``processors.scheduler.Scheduler`` (no tasks: only what the scheduler learns from
telemetry, as in production). The first ``--train-days`` only teach the models (each car's history);
on the later days, every ``--sample-min`` simulated minutes, every eligible idle node is asked
P(stay >= d) for each duration of ``--durations`` by both models. Predictions are made online, before
the outcome, so every scored prediction is out of sample.

The outcome comes from the simulator's truth, as the node would have fared holding a task of ``d``
seconds from then: lost if, within ``d``, the owner came back (``owner_back``, or the drive-off /
unplug when the owner-back habit is off), the cable came out (fast charge ended at full), the car
was silent longer than ``claim_lease_s`` (a Wi-Fi gap), the scheduler's departure guard fell due
(``scheduled_departure - departure_guard_s`` as the scheduler saw it), or the car was already dozing
(it would not hear the ASSIGN). Samples whose window passes the end of the run are dropped.

Printed: Brier score and log loss of both models (lower is better), a reliability table (mean predicted
vs observed stay probability per predicted-probability bucket, with counts) and the same by context
(at home or not, by local time of day). The reliability diagram is drawn as an SVG at ``--svg``.

Run: ``python bench/bench_idle_model.py [--cars 120 --days 5 --train-days 3 --seed 7 --svg PATH]``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.scheduler import DEFAULT_CONFIG, InvalidRecord, Scheduler  # noqa: E402
from processors.scheduler.prediction import habit_stay_probability, stay_probability  # noqa: E402

DAY_MS = 86_400_000
TICK_MS = 30_000
EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0001)
MODELS = ("session", "context")  # habit_stay_probability (before issue 13), stay_probability


class Calibration:
    def __init__(self, args: argparse.Namespace) -> None:
        from simulator import SimConfig, World
        from simulator.config import habits_profile, parse_mix
        from simulator.sinks import Sink
        from simulator.truth import TruthList

        self.cfg = DEFAULT_CONFIG
        self.sched = Scheduler(self.cfg)
        self.durations = [float(x) for x in args.durations.split(",")]
        self.sample_ms = int(args.sample_min * 60_000)
        self.samples: list[tuple[str, int, float, int | None, bool, bool | None, float, float]] = []
        run = self

        class FeedSink(Sink):
            def write(self, topic: str, key: str, record: dict[str, Any]) -> None:
                if topic == "fleet.telemetry.v1":
                    with contextlib.suppress(InvalidRecord):
                        run.sched.on_telemetry(record, now=run.world.now)

        sim = SimConfig(
            seed=args.seed,
            cars=args.cars,
            duration_ms=args.days * DAY_MS,
            tasks_per_hour=0,
            region_mix=parse_mix("us-west=1,us-east=1"),
            hw_mix=parse_mix("HW4=85,HW5=15"),
            opt_in_share=1.0,
            sites=0,
            habits=habits_profile(args.habits),
        )
        self.truth = TruthList()
        self.world = World(sim, FeedSink(), self.truth)
        self.score_from = sim.start_ms + args.train_days * DAY_MS
        self.end = sim.end_ms

    def tick(self) -> None:
        self.sched.on_tick(self.world.now)
        self.world.q.schedule(self.world.now + TICK_MS, self.tick)

    def sample(self) -> None:
        now, cfg = self.world.now, self.cfg
        for node in self.sched.nodes.values():
            if not node.eligible or node.running:
                continue
            car = self.world.by_vin[node.vin]
            for d in self.durations:
                p_old = habit_stay_probability(node, d, now, cfg)  # pure: ask it first
                p_new = stay_probability(node, d, now, cfg)
                if now >= self.score_from:
                    self.samples.append(
                        (
                            node.vin,
                            now,
                            d,
                            node.scheduled_departure,
                            not car.awake,
                            node.at_home,
                            p_old,
                            p_new,
                        )
                    )
        self.world.q.schedule(now + self.sample_ms, self.sample)

    def losses(self) -> dict[str, list[int]]:
        """Per vin, sorted instants at which a node holding work would have lost it."""
        lease_ms = int(self.cfg.claim_lease_s * 1000)
        out: dict[str, list[int]] = defaultdict(list)
        for r in self.truth.items:
            t = r["type"]
            if t == "owner_back":
                out[r["vin"]].append(r["ts"])
            elif t == "charge_session":  # the drive-off or the end of a fast charge
                out[r["vin"]].append(r["unplug"])
            elif t == "wifi_gap" and r["end"] - r["start"] > lease_ms:
                out[r["vin"]].append(r["start"] + lease_ms)
        return {vin: sorted(ts) for vin, ts in out.items()}

    def run(self) -> list[tuple[float, float, int, bool | None, int, float]]:
        w = self.world
        w.start()
        w.q.schedule(w.config.start_ms + TICK_MS, self.tick)
        w.q.schedule(w.config.start_ms + self.sample_ms, self.sample)
        w.run_until(self.end)
        losses = self.losses()
        guard = self.cfg.departure_guard_s * 1000
        scored = []
        for vin, t, d, dep, asleep, at_home, p_old, p_new in self.samples:
            end = t + int(d * 1000)
            if end > self.end:
                continue
            lost = asleep or (dep is not None and t < dep - guard <= end)
            ts = losses.get(vin, [])
            i = bisect.bisect_right(ts, t)
            lost = lost or (i < len(ts) and ts[i] <= end)
            local_h = ((t / 3_600_000.0) + self.cfg.utc_offset_h(self.sched.nodes[vin].region)) % 24
            scored.append((p_old, p_new, 0 if lost else 1, at_home, int(local_h), d))
        return scored


def scores(ps: list[float], ys: list[int]) -> tuple[float, float]:
    brier = sum((p - y) ** 2 for p, y in zip(ps, ys, strict=True)) / len(ys)
    eps = 1e-4
    ll = -sum(
        math.log(min(1 - eps, max(eps, p))) if y else math.log(1 - min(1 - eps, max(eps, p)))
        for p, y in zip(ps, ys, strict=True)
    ) / len(ys)
    return brier, ll


def reliability(ps: list[float], ys: list[int]) -> list[tuple[float, float, float, int]]:
    """Per bucket of ``EDGES``: (lower edge, mean predicted, observed share, count)."""
    rows = []
    for lo, hi in zip(EDGES, EDGES[1:], strict=False):
        idx = [i for i, p in enumerate(ps) if lo <= p < hi]
        if idx:
            rows.append(
                (lo, sum(ps[i] for i in idx) / len(idx), sum(ys[i] for i in idx) / len(idx), len(idx))
            )
    return rows


def write_svg(path: Path, curves: dict[str, list[tuple[float, float, float, int]]], title: str) -> None:
    size, pad = 420, 50
    colors = {"session": "#d95f02", "context": "#1b9e77"}

    def xy(px: float, py: float) -> tuple[float, float]:
        return pad + px * (size - 2 * pad), size - pad - py * (size - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" font-family="sans-serif"'
        ' font-size="11">',
        f'<rect width="{size}" height="{size}" fill="white"/>',
        f'<text x="{size / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>',
    ]
    x0, y0 = xy(0, 0)
    x1, y1 = xy(1, 1)
    parts.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#999"/>')
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#bbb" stroke-dasharray="4 3"/>')
    for k in range(0, 11, 2):
        gx, gy = xy(k / 10, 0)
        parts.append(f'<text x="{gx}" y="{gy + 14}" text-anchor="middle">{k / 10:.1f}</text>')
        hx, hy = xy(0, k / 10)
        parts.append(f'<text x="{hx - 6}" y="{hy + 4}" text-anchor="end">{k / 10:.1f}</text>')
    parts.append(f'<text x="{size / 2}" y="{size - 12}" text-anchor="middle">predicted P(stay)</text>')
    parts.append(
        f'<text x="14" y="{size / 2}" text-anchor="middle" transform="rotate(-90 14 {size / 2})">'
        "observed share that stayed</text>"
    )
    for n, (name, rows) in enumerate(curves.items()):
        pts = [xy(m, o) for _, m, o, _ in rows]
        path_d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        c = colors.get(name, "#333")
        parts.append(f'<polyline points="{path_d}" fill="none" stroke="{c}" stroke-width="2"/>')
        total = sum(r[3] for r in rows)
        for (x, y), row in zip(pts, rows, strict=True):
            r = 2 + 5 * math.sqrt(row[3] / total)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{c}" fill-opacity="0.6"/>')
        lx, ly = xy(0.05, 0.95 - 0.06 * n)
        parts.append(f'<text x="{lx}" y="{ly}" fill="{c}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cars", type=int, default=120)
    ap.add_argument("--days", type=int, default=5, help="simulated days in all")
    ap.add_argument("--train-days", type=int, default=3, help="first days: learning only, not scored")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--habits", default="realistic", choices=["off", "realistic"])
    ap.add_argument("--sample-min", type=float, default=10.0, help="simulated minutes between looks")
    ap.add_argument("--durations", default="900,3600,10800", help="task durations asked, seconds")
    ap.add_argument("--svg", type=Path, default=Path("/tmp/carnival-idle-calibration.svg"))
    args = ap.parse_args(argv)
    if args.train_days >= args.days:
        print("--train-days must be less than --days")
        return 2
    t0 = time.perf_counter()
    scored = Calibration(args).run()
    wall = time.perf_counter() - t0
    if not scored:
        print("no scored samples")
        return 1
    ys = [s[2] for s in scored]
    print(
        f"fleet: {args.cars} cars (all opted in, HW4/HW5, us-west + us-east), seed {args.seed}, habits "
        f"{args.habits}, {args.train_days} day(s) learning + {args.days - args.train_days} scored, a look "
        f"every {args.sample_min:g} min at every eligible idle node for d in {args.durations} s; "
        f"{len(scored)} scored predictions, {sum(ys) / len(ys):.3f} stayed; wall {wall:.0f} s"
    )
    print(f"{'model':<10}{'Brier':>10}{'log loss':>10}")
    preds = {MODELS[0]: [s[0] for s in scored], MODELS[1]: [s[1] for s in scored]}
    for name in MODELS:
        b, ll = scores(preds[name], ys)
        print(f"{name:<10}{b:>10.4f}{ll:>10.4f}")
    curves = {}
    print("\nreliability: predicted bucket -> mean predicted / observed stay share (count)")
    print(f"{'bucket':<8}" + "".join(f"{name:>30}" for name in MODELS))
    tables = {name: {r[0]: r for r in reliability(preds[name], ys)} for name in MODELS}
    for lo in EDGES[:-1]:
        cells = []
        for name in MODELS:
            r = tables[name].get(lo)
            cells.append(f"{r[1]:.3f} / {r[2]:.3f} ({r[3]:>6})" if r else "-")
        print(f"{lo:<8.2f}" + "".join(f"{c:>30}" for c in cells))
    for name in MODELS:
        curves[name] = sorted(tables[name].values())
    print("\nby context: mean predicted (session / context) vs observed, count")
    groups: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for p_old, p_new, y, at_home, hour, d in scored:
        place = "home" if at_home else ("away" if at_home is False else "unknown")
        block = ("00-05", "05-09", "09-16", "16-20", "20-24")[bisect.bisect_right([5, 9, 16, 20], hour)]
        groups[f"{place} {block} d={d / 3600:g}h"].append((p_old, p_new, y))
    for key in sorted(groups):
        g = groups[key]
        if len(g) < 50:
            continue
        mo = sum(x[0] for x in g) / len(g)
        mn = sum(x[1] for x in g) / len(g)
        ob = sum(x[2] for x in g) / len(g)
        print(f"{key:<24} {mo:.3f} / {mn:.3f} vs {ob:.3f} ({len(g)})")
    write_svg(args.svg, curves, f"idle model calibration, held-out days (seed {args.seed}, {args.habits})")
    print(f"\nreliability diagram: {args.svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
