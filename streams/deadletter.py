"""The dead-letter topic: anything that could not be processed, with its original bytes and why.

Nothing is dropped silently: every rejected record becomes one ``deadletter.v1`` record keyed by its
source topic, carrying the source position (or input line) and an error kind an operator can group by.

A dead letter is bounded whatever it carries: the value keeps its first ``VALUE_MAX_BYTES`` (with the
original size and a SHA-256 of the whole, so the record can still be matched to its source), the key
its first ``KEY_MAX_BYTES``, the error text its first ``ERROR_MAX_CHARS``. A dead letter therefore
always fits the broker's message limit, however large the record that caused it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol

from core.metrics import RECORDS_REJECTED
from streams.topics import DEADLETTER_TOPIC

# Error kinds, stable strings that dashboards and tests group by.
MALFORMED_JSON = "MALFORMED_JSON"
VALIDATION = "VALIDATION"
UNKNOWN_FINGERPRINT = "UNKNOWN_FINGERPRINT"
DECODE = "DECODE"
PROCESSING = "PROCESSING"
FUTURE_TIMESTAMP = "FUTURE_TIMESTAMP"  # event time beyond the allowed skew past its arrival
LATE = "LATE"  # event time behind the stream's own recent event time, past the allowance
TOMBSTONE = "TOMBSTONE"  # a null value on a topic that is not compacted
EXPIRED = "EXPIRED"  # held waiting for something that never came (by event time)
OVERSIZED = "OVERSIZED"  # larger than the broker or a documented field limit allows
SINK_REJECTED = "SINK_REJECTED"  # ClickHouse refuses this record for good (not a transient error)
DELIVERY_REJECTED = "DELIVERY_REJECTED"  # a webhook receiver answered 4xx for this alert

VALUE_MAX_BYTES = 64 * 1024
KEY_MAX_BYTES = 1024
ERROR_MAX_CHARS = 2000


class _Encoder(Protocol):
    def encode(self, topic: str, record: dict[str, Any]) -> bytes: ...


class _Producer(Protocol):
    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None: ...


def bounded_text(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... [{len(text) - limit + 40} more characters]"


def deadletter_record(
    source_topic: str,
    error_kind: str,
    error: str,
    value: bytes | None,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    line: int | None = None,
    processor: str | None = None,
) -> dict[str, Any]:
    size = None if value is None else len(value)
    return {
        "value": value if value is None else value[:VALUE_MAX_BYTES],
        "key": key if key is None else key[:KEY_MAX_BYTES],
        "source_topic": source_topic[:255],
        "source_partition": partition,
        "source_offset": offset,
        "error_kind": error_kind,
        "error": bounded_text(error),
        "ts": int(time.time() * 1000),
        "line": line,
        "processor": processor,
        "value_size": size,
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "truncated": size is not None and size > VALUE_MAX_BYTES,
    }


def send_to_deadletter(producer: _Producer, serde: _Encoder, record: dict[str, Any]) -> None:
    RECORDS_REJECTED.labels(topic=record["source_topic"], kind=record["error_kind"]).inc()
    producer.produce(DEADLETTER_TOPIC, serde.encode(DEADLETTER_TOPIC, record), record["source_topic"])
