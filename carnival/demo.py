"""``carnival demo``: the main job. The whole pipeline on a simulated fleet, then a report that checks
itself against the simulator's ground truth.

1. make sure the stack runs (start it if not) and its schema is current;
2. start the alert webhook receiver (in this process, rows to ``alert_deliveries``), every processor
   (`carnival worker`) and the alert router (`carnival alerts route --webhook <receiver>`), logs in the
   data dir;
3. run the seeded simulator (cars, tasks, emulator runtime, site power) at an accelerated clock, with a
   live status line (simulated time, events/s, lag per processor);
4. wait until every processor, the sink and the router have caught up; recompute the owner ledger;
5. print the analyst tables and the checked report (carnival/report/); stop what was started.
Exit 1 when a check fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import structlog

from carnival.stack.security import principal_env
from core.settings import Settings
from processors.groups import ALERT_ROUTER, POWER, SCHEDULER, TELEMETRY_ROUTER
from streams.topics import POWER_EVENTS_TOPIC, REQUESTS_TOPIC, STATUS_TOPIC

log = structlog.get_logger(__name__)

SINK_GROUP = "carnival-sink"
CATCH_UP_TIMEOUT_S = 300.0
SAMPLE_EVERY_S = 3.0
LEDGER_MARGIN = timedelta(minutes=5)  # runs reported just after the simulated end still count

# With 0.4 tasks per car and hour, demand stays near what the fleet's idle cars serve in an evening
# (300 cars complete about 150 tasks an hour); the simulator's fleet-independent 400/h queues for hours.
TASKS_PER_CAR_HOUR = 0.4
# Wall time an ASSIGN -> emulator -> STARTED round trip may take. It includes how far the scheduler's
# event-time clock trails the simulator: on a loaded 2-core machine that reached 10-45 s of wall time at
# 240x (the report's round-trip section measures it), and 4 s threw away half the runs as unclaimed
# after they had started. In the demo an ASSIGN the node cannot take is refused at once (FAILED), so a
# long claim budget only delays the rare silent node.
LOOP_BUDGET_WALL_S = 30.0


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "CARNIVAL_DATA_DIR": str(settings.data_dir.resolve())}


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the demo dies, so a killed demo leaves no workers behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - spawned before the demo starts any thread
        )
    tuned = " ".join(f"{k}={v}" for k, v in worker_overrides(speed).items())
    click.echo(f"workers: started (pid {proc.pid}){'; ' + tuned if tuned else ''}; logs in {log_path}")
    return proc


def start_router(settings: Settings, webhook_url: str) -> subprocess.Popen[bytes]:
    """`carnival alerts route` delivering alerts.v1 to the demo's receiver (retries up to 2 s apart; 30 s
    per attempt, since on a loaded machine the receiver's ClickHouse insert can take longer than 5 s)."""
    log_path = settings.data_dir.resolve() / "logs" / "alert-router.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "carnival.cli", "alerts", "route", "--webhook", webhook_url,
             "--group-id", ALERT_ROUTER.group, "--max-backoff", "2", "--timeout", "30"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**_env(settings), "CARNIVAL_LOG_FORMAT": "json", **principal_env(settings, "router")},
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - spawned before the demo starts any thread
        )  # fmt: skip
    click.echo(f"alerts: router started (pid {proc.pid}) -> {webhook_url}; logs in {log_path}")
    return proc


def start_dashboard(settings: Settings, port: int | None) -> Any:
    """The live dashboard, served from a thread of this process while the demo runs (None: not wanted,
    or the port is taken: the demo goes on without it)."""
    if port is None:
        return None
    import threading

    from carnival.dashboard.server import DashboardServer

    try:
        server = DashboardServer(settings, "127.0.0.1", port)
    except OSError as exc:
        message = f"dashboard: not started on port {port}: {exc} (see --dashboard-port)"
        click.secho(message, fg="yellow", err=True)
        return None
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    click.echo(f"dashboard: {server.url}  (live while the demo runs)")
    return server


def stop_process(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    click.echo(f"{name}: stopped")


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, "workers")


