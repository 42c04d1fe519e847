"""Dead letters whose acknowledgement the router waits for before it commits.

A dead letter stands in for the record it replaces: the record's offset may be committed only once the
dead letter is on the broker. ``send(record, on_acked)`` produces it and calls ``on_acked`` when the
broker acknowledged it; a produce that failed (the broker down past ``message.timeout.ms``, a full
queue, ...) is produced again after ``retry_s``, for as long as it takes, and counted. Callbacks run in
the thread that calls ``poll``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Gauge

from streams.deadletter import send_to_deadletter

__all__ = ["DeadLetterSender"]

log = structlog.get_logger(__name__)

DEADLETTER_FAILED = Counter(
    "carnival_alert_deadletter_failed_total", "Dead letters the broker did not acknowledge (produced again)"
)
DEADLETTER_PENDING = Gauge(
    "carnival_alert_deadletter_pending", "Dead letters produced but not acknowledged yet (they hold commits)"
)


class _Encoder(Protocol):
    def encode(self, topic: str, record: dict[str, Any]) -> bytes: ...


class RawProducer(Protocol):
    """What confluent_kafka.Producer offers and the sender uses."""

    def produce(self, topic: str, value: bytes, key: bytes | str | None = ..., *,
                on_delivery: Callable[[Any, Any], None] | None = ...) -> None: ...  # fmt: skip
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


class _PerRecord:
    """Adapts a raw producer to ``send_to_deadletter`` (which knows the topic and encoding) with one
    delivery callback per dead letter."""

    def __init__(self, producer: RawProducer, on_delivery: Callable[[Any, Any], None]) -> None:
        self._producer, self._on_delivery = producer, on_delivery

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        self._producer.produce(topic, value, key, on_delivery=self._on_delivery)


class DeadLetterSender:
    def __init__(self, producer: RawProducer, serde: _Encoder, retry_s: float = 1.0) -> None:
        self._producer = producer
        self._serde = serde
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._pending = 0
        self._retry: list[tuple[float, dict[str, Any], Callable[[], None]]] = []  # (due, record, on_acked)
        self.acked = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        """Dead letters not acknowledged yet (in the producer or waiting to be produced again)."""
        with self._lock:
            return self._pending

    def send(self, record: dict[str, Any], on_acked: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
        DEADLETTER_PENDING.inc()
        self._produce(record, on_acked)

    def _produce(self, record: dict[str, Any], on_acked: Callable[[], None]) -> None:
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                self._settled(on_acked)
            else:
                self._failed(record, on_acked, str(err))

        try:
            send_to_deadletter(_PerRecord(self._producer, on_delivery), self._serde, record)
        except Exception as exc:  # noqa: BLE001 - BufferError, KafkaException: try again later
            self._failed(record, on_acked, f"{type(exc).__name__}: {exc}")

    def _settled(self, on_acked: Callable[[], None]) -> None:
        with self._lock:
            self._pending -= 1
            self.acked += 1
        DEADLETTER_PENDING.dec()
        on_acked()

    def _failed(self, record: dict[str, Any], on_acked: Callable[[], None], error: str) -> None:
        DEADLETTER_FAILED.inc()
        log.error("alert_deadletter_failed", source_offset=record.get("source_offset"),
                  error_kind=record.get("error_kind"), error=error, retry_in_s=self.retry_s)  # fmt: skip
        with self._lock:
            self.failed += 1
            self._retry.append((time.monotonic() + self.retry_s, record, on_acked))

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks and produce again what failed and is due."""
        self._producer.poll(timeout_s)
        now = time.monotonic()
        with self._lock:
            due = [r for r in self._retry if r[0] <= now]
            self._retry = [r for r in self._retry if r[0] > now]
        for _, record, on_acked in due:
            self._produce(record, on_acked)

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for acknowledgements; return how many are still pending."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self.poll(0.05)
            self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
        return self.pending

    def close(self, timeout_s: float) -> int:
        """Flush for up to ``timeout_s``, drop what is still unacknowledged (its records are not committed,
        so they are dead-lettered again after a restart) and close the producer; returns how many."""
        left = self.flush(timeout_s)
        purge, close = getattr(self._producer, "purge", None), getattr(self._producer, "close", None)
        if left and purge is not None:
            purge()
            self._producer.poll(0)
        if close is not None:
            close()
        return left
