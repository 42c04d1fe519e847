"""The sink's dead letters, each kept until the broker acknowledged it.

A record that went to ``deadletter.v1`` counts as processed: its offset is committed and the sink
resumes past it. That is only true once the dead letter is durable, so every dead letter is tracked by
its own delivery report; one that failed (the broker was down past ``message.timeout.ms``) is produced
again. The sink inserts rows after a dead-lettered record, and commits its offset, only when
``pending`` is 0.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from sinks import metrics
from streams.deadletter import send_to_deadletter
from streams.serde import AvroSerde

log = structlog.get_logger(__name__)


class RawProducer(Protocol):
    """The part of ``confluent_kafka.Producer`` used here."""

    def produce(self, topic: str, value: bytes, key: Any = None, on_delivery: Any = None) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class _Tracked:
    """What ``send_to_deadletter`` produces through: the record goes out with a delivery callback."""

    def __init__(self, outbox: DeadLetterOutbox) -> None:
        self.outbox = outbox

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        self.outbox._send(next(self.outbox._ids), topic, value, key)


class DeadLetterOutbox:
    def __init__(self, make_producer: Callable[[], RawProducer], serde: AvroSerde) -> None:
        self._make_producer = make_producer
        self._producer: RawProducer | None = None
        self.serde = serde
        self._ids = itertools.count()
        self._unacked: dict[int, tuple[str, bytes, bytes | str | None]] = {}
        self._failed: set[int] = set()

    @property
    def pending(self) -> int:
        """Dead letters produced and not acknowledged yet."""
        return len(self._unacked)

    def pending_positions(self) -> list[tuple[str, int | None, int | None]]:
        """(source topic, partition, offset) of each dead letter not acknowledged yet."""
        records = [self.serde.decode(topic, value) for topic, value, _ in self._unacked.values()]
        return [(r["source_topic"], r["source_partition"], r["source_offset"]) for r in records]

    def add(self, record: dict[str, Any]) -> None:
        send_to_deadletter(_Tracked(self), self.serde, record)

    def _send(self, rid: int, topic: str, value: bytes, key: bytes | str | None) -> None:
        if self._producer is None:
            self._producer = self._make_producer()
        self._unacked[rid] = (topic, value, key)
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=functools.partial(self._report, rid))
                return
            except BufferError:
                self._producer.poll(0.05)

    def _report(self, rid: int, err: Any, msg: Any) -> None:
        if err is None:
            self._unacked.pop(rid, None)
            return
        self._failed.add(rid)
        metrics.DEADLETTER_FAILURES.inc()
        log.warning("sink_deadletter_delivery_failed", error=str(err), action="producing it again")

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for acknowledgements, produce the failed ones again; return pending."""
        if self._producer is None or not self._unacked:
            return len(self._unacked)
        self._producer.flush(timeout)
        failed, self._failed = self._failed, set()
        for rid in sorted(failed):
            if rid in self._unacked:
                self._send(rid, *self._unacked[rid])
        return len(self._unacked)

    def close(self, timeout: float = 10.0) -> None:
        if self._producer is not None:
            left = self.flush(timeout)
            if left:
                log.error("sink_deadletters_unacknowledged_at_close", pending=left)
            self._producer = None
