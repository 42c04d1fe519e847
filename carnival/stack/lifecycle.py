"""``carnival stack up / down / status``: the broker, the embedded ClickHouse, topics and DDL together."""

from __future__ import annotations

import json

from pydantic import SecretStr

from carnival.stack import clickhouse_server, kafka_broker
from carnival.stack.errors import StackError
from core.settings import (
    CLICKHOUSE_SECRET_KEY,
    CLICKHOUSE_STACK_USER,
    STACK_SHAPE_FILE,
    Settings,
    remembered_brokers,
    remembered_secure,
)


def stack_up(settings: Settings) -> list[str]:
    """Start what is not running yet, then apply topics and migrations (both idempotent)."""
    from sinks.migrate import migrate
    from streams.topics import apply_topics

    lines: list[str] = []
    remember_shape(settings)
    idle = [n for n in kafka_broker.nodes(settings) if not kafka_broker.node_status(settings, n)["running"]]
    if len(idle) == len(kafka_broker.nodes(settings)):
        pid = kafka_broker.start_broker(settings)
        brokers = f"{len(idle)} brokers" if len(idle) > 1 else f"pid {pid}"
        lines.append(f"kafka: started ({brokers}) on {settings.kafka_bootstrap}")
    else:
        for node in idle:  # a node that died rejoins the running quorum
            pid = kafka_broker.start_broker(settings, node)
            lines.append(f"kafka: node {node} started (pid {pid})")
        lines.append(f"kafka: {'running' if idle else 'already running'} on {settings.kafka_bootstrap}")
    try:
        report = apply_topics(settings)
    except Exception as exc:  # noqa: BLE001 - surfaced as one clear message
        raise StackError(f"could not create topics on {settings.kafka_bootstrap}: {exc}") from exc
    lines.append(f"topics: {report.summary()}")
    if settings.stack_secure:
        from carnival.stack.security import PRINCIPALS, apply_acls, apply_users

        apply_users(settings)
        count = apply_acls(settings)
        lines.append(
            f"security: SASL_SSL ({settings.kafka_sasl_mechanism}), CA {settings.kafka_ssl_ca_location}; "
            f"{count} ACLs for {', '.join(PRINCIPALS)}"
        )

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


def remember_shape(settings: Settings) -> None:
    """Record the broker count in the data dir (other commands read it); refuse to shrink a cluster, whose
    topics are replicated over brokers that would no longer run."""
    data_dir = settings.data_dir.resolve()
    known = remembered_brokers(data_dir)
    if known is not None and known > settings.stack_brokers:
        raise StackError(
            f"the data dir {data_dir} holds a {known}-broker cluster; start it with "
            f"--brokers {known} (or CARNIVAL_STACK_BROKERS={known}), or use another CARNIVAL_DATA_DIR"
        )
    formatted = (kafka_broker.paths(settings).log_dirs / "meta.properties").exists()
    if formatted and remembered_secure(data_dir) != settings.stack_secure:
        was, how = ("a secured", "with") if remembered_secure(data_dir) else ("an unsecured", "without")
        raise StackError(
            f"the data dir {data_dir} holds {was} cluster; start it {how} --secure, "
            "or use another CARNIVAL_DATA_DIR"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    shape = {"brokers": settings.stack_brokers, "secure": settings.stack_secure}
    (data_dir / STACK_SHAPE_FILE).write_text(json.dumps(shape) + "\n")
    if settings.stack_secure:
        _prepare_security(settings)


def _prepare_security(settings: Settings) -> None:
    """Certificates and users before the first node starts; this process then connects as its principal."""
    from carnival.stack import security

    passwords = security.users(settings)
    security.ensure_tls(settings)
    if settings.kafka_sasl_password is None and settings.kafka_sasl_username in passwords:
        settings.kafka_sasl_password = SecretStr(passwords[settings.kafka_sasl_username])
    if (
        settings.hosts_embedded_clickhouse
        and not settings.clickhouse_user
        and settings.clickhouse_password is None
    ):
        settings.clickhouse_user = CLICKHOUSE_STACK_USER  # the migrations below run as the engine's user
        settings.clickhouse_password = SecretStr(passwords[CLICKHOUSE_SECRET_KEY])


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
    brokers: list[dict[str, object]] = kafka["brokers"]  # type: ignore[assignment]
    if len(brokers) == 1:
        lines = [_describe("kafka", kafka, settings.kafka_bootstrap)]
    else:
        lines = [_describe(f"kafka {b['node']}", b, str(b["address"])) for b in brokers]
        healthy = healthy and all(b["answering"] for b in brokers)
        if kafka["answering"]:
            try:
                lagging = kafka_broker.under_replicated(settings)
            except Exception as exc:  # noqa: BLE001 - shown, not raised: status must always answer
                lines.append(f"replicas:   unknown ({exc})")
            else:
                shown = ", ".join(lagging[:8]) + (" ..." if len(lagging) > 8 else "")
                detail = f": {shown}" if lagging else ""
                lines.append(f"replicas:   {len(lagging)} under-replicated partitions{detail}")
                healthy = healthy and not lagging
    if settings.hosts_embedded_clickhouse:
        ch = clickhouse_server.clickhouse_status(settings)
        healthy = healthy and bool(ch.get("answering"))
        lines.append(_describe("clickhouse", ch, settings.clickhouse.display_url))
    else:
        lines.append(f"clickhouse: external server at {settings.clickhouse.display_url}")
    lines.append(f"data dir:   {settings.data_dir.resolve()}")
    return healthy, lines
