"""Wiring behind ``carnival simulate``: options -> config, sink, truth, inbox -> run -> summary."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import structlog

from simulator.config import DAY_MS, PLACEMENTS, SimConfig, SiteCompute, habits_profile, site_compute_profile
from simulator.options import INPUT_TOPICS, parse_duration_ms, parse_start_ms
from simulator.runner import RunSummary
from simulator.sinks import JsonlSink, Sink
from simulator.truth import Truth, TruthFile
from simulator.world import World

log = structlog.get_logger("simulator")
RATE_HORIZON_MS = 3650 * DAY_MS  # rate mode: the simulated clock may run years ahead


def build_config(opts: dict[str, Any]) -> SimConfig:
    rate_mode = opts.get("rate") is not None
    config = SimConfig(
        seed=opts["seed"], cars=opts["cars"], sites=opts["sites"], start_ms=parse_start_ms(opts["start"])
    )
    if rate_mode:
        config.duration_ms = RATE_HORIZON_MS
    elif opts.get("duration"):
        config.duration_ms = parse_duration_ms(opts["duration"])
    for opt, attr in (
        ("hw_mix", "hw_mix"),
        ("region_mix", "region_mix"),
        ("profile_mix", "profile_mix"),
        ("opt_in", "opt_in_share"),
        ("faulty_share", "faulty_car_share"),
        ("tasks_per_hour", "tasks_per_hour"),
        ("fault_share", "fault_share"),
    ):
        if opts.get(opt) is not None:
            setattr(config, attr, opts[opt])
    if opts.get("habits"):
        config.habits = habits_profile(opts["habits"])
    config.site_compute = site_compute_from(opts)
    self_assign = opts.get("self_assign")
    config.self_assign = rate_mode if self_assign is None else self_assign
    return config


def site_compute_from(opts: dict[str, Any]) -> SiteCompute:
    """``--site-compute`` [off]; ``--site-slots`` (alone it means ``realistic``), ``--placement-mix``."""
    name = opts.get("site_compute") or ("realistic" if opts.get("site_slots") else "off")
    compute = site_compute_profile(name)
    if opts.get("site_slots"):
        compute = replace(compute, slots=opts["site_slots"])
    if opts.get("placement_mix"):
        unknown = set(opts["placement_mix"]) - set(PLACEMENTS)
        if unknown:
            raise click.BadParameter(
                f"unknown placement(s) {', '.join(sorted(unknown))}; choose from {', '.join(PLACEMENTS)}",
                param_hint="--placement-mix",
            )
        compute = replace(compute, placement_mix=opts["placement_mix"])
    return compute


def parse_topics(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    topics = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in topics if t not in INPUT_TOPICS]
    if unknown:
        raise click.BadParameter(
            f"unknown topic(s) {', '.join(unknown)}; choose from {', '.join(INPUT_TOPICS)}",
            param_hint="--topics",
        )
    return topics


def run_command(opts: dict[str, Any]) -> int:
    from core.settings import get_settings

    settings = get_settings()
    config = build_config(opts)
    topics = parse_topics(opts.get("topics"))
    rate = opts.get("rate")
    speed = 0.0 if opts.get("afap") else float(opts["speed"])
    to_kafka = not opts.get("out_dir") and not opts.get("dry_run")

    truth: Truth = Truth()
    if not opts.get("no_truth"):
        path = opts.get("truth_path") or Path(settings.data_dir) / "simulate" / "truth.jsonl"
        truth = TruthFile(Path(path))

    producer = None
    sink: Sink
    if opts.get("out_dir"):
        sink = JsonlSink(opts["out_dir"], topics)
    elif opts.get("dry_run"):
        sink = Sink(topics)
    else:
        from simulator.sinks import KafkaSink
        from streams.kafka import Producer
        from streams.serde import serde_from_settings

        producer = Producer(settings)
        sink = KafkaSink(producer, serde_from_settings(settings), topics)

    inbox = None
    emulator = opts.get("emulator")
    if emulator if emulator is not None else (to_kafka and rate is None):
        if not to_kafka:
            raise click.UsageError("--emulator needs Kafka (not with --out or --dry-run)")
        from simulator.feed import AssignmentFeed

        inbox = AssignmentFeed(settings)

    world = World(config, sink, truth)
    log.info(
        "simulate_start",
        seed=config.seed,
        cars=config.cars,
        sites=config.sites,
        site_slots=config.site_compute.slots if config.site_compute.enabled else None,
        speed=speed,
        rate=rate,
        start_ms=config.start_ms,
        duration_ms=config.duration_ms if rate is None else None,
        output="kafka" if to_kafka else (str(opts.get("out_dir")) if opts.get("out_dir") else "dry-run"),
        truth=str(getattr(truth, "path", "")) or None,
        emulator_runtime=inbox is not None,
    )
    progress = make_progress(config, rate)
    interrupted = False
    started = time.monotonic()
    try:
        with progress:
            if rate is not None:
                from simulator.rate import run_rate

                wall_s = parse_duration_ms(opts["duration"]) / 1000 if opts.get("duration") else 10.0
                summary = run_rate(world, rate, wall_s, progress.update)
            else:
                from simulator.runner import run_simulation

                summary = run_simulation(world, speed, inbox, progress.update)
    except KeyboardInterrupt:
        interrupted = True
        from simulator.runner import summarize

        sink.flush()
        summary = summarize(world, time.monotonic() - started)
    finally:
        if inbox is not None:
            inbox.close()
        sink.close()
        world.write_open_sessions()
        truth.close()
    print_summary(summary, config, getattr(truth, "path", None), interrupted)
    if interrupted:
        return 130
    if producer is not None and (producer.stats.failed or producer.stats.pending):
        click.secho(
            f"error: {producer.stats.failed + producer.stats.pending} records not delivered: "
            f"{producer.stats.last_error}",
            fg="red",
            err=True,
        )
        return 1
    return 0


class _Progress:
    """Rich progress bar on a terminal; a structured log line every 10 s otherwise."""

    def __init__(self, config: SimConfig, rate: float | None) -> None:
        self.config = config
        self.rate = rate
        self.bar: Any = None
        self.task: Any = None
        self.last_log = 0.0
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
            total = None if self.rate is not None else self.config.duration_ms / 1000
            self.task = self.bar.add_task("simulate", total=total, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, world: World, elapsed: float) -> None:
        sim_s = max(0.0, (world.q.now - self.config.start_ms) / 1000)
        events = world.sink.total
        rate = events / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            info = f"{events:,} events  {rate:,.0f}/s  sim {_fmt_sim(world.q.now)}"
            if self.rate is None:
                self.bar.update(self.task, completed=sim_s, info=info)
            else:
                self.bar.update(self.task, info=info)
        elif elapsed - self.last_log >= 10.0:
            self.last_log = elapsed
            log.info(
                "simulate_progress",
                sim_time=_fmt_sim(world.q.now),
                events=events,
                events_per_s=round(rate),
                tasks=world.counters["tasks"],
                wall_s=round(elapsed, 1),
            )


def make_progress(config: SimConfig, rate: float | None) -> _Progress:
    return _Progress(config, rate)


def _fmt_sim(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_summary(summary: RunSummary, config: SimConfig, truth_path: Path | None, interrupted: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="carnival simulate" + (" (interrupted)" if interrupted else ""), show_edge=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for topic in sorted(summary.counts):
        table.add_row(topic, f"{summary.counts[topic]:,}")
    table.add_row("[b]events[/b]", f"[b]{summary.events:,}[/b]")
    c = summary.counters
    table.add_row("tasks requested", f"{c.get('tasks', 0):,}")
    for key in sorted(c):
        if key.startswith(("sessions_", "assignments_", "fault_", "site_")) or key in (
            "failovers",
            "long_islands",
            "faults_injected",
            "task_bursts",
        ):
            table.add_row(key.replace("_", " "), f"{c[key]:,}")
    for key in (
        "telemetry_duplicated",
        "telemetry_delayed",
        "telemetry_out_of_enum",
        "power_late",
        "power_reordered",
        "power_duplicated",
    ):
        if c.get(key):
            table.add_row(key.replace("_", " "), f"{c[key]:,}")
    for key, value in summary.extra.items():
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, (int, float)) else str(value))
    if summary.delivered is not None:
        table.add_row("delivered / failed", f"{summary.delivered:,} / {summary.failed:,}")
    table.add_row("simulated", f"{_fmt_sim(summary.sim_start_ms)} -> {_fmt_sim(summary.sim_end_ms)}")
    table.add_row("wall seconds", f"{summary.wall_s:.1f}")
    table.add_row("events/s (wall)", f"{summary.events / max(summary.wall_s, 1e-9):,.0f}")
    if truth_path is not None:
        table.add_row("truth", f"{summary.truth_rows:,} rows -> {truth_path}")
    Console(stderr=True).print(table)
    log.info(
        "simulate_done",
        events=summary.events,
        per_topic=summary.counts,
        wall_s=round(summary.wall_s, 2),
        interrupted=interrupted,
        **{k: v for k, v in summary.extra.items() if v is not None},
    )