def processor_inputs() -> dict[str, list[str]]:
    """Consumer group -> the topics it reads that must be fully committed before the report."""
    from sinks.config import SINK_TABLES

    return {
        TELEMETRY_ROUTER.group: list(TELEMETRY_ROUTER.topics),  # telemetry is routed by its own group
        # (not the lifecycle it reads back: ticks add records to it while the demo waits)
        SCHEDULER.group: [REQUESTS_TOPIC, STATUS_TOPIC],
        POWER.group: list(POWER.topics),
        SINK_GROUP: sorted(SINK_TABLES),
        ALERT_ROUTER.group: list(ALERT_ROUTER.topics),
    }


LABELS = {
    TELEMETRY_ROUTER.group: "router",
    SCHEDULER.group: "sched",
    POWER.group: "power",
    SINK_GROUP: "sink",
    ALERT_ROUTER.group: "alerts",
}


def lag_views() -> dict[str, tuple[str, list[str]]]:
    """Status line label -> (group, topics). ``pools`` (the routed telemetry the scheduler reads) is shown
    but not waited for: idle, the scheduler still leaves a few offsets per partition uncommitted there."""
    from processors.scheduler.wiring_runtime import BYPOOL_TOPIC

    views = {LABELS[g]: (g, topics) for g, topics in processor_inputs().items()}
    views["pools"] = ("carnival-scheduler", [BYPOOL_TOPIC])
    return views


class Status:
    """Samples the pipeline every SAMPLE_EVERY_S and shows it on the status line."""

    def __init__(self, settings: Settings) -> None:
        from carnival.status import PipelineMonitor, StatusLine
        from simulator.options import INPUT_TOPICS

        self.monitor = PipelineMonitor(settings, lag_views(), list(INPUT_TOPICS))
        self.line = StatusLine()
        self.last = self.monitor.sample()

    def tick(self, phase: str, sim_ms: int | None) -> Any:
        from carnival.status import format_status

        time.sleep(SAMPLE_EVERY_S)
        sample = self.monitor.sample()
        dt = max(sample.at - self.last.at, 1e-9)
        rate = max(0, sample.produced - self.last.produced) / dt if sample.produced else 0.0
        if sample.produced:
            self.last = sample
        sim = None if sim_ms is None else datetime.fromtimestamp(sim_ms / 1000, UTC).isoformat()
        fields = {"phase": phase, "sim_time": sim, "events_per_s": round(rate), **sample.lags}
        self.line.show(format_status(phase, sim_ms, rate, sample), fields)
        return sample

    def close(self) -> None:
        self.line.close()
        self.monitor.close()


def wait_for_processors(status: Status, timeout_s: float = CATCH_UP_TIMEOUT_S) -> int:
    """Block until every processor has committed everything it reads (twice in a row, since the
    sink lands what the others emit); return the records still behind at the deadline."""
    deadline = time.monotonic() + timeout_s
    behind, clean_rounds = -1, 0
    while time.monotonic() < deadline and clean_rounds < 2:
        sample = status.tick("catch-up", None)
        behind = -1 if sample.error else sum(n for label, n in sample.lags.items() if label != "pools")
        clean_rounds = clean_rounds + 1 if behind == 0 else 0
    return behind


def print_tables(settings: Settings) -> None:
    from carnival.report.queries import ANALYST_TABLES
    from sinks.clickhouse import get_client
    from sinks.query import QueryError, run_query

    client = get_client(settings)
    for title, sql in ANALYST_TABLES:
        click.secho(f"\n== {title}", bold=True)
        try:
            run_query(client, sql, "table", sys.stdout)
        except QueryError as exc:
            click.echo(f"(query failed: {exc})")


def checked_report(settings: Settings, since: datetime, speed: float) -> bool:
    """Recompute the ledger, run the checks, print them; True when every check passed."""
    import io
    from functools import partial

    from carnival.report import build_sections, load_truth, render
    from carnival.report.queries import decode_late, fetch
    from processors.scheduler.wiring_runtime import config_from_env
    from sinks.clickhouse import get_client
    from sinks.ledger import recompute
    from streams.serde import serde_from_settings

    truth = load_truth(Path(settings.data_dir) / "simulate" / "truth.jsonl")
    client = get_client(settings)
    start = datetime.fromtimestamp(truth.start_ms / 1000, UTC)
    end = datetime.fromtimestamp(truth.end_ms / 1000, UTC) + LEDGER_MARGIN
    recompute(client, start, end)
    rows = fetch(client, since, start, end)
    serde = serde_from_settings(settings)
    decode = partial(serde.decode, POWER_EVENTS_TOPIC)
    late = decode_late(rows["late_dead_letters"], decode, truth.start_ms, truth.end_ms)
    scheduler = config_from_env({**os.environ, **worker_overrides(speed)})
    sections = build_sections(truth, rows, late, scheduler.lease_s, scheduler.claim_timeout_s)
    text = io.StringIO()
    render(sections, text)
    report = text.getvalue()
    click.echo(report)
    (Path(settings.data_dir) / "report.txt").write_text(report)
    return all(s.ok for s in sections)


