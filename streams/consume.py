"""Kafka -> Avro decode -> JSON lines: the path behind ``carnival consume``.

Reads every partition of a topic without joining a consumer group's commits (a reader, not a
processor), from the beginning or the end, until ``max_records`` or ``timeout_s`` without new data.

Any bytes are survived: a record that cannot be decoded (bad framing, unknown schema, corrupt body, a
tombstone) is skipped with one line through ``on_error`` (partition, offset, why) and counted. A timestamp
no ISO date can hold (before year 1, after 9999) is written as its raw epoch integer (a JSON number where
timestamps are otherwise strings), counted in ``raw_timestamps`` and the first one told through
``on_error``. A NaN or infinite double is written as null (JSON has no NaN): "not reported".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from streams.avro_json import JsonLine, compile_json_line
from streams.exceptions import SerializationError
from streams.records import timestamp_fields, to_json_record


class _Serde(Protocol):
    def decode(self, topic: str, data: bytes) -> dict[str, Any]: ...


@dataclass
class ConsumeSummary:
    topic: str
    records: int = 0
    undecodable: int = 0
    raw_timestamps: int = 0  # timestamps written as raw epoch integers (outside years 1..9999)


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
    report = on_error or (lambda message: None)
    ts_fields = timestamp_fields(topic)
    fast = _fast_path(topic)
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
                report(f"kafka error: {msg.error()}")
                continue
            value = msg.value()
            line = None if fast is None or value is None else fast(value)
            if line is None:  # the slow path: decodes what the fast one does not, or says why it cannot
                where = f"partition {msg.partition()} offset {msg.offset()}"
                line = _json_line(topic, serde, value, ts_fields, summary, where, report)
            if line is None:
                summary.undecodable += 1
                continue
            lines.append(line)
            summary.records += 1
            if max_records is not None and summary.records >= max_records:
                break
        if lines:
            out.write(b"\n".join(lines) + b"\n")
            out.flush()
    return summary


def _fast_path(topic: str) -> JsonLine | None:
    try:
        return compile_json_line(topic)
    except (TypeError, KeyError):  # a shape the generated reader does not cover: the slow path always
        return None


def _json_line(
    topic: str,
    serde: _Serde,
    value: bytes | None,
    ts_fields: tuple[str, ...],
    summary: ConsumeSummary,
    where: str,
    report: Callable[[str], None],
) -> bytes | None:
    """One record as a JSON line, or None (told through ``report``) when it cannot be shown."""
    if value is None:
        report(f"{where}: tombstone (null value), nothing to decode")
        return None
    try:
        out = to_json_record(topic, serde.decode(topic, value))
        line = orjson.dumps(out)
    except SerializationError as exc:
        report(f"{where}: {exc}")
        return None
    except orjson.JSONEncodeError as exc:  # e.g. a string no JSON text can hold
        report(f"{where}: DECODE: {topic}: cannot be written as JSON: {exc}")
        return None
    for name in ts_fields:
        raw = out.get(name)
        if type(raw) is int:
            summary.raw_timestamps += 1
            if summary.raw_timestamps == 1:
                report(
                    f"{where}: field {name!r} = {raw} is outside years 1..9999; "
                    "written as the raw epoch integer"
                )
    return line
