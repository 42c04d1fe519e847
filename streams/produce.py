"""JSON lines -> validated -> Avro -> Kafka: the path behind ``carnival produce``.

Each line is parsed, validated against the topic's schema, encoded and produced keyed by the topic's
key field. A line that fails any step is reported with its line number and reason and goes to the
dead-letter topic with its original bytes; the good lines around it still go through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streams.deadletter import MALFORMED_JSON, VALIDATION, deadletter_record, send_to_deadletter
from streams.exceptions import SerializationError, ValidationError
from streams.records import parse_json_record
from streams.topics import key_field

MAX_REJECTIONS_KEPT = 1000


class _Serde(Protocol):
    def encode(self, topic: str, record: dict[str, Any]) -> bytes: ...


class _Producer(Protocol):
    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None: ...


@dataclass(frozen=True)
class Rejection:
    line: int
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.reason}"


@dataclass
class ProduceSummary:
    topic: str
    read: int = 0
    produced: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def reject(self, rejection: Rejection) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REJECTIONS_KEPT:
            self.rejections.append(rejection)


def produce_json_lines(
    topic: str,
    lines: Iterable[bytes],
    producer: _Producer,
    serde: _Serde,
    on_reject: Callable[[Rejection], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ProduceSummary:
    """Produce every good line of ``lines`` to ``topic``; dead-letter the bad ones; skip blank lines."""
    key_name = key_field(topic)
    summary = ProduceSummary(topic)
    encode = serde.encode
    produce = producer.produce
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        summary.read += 1
        try:
            record = parse_json_record(topic, _load_object(raw))
            value = encode(topic, record)
        except (orjson.JSONDecodeError, _NotAnObject) as exc:
            _reject(
                summary, producer, serde, topic, raw, number, MALFORMED_JSON, _json_reason(exc), on_reject
            )
            continue
        except (ValidationError, SerializationError) as exc:
            _reject(summary, producer, serde, topic, raw, number, VALIDATION, str(exc), on_reject)
            continue
        key = record[key_name]
        produce(topic, value, key if key is None else str(key))
        summary.produced += 1
        if on_progress is not None and summary.read % 10_000 == 0:
            on_progress(summary.read)
    if on_progress is not None:
        on_progress(summary.read)
    return summary


class _NotAnObject(ValueError):
    pass


def _load_object(raw: bytes) -> dict[str, Any]:
    obj = orjson.loads(raw)
    if not isinstance(obj, dict):
        raise _NotAnObject(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _json_reason(exc: Exception) -> str:
    return f"not valid JSON: {exc}" if isinstance(exc, orjson.JSONDecodeError) else str(exc)


def _reject(
    summary: ProduceSummary,
    producer: _Producer,
    serde: _Serde,
    topic: str,
    raw: bytes,
    line: int,
    kind: str,
    reason: str,
    on_reject: Callable[[Rejection], None] | None,
) -> None:
    rejection = Rejection(line, kind, reason)
    summary.reject(rejection)
    value = raw.rstrip(b"\r\n")
    send_to_deadletter(
        producer,
        serde,
        deadletter_record(topic, kind, reason, value=value, line=line, processor="carnival produce"),
    )
    if on_reject is not None:
        on_reject(rejection)
