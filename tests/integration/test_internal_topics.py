"""Internal topics (table changelogs, the scheduler's pool topic) exist with their partitions and
compaction before a worker's consumer subscribes: a changelog faust creates while subscribing can sit in
its metadata with 0 partitions and crash the table's agent on every write (PartitionsMismatch)."""

from __future__ import annotations

import uuid

import faust
import pytest
from confluent_kafka.admin import ConfigResource

from core.settings import Settings
from processors.runtime.app import declare_internal_topics
from streams.kafka import make_admin

pytestmark = pytest.mark.integration


def test_changelogs_and_extra_topics_are_created_ready_and_compacted(settings: Settings) -> None:
    name = f"it-{uuid.uuid4().hex[:8]}"
    app = faust.App(name, broker=f"kafka://{settings.kafka_bootstrap}", topic_partitions=4)
    app.Table("routes", default=None, partitions=4, extra_topic_configs={"segment.ms": "600000"})
    pool_topic = f"{name}-bypool"

    created = declare_internal_topics(settings, app, (pool_topic,))

    changelog = f"{name}-routes-changelog"
    assert sorted(created) == sorted([changelog, pool_topic])
    admin = make_admin(settings)
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[changelog].partitions) == 4
    assert len(topics[pool_topic].partitions) == settings.topic_partitions
    assert all(p.leader >= 0 for t in (changelog, pool_topic) for p in topics[t].partitions.values())
    resource = ConfigResource(ConfigResource.Type.TOPIC, changelog)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["cleanup.policy"].value == "compact"
    assert configs["segment.ms"].value == "600000"

    assert declare_internal_topics(settings, app, (pool_topic,)) == []  # again: nothing to create
