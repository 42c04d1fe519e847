"""Consumer-group lag: how far a group's committed offsets trail the end of its topics."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from core.settings import Settings
from streams.kafka import make_consumer


def group_lag(settings: Settings, group: str, topics: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Records not yet committed by ``group``, per topic (a partition never committed counts whole).

    The committed offsets are read by a consumer of the group that never subscribes (so it never joins
    the group nor moves its offsets), not by ``AdminClient.list_consumer_group_offsets``: librdkafka
    crashes the process when that admin call meets a group coordinator that is not up yet (a fresh broker,
    a group that never committed; confluent-kafka-python issue 1982).
    """
    consumer = make_consumer(settings, group)
    try:
        meta = consumer.list_topics(timeout=timeout_s).topics
        partitions = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in (consumer.committed(partitions, timeout=timeout_s) if partitions else [])
        }
        lag: dict[str, int] = dict.fromkeys(topics, 0)
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            done = committed.get((tp.topic, tp.partition), -1)
            lag[tp.topic] += high - (done if done >= 0 else low)
        return lag
    finally:
        consumer.close()
