"""The declarative topic spec: every Carnival topic, its key, partitions, retention and compaction.

``carnival topics apply`` makes the cluster match this table: it creates missing topics, raises
partition counts that are too low (never lowers them: that would reshuffle keys), and rewrites configs
that differ. Running it twice changes nothing the second time. The workers pass their own internal
topics (faust changelogs, the scheduler's pool topic) through the same function
(``processors.runtime.app.declare_internal_topics``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from core.settings import Settings
from streams.kafka import admin_config

log = structlog.get_logger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key_field: str
    doc: str
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False
    partitions: int | None = None  # None: the settings default
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        conf = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(-1 if self.compacted else self.retention_ms),
            "compression.type": "producer",
        }
        if self.compacted:
            # Keep tombstones a day so consumers that rebuild state see deletions.
            conf["delete.retention.ms"] = str(DAY_MS)
            conf["min.compaction.lag.ms"] = "0"
            conf["segment.ms"] = str(HOUR_MS)
        conf.update(self.extra_config)
        return conf


# The names of the topics: the public contract, declared once; everything else imports these.
TELEMETRY_TOPIC = "fleet.telemetry.v1"
REQUESTS_TOPIC = "tasks.requests.v1"
STATUS_TOPIC = "tasks.status.v1"
ACTIONS_TOPIC = "emulator.actions.v1"
POWER_EVENTS_TOPIC = "power.events.v1"
SITE_CAPACITY_TOPIC = "sites.capacity.v1"
NODES_TOPIC = "fleet.nodes.v1"
ASSIGNMENTS_TOPIC = "tasks.assignments.v1"
LIFECYCLE_TOPIC = "tasks.lifecycle.v1"
INCIDENTS_TOPIC = "power.incidents.v1"
ALERTS_TOPIC = "alerts.v1"
DEADLETTER_TOPIC = "deadletter.v1"
SITE_POWER_STATE_TOPIC = "sites.power_state.v1"
SPILLOVER_TOPIC = "sites.spillover.v1"

INPUT_TOPICS = (
    TELEMETRY_TOPIC,
    REQUESTS_TOPIC,
    STATUS_TOPIC,
    ACTIONS_TOPIC,
    POWER_EVENTS_TOPIC,
    SITE_CAPACITY_TOPIC,
)
"""What producers publish (``carnival produce`` refuses the others unless ``--allow-derived``)."""

TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in (
        # Inputs: what producers publish.
        TopicSpec(TELEMETRY_TOPIC, "vin", "vehicle snapshots", retention_ms=3 * DAY_MS),
        TopicSpec(REQUESTS_TOPIC, "task_id", "emulator task requests", retention_ms=14 * DAY_MS),
        TopicSpec(STATUS_TOPIC, "task_id", "node reports about tasks", retention_ms=14 * DAY_MS),
        TopicSpec(ACTIONS_TOPIC, "session_id", "emulator action traces", retention_ms=3 * DAY_MS),
        TopicSpec(POWER_EVENTS_TOPIC, "site_id", "site power sequence-of-events", retention_ms=30 * DAY_MS),
        TopicSpec(SITE_CAPACITY_TOPIC, "site_id", "datacenter sites' emulator capacity"),
        # Derived: what Carnival publishes.
        TopicSpec(NODES_TOPIC, "vin", "current node state per vin", compacted=True),
        TopicSpec(ASSIGNMENTS_TOPIC, "vin", "ASSIGN/REVOKE commands to nodes", retention_ms=14 * DAY_MS),
        TopicSpec(LIFECYCLE_TOPIC, "task_id", "every task state change", retention_ms=30 * DAY_MS),
        TopicSpec(INCIDENTS_TOPIC, "site_id", "failover incidents", retention_ms=90 * DAY_MS),
        TopicSpec(SITE_POWER_STATE_TOPIC, "site_id", "current power state per site", compacted=True),
        TopicSpec(SPILLOVER_TOPIC, "site_id", "spillover episodes of sites", retention_ms=90 * DAY_MS),
        TopicSpec(ALERTS_TOPIC, "fingerprint", "alerts for on-call tooling", retention_ms=30 * DAY_MS),
        TopicSpec(
            DEADLETTER_TOPIC, "source_topic", "records that could not be processed", retention_ms=30 * DAY_MS
        ),
    )
}


DERIVED_TOPICS = tuple(name for name in TOPICS if name not in INPUT_TOPICS)
"""What Carnival itself publishes; a hand-made record there could forge an alert or a task's lifecycle."""


