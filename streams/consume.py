"""Kafka -> Avro decode -> JSON lines: the path behind ``carnival consume``.

Reads every partition of a topic without joining a consumer group's commits (a reader, not a
processor), from the beginning or the end, until ``max_records`` or ``timeout_s`` without new data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from streams.exceptions import SerializationError
from streams.records import to_json_record


class _Serde(Protocol):
    def decode(self, topic: str, data: bytes) -> dict[str, Any]: ...


@dataclass
class ConsumeSummary:
    topic: str
    records: int = 0
    undecodable: int = 0


def assign_all_partitions(consumer: Consumer, topic: str, from_beginning: bool, timeout_s: float = 10) -> int:
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise LookupError(f"topic {topic!r} does not exist (run `carnival topics apply`)")
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in sorted(meta.partitions)])
    return len(meta.partitions)


def consume_json_lines(
    consumer: Consumer,
    topic: str,
    serde: _Serde,
    out: BinaryIO,
    from_beginning: bool = False,
    max_records: int | None = None,
    timeout_s: float | None = None,
    on_error: Callable[[str], None] | None = None,
) -> ConsumeSummary:
    """Write each record of ``topic`` as one JSON line to ``out``; return what was read."""
    assign_all_partitions(consumer, topic, from_beginning)
    summary = ConsumeSummary(topic)
    last_data = time.monotonic()
    batch_size = 1000 if max_records is None else max(1, min(1000, max_records))
    while max_records is None or summary.records < max_records:
        msgs = consumer.consume(batch_size, timeout=0.2)
        if not msgs:
            if timeout_s is not None and time.monotonic() - last_data >= timeout_s:
                break
            continue
        last_data = time.monotonic()
        lines = []
        for msg in msgs:
            if msg.error():
                if on_error:
                    on_error(f"kafka error: {msg.error()}")
                continue
            try:
                record = serde.decode(topic, msg.value() or b"")
            except SerializationError as exc:
                summary.undecodable += 1
                if on_error:
                    on_error(f"partition {msg.partition()} offset {msg.offset()}: {exc}")
                continue
            lines.append(orjson.dumps(to_json_record(topic, record)))
            summary.records += 1
            if max_records is not None and summary.records >= max_records:
                break
        if lines:
            out.write(b"\n".join(lines) + b"\n")
            out.flush()
    return summary
