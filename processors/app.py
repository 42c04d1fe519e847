"""Builds the faust App of one processor from the settings.

Each processor (``scheduler``, ``power``, ...) is its own faust App with its own id, so it scales and
restarts independently and its table changelogs keep stable names (``carnival-<name>-<table>-changelog``)
however processors are grouped into processes.

Faust settings chosen for at-least-once with idempotent effects (faust's exactly_once mode has open
duplicate bugs): acks from all replicas, frequent commits, agents with concurrency 1.
"""

from __future__ import annotations

import time
from pathlib import Path

import faust

from carnival.settings import Settings

APP_PREFIX = "carnival"


def faust_broker_urls(settings: Settings) -> list[str]:
    return [f"kafka://{hostport.strip()}" for hostport in settings.kafka_bootstrap.split(",")]


def state_dir(settings: Settings, processor: str) -> Path:
    return settings.data_dir.resolve() / "faust" / processor


def create_app(processor: str, settings: Settings, **overrides: object) -> faust.App:
    """The faust App for ``processor``; table state in RocksDB under ``<data_dir>/faust/<processor>``."""
    datadir = state_dir(settings, processor)
    datadir.mkdir(parents=True, exist_ok=True)
    conf: dict[str, object] = {
        "broker": faust_broker_urls(settings),
        "store": "rocksdb://",
        "datadir": str(datadir),
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication,
        "topic_allow_declare": True,
        "producer_acks": -1,
        "broker_commit_every": 500,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "table_standby_replicas": 0,
        "web_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    conf.update(overrides)
    return faust.App(f"{APP_PREFIX}-{processor}", **conf)  # type: ignore[arg-type]


def declare_internal_topics(settings: Settings, app: faust.App, extra: tuple[str, ...] = ()) -> list[str]:
    """Create the app's table changelogs (and ``extra`` internal topics) and wait until the broker
    reports their partitions, before the consumer first subscribes.

    faust declares internal topics while it subscribes. On a fresh cluster its consumer's metadata
    snapshot can then hold a just-created changelog with 0 partitions; the first table write checks
    "source partitions == changelog partitions", raises ``PartitionsMismatch`` and crashes the agent
    over and over (the snapshot is not refreshed), losing the events it crashed on.
    Returns the topics that were created (existing ones are left as they are).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    from streams.kafka import make_admin

    replicas, default_n = settings.topic_replication, settings.topic_partitions
    specs: list[NewTopic] = []
    for table in app.tables.values():
        extra_cfg = {k: str(v) for k, v in (table.extra_topic_configs or {}).items()}
        specs.append(
            NewTopic(
                table.changelog_topic_name,
                num_partitions=table.partitions or default_n,
                replication_factor=replicas,
                config={"cleanup.policy": "compact", **extra_cfg},
            )
        )
    specs.extend(NewTopic(name, num_partitions=default_n, replication_factor=replicas) for name in extra)
    admin = make_admin(settings)  # keep a reference: a collected client fails its futures
    created: list[str] = []
    for name, fut in admin.create_topics(specs, request_timeout=30).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    wanted = {spec.topic: spec.num_partitions for spec in specs}
    deadline = time.monotonic() + 30
    while True:
        topics = admin.list_topics(timeout=10).topics
        missing = [
            name for name, n in wanted.items()
            if name not in topics or len(topics[name].partitions) < n
            or any(p.leader < 0 for p in topics[name].partitions.values())
        ]  # fmt: skip
        if not missing:
            return created
        if time.monotonic() > deadline:
            raise RuntimeError(f"internal topics have no partition leaders after 30 s: {missing}")
        time.sleep(0.2)