def _simulate_args(
    cars: int,
    sites: int,
    start: str,
    duration: str,
    speed: float,
    seed: int,
    tasks_per_hour: float | None,
    site_compute: str = "small",
) -> list[str]:
    args = ["--cars", str(cars), "--sites", str(sites), "--start", start, "--duration", duration,
            "--speed", str(speed), "--seed", str(seed), "--site-compute", site_compute]  # fmt: skip
    if tasks_per_hour is not None:
        args += ["--tasks-per-hour", str(tasks_per_hour)]
    return args


def run_demo(
    settings: Settings,
    cars: int,
    start: str,
    duration: str,
    speed: float,
    seed: int,
    sites: int,
    tasks_per_hour: float | None = None,
    dashboard_port: int | None = 8050,
    site_compute: str = "small",
) -> int:
    from carnival.receiver import DeliveryReceiver, clickhouse_insert
    from carnival.sim_process import SimulatorProcess
    from carnival.stack.errors import StackError
    from carnival.stack.lifecycle import stack_status, stack_up
    from simulator.options import parse_duration_ms, parse_start_ms
    from sinks.migrate import migrate

    since = datetime.now(UTC).replace(microsecond=0)  # rows of this run landed after this
    healthy, _ = stack_status(settings)
    if not healthy:
        try:
            for line in stack_up(settings):
                click.echo(line)
        except StackError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            return 1
    migrate(settings)  # a stack started by an older version lacks the newer tables
    receiver = DeliveryReceiver(clickhouse_insert(settings))  # bound, serving once started below
    click.echo(f"alerts: webhook receiver at {receiver.url} (rows in carnival.alert_deliveries)")
    workers = start_workers(settings, speed)
    router = start_router(settings, receiver.url)
    receiver.start()
    board = start_dashboard(settings, dashboard_port)
    start_ms = parse_start_ms(start)
    end_ms = start_ms + parse_duration_ms(duration)
    ok, status = False, None
    try:
        status = Status(settings)
        for _ in range(3):  # let the faust apps join their groups before the first events arrive
            status.tick("starting", start_ms)
        args = _simulate_args(cars, sites, start, duration, speed, seed, tasks_per_hour, site_compute)
        log_path = settings.data_dir.resolve() / "logs" / "simulate.log"
        click.echo(f"simulate: {' '.join(args)}; logs in {log_path}")
        sim_env = {**_env(settings), **principal_env(settings, "fleet")}  # its own ACLs on a secured stack
        sim = SimulatorProcess(args, sim_env, log_path, start_ms, speed)
        try:
            while sim.poll() is None:
                status.tick("simulate", sim.sim_ms(end_ms))
        except BaseException:
            sim.stop()
            raise
        code = sim.wait()
        status.line.close()
        if code != 0:
            click.secho(f"error: the simulator failed (exit {code}); see {log_path}", fg="red", err=True)
            return 1
        click.echo("simulate: done; waiting for the processors, the sink and the alert router to catch up")
        lag = wait_for_processors(status)
        status.line.close()
        if lag:
            click.secho(f"warning: the pipeline is still {lag} records behind", fg="yellow", err=True)
        print_tables(settings)
        ok = checked_report(settings, since, speed)
    finally:
        if status is not None:
            status.close()
        stop_process(router, "alerts router")
        stop_workers(workers)
        receiver.stop()
        if board is not None:
            board.shutdown()
            board.server_close()
            click.echo("dashboard: stopped with the demo (`carnival dashboard` serves it again)")
    click.echo(
        f'\nThe stack is still running: `carnival query "..."` to explore, `carnival stack down` to stop. '
        f"Data in {Path(settings.data_dir).resolve()}"
    )
    return 0 if ok else 1