def key_field(topic: str) -> str:
    try:
        return TOPICS[topic].key_field
    except KeyError:
        raise KeyError(f"unknown topic {topic!r}; known topics: {', '.join(TOPICS)}") from None


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    repartitioned: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{len(self.created)} created",
            f"{len(self.repartitioned)} repartitioned",
            f"{len(self.reconfigured)} reconfigured",
            f"{len(self.unchanged)} unchanged",
        ]
        return ", ".join(parts)


def apply_topics(
    settings: Settings,
    admin: AdminClient | None = None,
    timeout_s: float = 30.0,
    specs: Iterable[TopicSpec] | None = None,
) -> ApplyReport:
    """Make the cluster's topics match ``specs`` (default: the public ``TOPICS``). Idempotent.

    Topics it creates or grows have a leader for every partition when it returns: a consumer that
    subscribes right after (faust reads partition counts from its first metadata) sees them whole.
    """
    admin = admin or AdminClient(admin_config(settings))
    specs_by_name = dict(TOPICS) if specs is None else {spec.name: spec for spec in specs}
    # Replicated topics refuse acks=all writes that fewer than min.insync.replicas brokers hold.
    replicated = settings.topic_replication > 1
    durability = {"min.insync.replicas": str(settings.min_insync_replicas)} if replicated else {}
    report = ApplyReport()
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = {name: spec.partitions or settings.topic_partitions for name, spec in specs_by_name.items()}

    missing = [
        NewTopic(
            name,
            num_partitions=wanted[name],
            replication_factor=settings.topic_replication,
            config={**specs_by_name[name].config(), **durability},
        )
        for name in specs_by_name
        if name not in existing
    ]
    if missing:
        for name, fut in admin.create_topics(missing, request_timeout=timeout_s).items():
            _result(fut, f"create topic {name}")
            report.created.append(name)

    grow = [
        NewPartitions(name, wanted[name])
        for name in specs_by_name
        if name in existing and len(existing[name].partitions) < wanted[name]
    ]
    if grow:
        for name, fut in admin.create_partitions(grow, request_timeout=timeout_s).items():
            _result(fut, f"add partitions to {name}")
            report.repartitioned.append(name)

    for name in specs_by_name:
        if name in report.created:
            continue
        if _reconcile_config(admin, name, {**specs_by_name[name].config(), **durability}, timeout_s):
            report.reconfigured.append(name)
        elif name not in report.repartitioned:
            report.unchanged.append(name)
    _await_leaders(admin, {n: wanted[n] for n in report.created + report.repartitioned}, timeout_s)
    log.info(
        "topics_applied",
        created=report.created,
        repartitioned=report.repartitioned,
        reconfigured=report.reconfigured,
    )
    return report


def _await_leaders(admin: AdminClient, partitions: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while partitions:
        topics = admin.list_topics(timeout=timeout_s).topics
        waiting = [
            name for name, n in partitions.items()
            if name not in topics or len(topics[name].partitions) < n
            or any(p.leader < 0 for p in topics[name].partitions.values())
        ]  # fmt: skip
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics without partition leaders after {timeout_s:.0f} s: {waiting}")
        time.sleep(0.2)


def _reconcile_config(admin: AdminClient, topic: str, wanted: dict[str, str], timeout_s: float) -> bool:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    current = _result(
        admin.describe_configs([resource], request_timeout=timeout_s)[resource],
        f"describe configs of {topic}",
    )
    differing = {k: v for k, v in wanted.items() if k not in current or current[k].value != v}
    if not differing:
        return False
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in differing.items()]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries)
    _result(
        admin.incremental_alter_configs([resource], request_timeout=timeout_s)[resource],
        f"alter configs of {topic}",
    )
    return True


def _result(fut, what: str):  # type: ignore[no-untyped-def]
    try:
        return fut.result()
    except KafkaException as exc:
        err = exc.args[0]
        if getattr(err, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
            return None
        raise RuntimeError(f"could not {what}: {err}") from exc
