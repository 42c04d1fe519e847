"""Builds the faust App of one processor from the settings.

Each processor (``scheduler``, ``power``, ...) is its own faust App with its own id, so it scales and
restarts independently and its table changelogs keep stable names (``carnival-<name>-<table>-changelog``)
however processors are grouped into processes.

Faust settings chosen for at-least-once with idempotent effects (faust's exactly_once mode has open
duplicate bugs): acks from all replicas, frequent commits, agents with concurrency 1.
"""

from __future__ import annotations

from pathlib import Path

import faust

from core.settings import Settings
from processors.groups import APP_PREFIX


def faust_broker_urls(settings: Settings) -> list[str]:
    return [f"kafka://{hostport.strip()}" for hostport in settings.kafka_bootstrap.split(",")]


def state_dir(settings: Settings, processor: str) -> Path:
    """Replicas of one processor on one machine keep apart directories: two RocksDB stores must never
    open the same files."""
    replica = f"-{settings.worker_replica}" if settings.worker_replica else ""
    return settings.data_dir.resolve() / "faust" / f"{processor}{replica}"


def create_app(processor: str, settings: Settings, **overrides: object) -> faust.App:
    """The faust App for ``processor``; table state in RocksDB under ``<data_dir>/faust/<processor>``."""
    from processors.runtime.faust_auth import broker_credentials

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
        # SASL/SSL from the same settings as every confluent client (None: PLAINTEXT).
        "broker_credentials": broker_credentials(settings.kafka),
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
    Returns the topics that were created (existing ones keep their partitions; configs are reconciled).
    """
    from streams.topics import TopicSpec, apply_topics

    specs = [
        TopicSpec(
            table.changelog_topic_name,
            "table key",
            f"changelog of faust table {table.name}",
            compacted=True,
            partitions=table.partitions,
            extra_config={k: str(v) for k, v in (table.extra_topic_configs or {}).items()},
        )
        for table in app.tables.values()
    ]
    specs.extend(TopicSpec(name, "record key", f"internal topic of {app.conf.id}") for name in extra)
    return apply_topics(settings, specs=specs).created
