"""``carnival demo``: the main job. The whole pipeline on a simulated fleet, then what analysts see.

1. make sure the stack runs (start it if not);
2. start every processor (`carnival worker`, one child process each) with logs in the data dir;
3. run the seeded simulator (cars, tasks, emulator runtime, site power) at an accelerated clock;
4. wait until the ClickHouse sink has caught up with every topic;
5. print the analyst report (queries from docs/queries.md), then stop the workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import structlog

from core.settings import Settings

log = structlog.get_logger(__name__)

SINK_GROUP = "carnival-sink"
CATCH_UP_TIMEOUT_S = 300.0

REPORT: list[tuple[str, str]] = [
    (
        # Over the run, from telemetry: once the simulator stops, the silent fleet's leases expire and
        # the scheduler's latest node states are all LEASE_EXPIRED, which says nothing about the run.
        "Idle compute nodes by region (5-minute buckets over the run)",
        "SELECT region, round(avg(idle_nodes), 1) AS avg_idle, max(idle_nodes) AS peak_idle, "
        "round(avg(reporting_nodes), 1) AS avg_reporting FROM carnival.idle_capacity_5m "
        "GROUP BY region ORDER BY region",
    ),
    (
        "Tasks by current state",
        "SELECT state, count() AS tasks FROM (SELECT task_id, argMax(state, (ts, _offset)) AS state "
        "FROM carnival.task_events GROUP BY task_id) GROUP BY state ORDER BY tasks DESC",
    ),
    (
        "Wait time to first assignment by priority (seconds)",
        "SELECT r.priority AS priority, count() AS tasks, "
        "round(quantile(0.5)(dateDiff('millisecond', r.ts, a.first_assigned) / 1000), 1) AS p50_s, "
        "round(quantile(0.95)(dateDiff('millisecond', r.ts, a.first_assigned) / 1000), 1) AS p95_s "
        "FROM carnival.task_requests AS r INNER JOIN (SELECT task_id, min(ts) AS first_assigned "
        "FROM carnival.task_events WHERE state = 'ASSIGNED' GROUP BY task_id) AS a USING task_id "
        "GROUP BY priority ORDER BY priority DESC",
    ),
    (
        "Preemptions and requeues",
        "SELECT countIf(state = 'PREEMPTED') AS preempted, countIf(state = 'REQUEUED') AS requeued, "
        "countIf(state = 'COMPLETED') AS completed, countIf(state = 'FAILED') AS failed "
        "FROM carnival.task_events",
    ),
    (
        "Power incidents by site and kind",
        "SELECT site_id, kind, uniqExact(incident_id) AS incidents, "
        "round(max(transfer_ms), 1) AS max_transfer_ms "
        "FROM carnival.incidents GROUP BY site_id, kind ORDER BY site_id, incidents DESC",
    ),
    (
        "Alerts fired",
        "SELECT severity, kind, uniqExact(fingerprint) AS alerts FROM carnival.alerts "
        "WHERE status = 'FIRING' GROUP BY severity, kind ORDER BY severity, alerts DESC",
    ),
    (
        "Emulator actions",
        "SELECT action, count() AS actions, countIf(NOT ok) AS errors "
        "FROM carnival.actions GROUP BY action ORDER BY actions DESC",
    ),
    (
        "Dead-lettered records",
        "SELECT source_topic, error_kind, count() AS records FROM carnival.deadletter "
        "GROUP BY source_topic, error_kind ORDER BY records DESC",
    ),
]


# With 0.4 tasks per car and hour, demand stays near what the fleet's idle cars serve in an evening
# (300 cars complete about 150 tasks an hour); the simulator's fleet-independent 400/h queues for hours.
TASKS_PER_CAR_HOUR = 0.4
LOOP_BUDGET_WALL_S = 4.0  # wall time an ASSIGN -> emulator -> STARTED round trip may take on a busy laptop


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "CARNIVAL_DATA_DIR": str(settings.data_dir.resolve())}


def worker_overrides(speed: float, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Scheduler settings for an accelerated closed loop.

    Event time drives the scheduler, and the simulated runtime stamps its STARTED report with simulated
    time. The wall-clock latency of the ASSIGN -> emulator -> STARTED round trip (a second or two with
    every processor on one laptop) is multiplied by ``speed`` in simulated time: at 240x a 1.5 s round
    trip is six simulated minutes, far past the 60 s claim timeout, and every assignment would be
    requeued as unclaimed. So the demo gives claims ``LOOP_BUDGET_WALL_S`` of wall time. And the pools
    are the simulated fleet's regions. An operator's own scheduler settings (``CARNIVAL_SCHEDULER_*``,
    the JSON form included) win. The workers run in a child process, so the result is its environment.
    """
    from core.settings import group_env
    from processors.envconfig import settings_of
    from processors.scheduler.wiring_runtime import scheduler_config
    from simulator.config import SimConfig

    settings = settings_of(environ)
    wanted = {
        "claim_timeout_s": max(60.0, round(speed * LOOP_BUDGET_WALL_S)),
        # The fleet's regions are the matching pools: any-region tasks (most high-priority work) are
        # spread over them; without configured pools they all wait in one pool until they spill.
        "pools": list(SimConfig().region_mix),
    }
    given = settings.scheduler.values.keys() | settings.scheduler.config.keys()
    overrides = group_env("scheduler", {k: v for k, v in wanted.items() if k not in given})
    # The child process reads these back through the settings; a value it would reject fails here instead.
    scheduler_config(Settings.from_env({**(os.environ if environ is None else environ), **overrides}))
    return overrides


