"""Consumer-group lag: how far a group's committed offsets trail the end of its topics."""

from __future__ import annotations

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from core.settings import Settings
from streams.kafka import make_admin, make_consumer


def group_lag(settings: Settings, group: str, topics: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Records not yet committed by ``group``, per topic (a partition never committed counts whole)."""
    admin = make_admin(settings)
    consumer = make_consumer(settings)
    try:
        meta = consumer.list_topics(timeout=timeout_s).topics
        partitions = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
        request = [ConsumerGroupTopicPartitions(group, partitions)]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in admin.list_consumer_group_offsets(request)[group].result().topic_partitions
        }
        lag: dict[str, int] = dict.fromkeys(topics, 0)
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            done = committed.get((tp.topic, tp.partition), -1)
            lag[tp.topic] += high - (done if done >= 0 else low)
        return lag
    finally:
        consumer.close()
