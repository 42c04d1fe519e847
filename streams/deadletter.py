"""The dead-letter topic: anything that could not be processed, with its original bytes and why.

Nothing is dropped silently: every rejected record becomes one ``deadletter.v1`` record keyed by its
source topic, carrying the source position (or input line) and an error kind an operator can group by.
"""

from __future__ import annotations

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


class _Encoder(Protocol):
    def encode(self, topic: str, record: dict[str, Any]) -> bytes: ...


class _Producer(Protocol):
    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None: ...


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
    return {
        "value": value,
        "key": key,
        "source_topic": source_topic,
        "source_partition": partition,
        "source_offset": offset,
        "error_kind": error_kind,
        "error": error,
        "ts": int(time.time() * 1000),
        "line": line,
        "processor": processor,
    }


def send_to_deadletter(producer: _Producer, serde: _Encoder, record: dict[str, Any]) -> None:
    RECORDS_REJECTED.labels(topic=record["source_topic"], kind=record["error_kind"]).inc()
    producer.produce(DEADLETTER_TOPIC, serde.encode(DEADLETTER_TOPIC, record), record["source_topic"])
