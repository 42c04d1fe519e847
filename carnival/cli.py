"""The ``carnival`` command: one entry point, subcommands as in SPEC.

Imports of heavy modules happen inside the commands so ``carnival --help`` stays instant.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from core.settings import Settings, get_settings


def _settings() -> Settings:
    return get_settings()


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="carnival")
def main() -> None:
    """Carnival: the event-streaming pipeline of the car compute cloud.

    Configuration comes from CARNIVAL_* environment variables (CARNIVAL_KAFKA_BOOTSTRAP,
    CARNIVAL_CLICKHOUSE_URL, CARNIVAL_DATA_DIR, CARNIVAL_SCHEMA_REGISTRY_URL, ...): `carnival config`
    lists them all.
    """
    from core.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    # Treat SIGTERM like Ctrl-C so producers flush and summaries print.
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------- stack
@main.group()
def stack() -> None:
    """Start, stop and inspect the local Kafka broker and embedded ClickHouse server."""


@stack.command("up")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="Kafka brokers to run (a local KRaft cluster; 3 gives replication 3 and min.insync.replicas 2). "
    "Remembered in the data dir for every later command [CARNIVAL_STACK_BROKERS, else 1].",
)
@click.option(
    "--secure",
    is_flag=True,
    default=None,
    help="Kafka on SASL_SSL: SCRAM-SHA-512 users per processor, a CA made at start, ACLs. Remembered in "
    "the data dir [CARNIVAL_STACK_SECURE].",
)
def stack_up(brokers: int | None, secure: bool | None) -> None:
    """Start Kafka and ClickHouse, create topics and apply the ClickHouse schema."""
    from carnival.stack.errors import StackError
    from carnival.stack.lifecycle import stack_up as up

    chosen: dict[str, Any] = {"stack_brokers": brokers, "stack_secure": secure}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    settings = Settings(**chosen) if chosen else _settings()
    try:
        lines = up(settings)
    except StackError as exc:
        _fail(str(exc))
    for line in lines:
        click.echo(line)


@stack.command("down")
def stack_down() -> None:
    """Stop the local ClickHouse server and Kafka broker cleanly."""
    from carnival.stack.errors import StackError
    from carnival.stack.lifecycle import stack_down as down

    try:
        lines = down(_settings())
    except StackError as exc:
        _fail(str(exc))
    for line in lines:
        click.echo(line)


@stack.command("status")
def stack_status() -> None:
    """Show what runs: pids, addresses, whether each component answers. Exit 1 if something is down."""
    from carnival.stack.lifecycle import stack_status as status

    healthy, lines = status(_settings())
    for line in lines:
        click.echo(line)
    sys.exit(0 if healthy else 1)


# -------------------------------------------------------------------------------------------- topics
@main.group()
def topics() -> None:
    """Manage topics from the declarative topic spec."""


@topics.command("apply")
def topics_apply() -> None:
    """Create missing topics and update configs that differ (idempotent)."""
    from streams.exceptions import BrokerUnreachable
    from streams.kafka import await_broker
    from streams.topics import apply_topics

    try:
        await_broker(_settings())
        report = apply_topics(_settings())
    except BrokerUnreachable as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - one clear line for the operator
        _fail(f"could not apply topics: {exc}")
    click.echo(f"topics: {report.summary()}")


@topics.command("list")
def topics_list() -> None:
    """Print the topic spec: name, key, partitions, retention, compaction."""
    from streams.topics import TOPICS

    settings = _settings()
    for spec in TOPICS.values():
        retention = "compacted" if spec.compacted else f"{spec.retention_ms // 86_400_000}d"
        click.echo(
            f"{spec.name:24} key={spec.key_field:14} "
            f"partitions={spec.partitions or settings.topic_partitions}"
            f"  {retention:10} {spec.doc}"
        )


@main.command()
def migrate() -> None:
    """Apply the versioned ClickHouse DDL to CARNIVAL_CLICKHOUSE_URL (idempotent)."""
    from sinks.clickhouse import ClickHouseUnavailable, require_reachable
    from sinks.migrate import migrate as apply

    try:
        require_reachable(_settings())
        applied = apply(_settings())
    except ClickHouseUnavailable as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - one clear line for the operator
        _fail(f"could not apply the ClickHouse schema at {_settings().clickhouse.display_url}: {exc}")
    click.echo(
        f"clickhouse schema: {len(applied)} migrations applied"
        if applied
        else "clickhouse schema: up to date"
    )


# ------------------------------------------------------------------------------------ produce/consume
@main.command()
@click.argument("topic")
@click.argument("file", default="-", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Do not print each rejected line.")
@click.option(
    "--allow-derived",
    is_flag=True,
    help="Also write topics Carnival derives (alerts.v1, tasks.lifecycle.v1, ...).",
)
def produce(topic: str, file: str, quiet: bool, allow_derived: bool) -> None:
    """Publish JSON lines from FILE (or - for stdin) to TOPIC.

    Each line is validated against the topic's schema and sent as Avro. Bad lines are reported with
    their line number and reason and go to deadletter.v1: schema errors, timestamps outside 2000..2100,
    a `ts` more than 5 minutes ahead of now, records over the broker's message limit. Exits 1 if any
    line was rejected or Kafka does not answer within CARNIVAL_KAFKA_CONNECT_TIMEOUT_S; 2 for a derived
    topic without --allow-derived.
    """
    from carnival.produce_cmd import run_produce

    sys.exit(run_produce(_settings(), topic, file, quiet, allow_derived))


@main.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record instead of new ones.")
@click.option("--max", "max_records", type=click.IntRange(min=1), help="Stop after N records.")
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0), help="Stop after S seconds without new data."
)
def consume(topic: str, from_beginning: bool, max_records: int | None, timeout_s: float | None) -> None:
    """Decode TOPIC to JSON lines on stdout (timestamps as ISO-8601 UTC).

    Records that cannot be decoded are skipped with a line on stderr. A timestamp beyond year 9999 (or
    before year 1) is written as its raw epoch integer; NaN as null.
    """
    from carnival.produce_cmd import run_consume

    sys.exit(run_consume(_settings(), topic, from_beginning, max_records, timeout_s))


# -------------------------------------------------------------------------------------------- worker
@main.command()
@click.argument("names", nargs=-1)
@click.option("--list", "list_only", is_flag=True, help="List the processors and exit.")
@click.option(
    "--replicas",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes per processor; they share its partitions (a consumer group) and take over each "
    "other's when one stops.",
)
def worker(names: tuple[str, ...], list_only: bool, replicas: int) -> None:
    """Run stream processors: all of them, or the NAMES given (one process each).

    With one name (and one replica) the processor runs in this process; otherwise each runs in a child
    process that is restarted if it crashes. Ctrl-C or SIGTERM stops them cleanly.

    Example: `carnival worker scheduler --replicas 3` (three schedulers splitting the pool partitions).
    """
    from processors.registry import PROCESSORS

    if list_only:
        for spec in PROCESSORS.values():
            click.echo(f"{spec.name:10} {spec.doc}")
        return
    unknown = [n for n in names if n not in PROCESSORS]
    if unknown:
        _fail(f"unknown processor(s) {', '.join(unknown)}; known: {', '.join(PROCESSORS)}", code=2)
    from carnival.worker_cmd import run_one, supervise

    chosen = list(names) or list(PROCESSORS)
    if len(chosen) == 1 and replicas == 1:
        sys.exit(run_one(_settings(), chosen[0]))
    sys.exit(supervise(_settings(), chosen, replicas))


# --------------------------------------------------------------------------------------------- query
@main.command()
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "jsonl", "csv"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def query(sql: str, fmt: str) -> None:
    """Run SQL on the analytics store (works while workers write).

    \b
    Tables, one per topic: telemetry, nodes, task_requests, task_status,
    task_events, assignments, actions, power_events, incidents, alerts, deadletter, site_capacity,
    site_power_states, spillover_episodes; also owner_ledger, alert_deliveries.
    Views: task_latest, task_timings, idle_capacity_5m, node_reliability, incidents_latest,
    session_stats, site_capacity_latest, site_power_latest, spillover_episodes_latest, ...
    All of them: SHOW TABLES; what they hold: docs/analytics.md.
    """
    from sinks.clickhouse import ClickHouseUnavailable, get_client, require_reachable
    from sinks.query import QueryError, run_query

    try:
        require_reachable(_settings())
        client = get_client(_settings())
        run_query(client, sql, fmt, sys.stdout)
    except (QueryError, ClickHouseUnavailable) as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - connection problems: one clear line
        _fail(f"ClickHouse at {_settings().clickhouse.display_url} is not reachable: {exc}")


# -------------------------------------------------------------------------------------------- config
@main.command("config")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "markdown"]), default="table", show_default=True,
    help="markdown is docs/configuration.md.",
)  # fmt: skip
def config(fmt: str) -> None:
    """Print every setting: environment variable, type, default, description."""
    from carnival.config_table import render_markdown, render_text

    click.echo(render_markdown() if fmt == "markdown" else render_text(), nl=False)


# ---------------------------------------------------------------------------------------------- demo
@main.command()
@click.option("--cars", default=300, show_default=True, help="Simulated cars.")
@click.option("--sites", default=3, show_default=True, help="Simulated datacenter sites.")
@click.option(
    "--start",
    default="2025-01-06T14:00:00Z",
    show_default=True,
    help="Simulated start (the default spans the evening grid peaks of every region).",
)
@click.option("--duration", default="12h", show_default=True, help="Simulated time to run.")
@click.option("--speed", default=240.0, show_default=True, help="Simulated seconds per wall second.")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--tasks-per-hour",
    type=click.FloatRange(min=0),
    default=None,
    help="Mean weekday task arrivals per hour [0.4 per car: about what the fleet's idle cars can serve].",
)
@click.option(
    "--dashboard-port",
    default=8050,
    show_default=True,
    type=click.IntRange(min=-1, max=65535),
    help="Port of the live dashboard the demo serves while it runs (0: any free port; -1: none).",
)
@click.option(
    "--site-compute",
    type=click.Choice(["off", "small", "realistic"]),
    default="small",
    show_default=True,
    help="Emulator slots at the datacenter sites (small: 8-16 per site, in scale with the demo's fleet); "
    "sites that leave the grid spill their work to the cars (docs/spillover.md).",
)
def demo(
    cars: int,
    sites: int,
    start: str,
    duration: str,
    speed: float,
    seed: int,
    tasks_per_hour: float | None,
    dashboard_port: int,
    site_compute: str,
) -> None:
    """The main job: the whole pipeline on a simulated fleet, then the analyst report.

    Starts the stack if needed, runs every processor, drives them with `carnival simulate` (cars,
    tasks, the emulator runtime answering assignments, site power with injected faults), waits for
    ClickHouse to catch up and prints what analysts see, checked against the simulator's ground truth
    (exit 1 if a check fails). The live dashboard's URL is printed at start. The stack keeps running
    afterwards.
    """
    from carnival.demo import TASKS_PER_CAR_HOUR, run_demo

    rate = TASKS_PER_CAR_HOUR * cars if tasks_per_hour is None else tasks_per_hour
    port = None if dashboard_port < 0 else dashboard_port
    sys.exit(run_demo(_settings(), cars, start, duration, speed, seed, sites, rate, dashboard_port=port,
                      site_compute=site_compute))  # fmt: skip


# -------------------------------------------------------------------------------------------- alerts
from processors.alert_router.cli import alerts  # noqa: E402 - a light module: click only

main.add_command(alerts)

# ------------------------------------------------------------------------------------------ simulate
from simulator.cli import simulate  # noqa: E402 - a light module: click only; the rest loads on use

main.add_command(simulate)

# ----------------------------------------------------------------------------------------- dashboard
from carnival.dashboard.cli import dashboard  # noqa: E402 - a light module: click only; the server loads on use

main.add_command(dashboard)


if __name__ == "__main__":  # pragma: no cover
    main()