def start_workers(settings: Settings, speed: float = 1.0) -> subprocess.Popen[bytes]:
    log_path = settings.data_dir.resolve() / "logs" / "workers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "carnival.cli", "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**_env(settings), "CARNIVAL_LOG_FORMAT": "json", **worker_overrides(speed)},
            start_new_session=True,
        )
    tuned = " ".join(f"{k}={v}" for k, v in worker_overrides(speed).items())
    click.echo(f"workers: started (pid {proc.pid}){'; ' + tuned if tuned else ''}; logs in {log_path}")
    return proc


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    click.echo("workers: stopped")


def processor_inputs() -> dict[str, list[str]]:
    """Consumer group -> the topics it reads, for every processor the demo runs."""
    from sinks.config import SINK_TABLES

    return {
        "carnival-scheduler-router": ["fleet.telemetry.v1"],  # telemetry is routed by its own group
        "carnival-scheduler": ["tasks.requests.v1", "tasks.status.v1"],
        "carnival-power": ["power.events.v1"],
        SINK_GROUP: sorted(SINK_TABLES),
    }


def wait_for_processors(settings: Settings, timeout_s: float = CATCH_UP_TIMEOUT_S) -> int:
    """Block until every processor has committed everything it reads (twice in a row, since the
    sink lands what the others emit); return the records still behind at the deadline."""
    from streams.lag import group_lag

    deadline = time.monotonic() + timeout_s
    behind, clean_rounds = -1, 0
    while time.monotonic() < deadline and clean_rounds < 2:
        try:
            lags = {g: sum(group_lag(settings, g, ts).values()) for g, ts in processor_inputs().items()}
            behind = sum(lags.values())
            log.info("pipeline_lag", **lags)
        except Exception as exc:  # noqa: BLE001 - a group may not exist for a moment
            log.info("pipeline_lag_unknown", error=str(exc))
        clean_rounds = clean_rounds + 1 if behind == 0 else 0
        time.sleep(2)
    return behind


def print_report(settings: Settings) -> None:
    from sinks.clickhouse import get_client
    from sinks.query import QueryError, run_query

    client = get_client(settings)
    for title, sql in REPORT:
        click.secho(f"\n== {title}", bold=True)
        try:
            run_query(client, sql, "table", sys.stdout)
        except QueryError as exc:
            click.echo(f"(query failed: {exc})")


def run_demo(
    settings: Settings,
    cars: int,
    start: str,
    duration: str,
    speed: float,
    seed: int,
    sites: int,
    tasks_per_hour: float | None = None,
) -> int:
    from carnival.stack.errors import StackError
    from carnival.stack.lifecycle import stack_status, stack_up

    healthy, _ = stack_status(settings)
    if not healthy:
        try:
            for line in stack_up(settings):
                click.echo(line)
        except StackError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            return 1
    workers = start_workers(settings, speed)
    try:
        time.sleep(8)  # let the faust apps join their groups before the first events arrive
        cmd = [
            sys.executable,
            "-m",
            "carnival.cli",
            "simulate",
            "--cars",
            str(cars),
            "--sites",
            str(sites),
            "--start",
            start,
            "--duration",
            duration,
            "--speed",
            str(speed),
            "--seed",
            str(seed),
        ]
        if tasks_per_hour is not None:
            cmd += ["--tasks-per-hour", str(tasks_per_hour)]
        click.echo(f"simulate: {' '.join(cmd[3:])}")
        sim = subprocess.run(cmd, env=_env(settings))
        if sim.returncode != 0:
            click.secho("error: the simulator failed", fg="red", err=True)
            return 1
        click.echo("waiting for the processors and the ClickHouse sink to catch up ...")
        lag = wait_for_processors(settings)
        if lag:
            click.secho(f"warning: the pipeline is still {lag} records behind", fg="yellow", err=True)
        print_report(settings)
    finally:
        stop_workers(workers)
    click.echo(
        f'\nThe stack is still running: `carnival query "..."` to explore, `carnival stack down` to stop. '
        f"Data in {Path(settings.data_dir).resolve()}"
    )
    return 0
