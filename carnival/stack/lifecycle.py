"""``carnival stack up / down / status``: the broker, the embedded ClickHouse, topics and DDL together."""

from __future__ import annotations

from carnival.stack import clickhouse_server, kafka_broker
from carnival.stack.errors import StackError
from core.settings import Settings


def stack_up(settings: Settings) -> list[str]:
    """Start what is not running yet, then apply topics and migrations (both idempotent)."""
    from sinks.migrate import migrate
    from streams.topics import apply_topics

    lines: list[str] = []
    if kafka_broker.read_pid(kafka_broker.paths(settings).pid_file) is None:
        pid = kafka_broker.start_broker(settings)
        lines.append(f"kafka: started (pid {pid}) on {settings.kafka_bootstrap}")
    else:
        lines.append(f"kafka: already running on {settings.kafka_bootstrap}")
    try:
        report = apply_topics(settings)
    except Exception as exc:  # noqa: BLE001 - surfaced as one clear message
        raise StackError(f"could not create topics on {settings.kafka_bootstrap}: {exc}") from exc
    lines.append(f"topics: {report.summary()}")

    if settings.hosts_embedded_clickhouse:
        status = clickhouse_server.clickhouse_status(settings)
        if status.get("running"):
            lines.append(f"clickhouse: already running at {settings.clickhouse.display_url}")
        else:
            result = clickhouse_server.start_clickhouse(settings)
            lines.append(
                f"clickhouse: started embedded server (pid {result.pid}) at {settings.clickhouse.display_url}"
                f", native port {settings.clickhouse_native_port}"
            )
    else:
        lines.append(f"clickhouse: using the server at {settings.clickhouse.display_url}")
    try:
        applied = migrate(settings)
    except StackError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StackError(
            f"could not apply the ClickHouse schema at {settings.clickhouse.display_url}: {exc}"
        ) from exc
    lines.append(
        f"clickhouse schema: {len(applied)} migrations applied"
        if applied
        else "clickhouse schema: up to date"
    )
    return lines


def stack_down(settings: Settings) -> list[str]:
    lines = []
    if settings.hosts_embedded_clickhouse:
        stopped = clickhouse_server.stop_clickhouse(settings)
        lines.append("clickhouse: stopped" if stopped else "clickhouse: was not running")
    stopped = kafka_broker.stop_broker(settings)
    lines.append("kafka: stopped" if stopped else "kafka: was not running")
    return lines


def _describe(name: str, status: dict[str, object], address: str) -> str:
    pid = f" (pid {status['pid']})" if status.get("pid") else ""
    state = "running" if status.get("running") else "stopped"
    answering = "answering" if status.get("answering") else "not answering"
    return f"{name + ':':11} {state}{pid}, {address} {answering}; log {status.get('log', '-')}"


def stack_status(settings: Settings) -> tuple[bool, list[str]]:
    kafka = kafka_broker.broker_status(settings)
    healthy = bool(kafka["answering"])
    lines = [_describe("kafka", kafka, settings.kafka_bootstrap)]
    if settings.hosts_embedded_clickhouse:
        ch = clickhouse_server.clickhouse_status(settings)
        healthy = healthy and bool(ch.get("answering"))
        lines.append(_describe("clickhouse", ch, settings.clickhouse.display_url))
    else:
        lines.append(f"clickhouse: external server at {settings.clickhouse.display_url}")
    lines.append(f"data dir:   {settings.data_dir.resolve()}")
    return healthy, lines
