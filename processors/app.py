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
