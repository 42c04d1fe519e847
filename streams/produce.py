"""JSON lines -> validated -> Avro -> Kafka: the path behind ``carnival produce``.

Each line is parsed, validated against the topic's schema, encoded and produced keyed by the topic's
key field. A line that fails any step is reported with its line number and reason and goes to the
dead-letter topic with its original bytes; the good lines around it still go through. Whatever a line
holds, it is either produced or rejected with a kind and a reason; the run always ends with a summary.

Beyond the schema, a line is refused when:

- its ``ts`` is more than ``max_future_skew_s`` ahead of now (``FUTURE_TIMESTAMP``): a record produced
  now arrives now (its Kafka timestamp), and every processor would refuse it against that arrival, so it
  is refused here where the operator sees why (``streams.event_time``; the simulator does not come this
  way, and its replay of a simulated past is never in the future);
- the encoded record (key + value) does not fit one Kafka message (``OVERSIZED``): the producer's
  ``message.max.bytes`` (``streams.kafka.MAX_MESSAGE_BYTES`` by default, below the broker's limit).

Dead letters are bounded by ``streams.deadletter`` (value head, original size and SHA-256). For the
topics in ``records.PRIVATE_TOPICS`` (emulator traces, which must never carry typed text) the dead letter's
value is not the raw line but ``records.redact_unknown`` of it: field names kept, values that are not valid
for their field replaced by placeholders; a line that is not a JSON object keeps no value at all.
``value_size`` and ``value_sha256`` still describe the original line, and ``truncated`` is true: ``value``
is not the whole original.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from confluent_kafka import KafkaError, KafkaException

from streams.deadletter import (
    FUTURE_TIMESTAMP,
    MALFORMED_JSON,
    OVERSIZED,
    VALIDATION,
    deadletter_record,
    send_to_deadletter,
)
from streams.event_time import DEFAULT_MAX_FUTURE_SKEW_S, future_skew_error
from streams.exceptions import SerializationError, ValidationError
from streams.kafka import MAX_MESSAGE_BYTES, RECORD_OVERHEAD_BYTES
from streams.records import PRIVATE_TOPICS, parse_json_record, redact_unknown
from streams.serde import AvroSerde
from streams.topics import key_field

MAX_REJECTIONS_KEPT = 1000
PROCESSOR = "carnival produce"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


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


class _Rejected(Exception):
    """Internal: a line cannot be produced; ``obj`` is its JSON object when it parsed as one."""

    def __init__(self, kind: str, reason: str, obj: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.obj = kind, reason, obj


def produce_json_lines(
    topic: str,
    lines: Iterable[bytes],
    producer: _Producer,
    serde: _Serde,
    on_reject: Callable[[Rejection], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_future_skew_s: float | None = DEFAULT_MAX_FUTURE_SKEW_S,
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> ProduceSummary:
    """Produce every good line of ``lines`` to ``topic``; dead-letter the bad ones; skip blank lines.

    ``max_future_skew_s`` None turns the future-timestamp check off."""
    key_name = key_field(topic)
    summary = ProduceSummary(topic)
    plan = serde.json_plan(topic) if isinstance(serde, AvroSerde) else None
    limit = max_message_bytes - RECORD_OVERHEAD_BYTES
    # The fast path's future-timestamp check: an event time up to ``horizon`` passes. The horizon is
    # renewed only when a time goes past it (now only grows, so a stale horizon is stricter, never laxer),
    # and a time still past it takes the slow path, which judges it against now as always.
    skew_ms = None if max_future_skew_s is None else max_future_skew_s * 1000
    horizon = -1.0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        summary.read += 1
        fast = None if plan is None else plan(raw)
        if fast is not None:  # valid as it stands: only the checks against now and the size are left
            value, key, ts = fast
            if skew_ms is not None and ts is not None and ts > horizon:
                horizon = now_ms() + skew_ms
            if (
                (skew_ms is None or ts is None or ts <= horizon)
                and len(value) + (0 if key is None else len(key.encode())) <= limit
                and _produced(producer, topic, value, key)
            ):
                summary.produced += 1
                if on_progress is not None and summary.read % 10_000 == 0:
                    on_progress(summary.read)
                continue
        # The slow path: every check in turn, so a rejection says which one (and a fast line that failed
        # only the time or size check is refused here with its reason).
        obj: dict[str, Any] | None = None
        try:
            obj = _load_object(raw)
            record = _validated(topic, obj, max_future_skew_s, now_ms)
            value = _encoded(serde, topic, record, obj)
            key = record[key_name]
            key = key if key is None else str(key)
            _fits(value, key, max_message_bytes, obj)
            _produce(producer, topic, value, key, obj)
        except _Rejected as exc:
            _reject(summary, producer, serde, topic, raw, number, exc, on_reject)
            continue
        summary.produced += 1
        if on_progress is not None and summary.read % 10_000 == 0:
            on_progress(summary.read)
    if on_progress is not None:
        on_progress(summary.read)
    return summary


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Rejected(MALFORMED_JSON, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Rejected(MALFORMED_JSON, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _validated(
    topic: str, obj: dict[str, Any], max_future_skew_s: float | None, now_ms: Callable[[], int]
) -> dict[str, Any]:
    try:
        record = parse_json_record(topic, obj)
    except ValidationError as exc:
        raise _Rejected(VALIDATION, str(exc), obj) from None
    ts = record.get("ts")
    if max_future_skew_s is not None and isinstance(ts, datetime):
        error = future_skew_error((ts - _EPOCH) // _MS, now_ms(), max_future_skew_s)
        if error is not None:
            raise _Rejected(FUTURE_TIMESTAMP, f"{topic}: field 'ts': {error} (produced now)", obj)
    return record


def _encoded(serde: _Serde, topic: str, record: dict[str, Any], obj: dict[str, Any]) -> bytes:
    try:
        return serde.encode(topic, record)
    except SerializationError as exc:
        raise _Rejected(VALIDATION, str(exc), obj) from None


def _fits(value: bytes, key: str | None, max_message_bytes: int, obj: dict[str, Any]) -> None:
    size = len(value) + (0 if key is None else len(key.encode()))
    limit = max_message_bytes - RECORD_OVERHEAD_BYTES
    if size > limit:
        raise _Rejected(
            OVERSIZED, f"encoded record is {size} bytes; one Kafka message holds at most {limit}", obj
        )


def _produced(producer: _Producer, topic: str, value: bytes, key: str | None) -> bool:
    """Produce a line of the fast path; False when the producer refused it (the slow path says why)."""
    try:
        producer.produce(topic, value, key)
    except KafkaException:
        return False
    return True


def _produce(producer: _Producer, topic: str, value: bytes, key: str | None, obj: dict[str, Any]) -> None:
    try:
        producer.produce(topic, value, key)
    except KafkaException as exc:  # the size check above should make this unreachable; never crash on it
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            raise _Rejected(OVERSIZED, f"the producer refused the record: {err.str()}", obj) from None
        raise


def _reject(
    summary: ProduceSummary,
    producer: _Producer,
    serde: _Serde,
    topic: str,
    raw: bytes,
    line: int,
    rejected: _Rejected,
    on_reject: Callable[[Rejection], None] | None,
) -> None:
    rejection = Rejection(line, rejected.kind, rejected.reason)
    summary.reject(rejection)
    send_to_deadletter(producer, serde, _deadletter(topic, raw.rstrip(b"\r\n"), line, rejected))
    if on_reject is not None:
        on_reject(rejection)


def _deadletter(topic: str, raw: bytes, line: int, rejected: _Rejected) -> dict[str, Any]:
    if topic not in PRIVATE_TOPICS:
        return deadletter_record(
            topic, rejected.kind, rejected.reason, value=raw, line=line, processor=PROCESSOR
        )
    kept = None if rejected.obj is None else orjson.dumps(redact_unknown(topic, rejected.obj))
    record = deadletter_record(
        topic, rejected.kind, rejected.reason, value=kept, line=line, processor=PROCESSOR
    )
    record.update(value_size=len(raw), value_sha256=hashlib.sha256(raw).hexdigest(), truncated=True)
    return record
