"""The emulator runtime's inbox: ``tasks.assignments.v1`` read from the end offsets at start-up.

Reading from offsets fixed when the feed is created (no consumer-group rebalance to wait for) means every
command produced after that moment is seen, and commands from earlier runs never reach a new world.
"""

from __future__ import annotations

from typing import Any

import structlog

from streams.topics import ASSIGNMENTS_TOPIC

log = structlog.get_logger(__name__)

ASSIGNMENTS = ASSIGNMENTS_TOPIC


class AssignmentFeed:
    def __init__(self, settings: Any, topic: str = ASSIGNMENTS) -> None:
        from confluent_kafka import TopicPartition

        from streams.kafka import make_consumer
        from streams.serde import serde_from_settings

        self.topic = topic
        self.serde = serde_from_settings(settings)
        self.consumer = make_consumer(settings, "carnival-simulator-runtime")
        meta = self.consumer.list_topics(topic, timeout=30)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic} does not exist: run `carnival topics apply`")
        assignment = []
        for p in sorted(meta.topics[topic].partitions):
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            assignment.append(TopicPartition(topic, p, high))
        self.consumer.assign(assignment)
        self.undecodable = 0

    def poll(self, max_records: int = 500) -> list[dict[str, Any]]:
        out = []
        for msg in self.consumer.consume(max_records, timeout=0):
            if msg.error() is not None:
                continue
            try:
                out.append(self.serde.decode(self.topic, msg.value() or b""))
            except Exception as exc:  # noqa: BLE001 - a bad command must not stop the cars
                self.undecodable += 1
                log.warning("simulate_bad_assignment", error=str(exc), offset=msg.offset())
        return out

    def close(self) -> None:
        self.consumer.close()
