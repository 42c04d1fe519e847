"""Stand-ins for the broker side of the alert router in unit tests: an in-memory topic with consumer
groups (positions, pause/resume, commits per group) and a dead-letter producer that can be "down".
HTTP is never faked: receivers are real local servers (``processors.alert_router.testing``)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

from streams.serde import AvroSerde

TOPIC = "alerts.v1"
START = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
SERDE = AvroSerde()


def alert(fp: str = "abc123", status: str = "FIRING", severity: str = "critical",
          **kw: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "fingerprint": fp, "status": status, "severity": severity, "kind": "FAILED_TRANSFER",
        "site_id": "dc-1", "region": None, "summary": "dc-1: grid lost, nothing on load", "starts_at": START,
        "ends_at": datetime(2025, 1, 2, 3, 5, tzinfo=UTC) if status == "RESOLVED" else None,
        "labels": {"alertname": "PowerFailedTransfer", "team": "datacenter-power"},
        "incident_id": "dc-1/X/1", **kw,
    }  # fmt: skip


def encoded(*alerts: dict[str, Any]) -> list[bytes]:
    return [SERDE.encode(TOPIC, a) for a in alerts]


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes | None, key: bytes | None = None) -> None:
        self._p, self._o, self._v, self._k = partition, offset, value, key

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def topic(self) -> str:
        return TOPIC

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k


class FakeBroker:
    """One topic (``partitions`` of them, records appended round-robin) and committed offsets per group."""

    def __init__(self, values: list[bytes | None] | None = None, partitions: int = 1) -> None:
        self.partitions = partitions
        self.log: dict[int, list[bytes | None]] = {p: [] for p in range(partitions)}
        self.committed: dict[str, dict[int, int]] = {}
        self.consumers: dict[str, FakeConsumer] = {}
        self._lock = threading.Lock()
        self._next = 0
        for value in values or []:
            self.append(value)

    def append(self, value: bytes | None) -> tuple[int, int]:
        with self._lock:
            partition = self._next % self.partitions
            self._next += 1
            self.log[partition].append(value)
            return partition, len(self.log[partition]) - 1

    def consumer(self, group: str) -> FakeConsumer:
        consumer = FakeConsumer(self, group)
        self.consumers[group] = consumer
        return consumer

    def group_offsets(self, group: str) -> dict[int, int]:
        with self._lock:
            return dict(self.committed.get(group, {}))


class FakeConsumer:
    def __init__(self, broker: FakeBroker, group: str) -> None:
        self.broker, self.group = broker, group
        self.position: dict[int, int] | None = None  # None until subscribed
        self.paused: set[int] = set()
        self.closed = False

    def subscribe(self, topics: list[str], on_revoke: Any = None) -> None:
        committed = self.broker.group_offsets(self.group)
        self.position = {p: committed.get(p, 0) for p in range(self.broker.partitions)}

    def poll(self, timeout: float = 0) -> FakeMessage | None:
        if self.position is not None:
            for partition, offset in self.position.items():
                if partition not in self.paused and offset < len(self.broker.log[partition]):
                    self.position[partition] = offset + 1
                    return FakeMessage(partition, offset, self.broker.log[partition][offset], b"k")
        if timeout:
            time.sleep(min(timeout, 0.005))
        return None

    def seek(self, tp: TopicPartition) -> None:
        assert self.position is not None
        self.position[tp.partition] = tp.offset

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in range(self.broker.partitions)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = False) -> None:
        with self.broker._lock:
            group = self.broker.committed.setdefault(self.group, {})
            group.update({tp.partition: tp.offset for tp in offsets})

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        have = self.broker.group_offsets(self.group)
        return [TopicPartition(tp.topic, tp.partition, have.get(tp.partition, -1001)) for tp in partitions]

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        meta = SimpleNamespace(partitions={p: None for p in range(self.broker.partitions)}, error=None)
        return SimpleNamespace(topics={TOPIC: meta})

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """A dead-letter producer; while ``down`` every record fails as librdkafka reports a message that
    timed out (the broker gone past ``message.timeout.ms``). ``acked`` holds what the broker has."""

    def __init__(self) -> None:
        self.down = False
        self.acked: list[tuple[str, bytes, Any]] = []
        self.failures = 0
        self._queue: list[tuple[str, bytes, Any, Any]] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: Any = None, *, on_delivery: Any = None) -> None:
        with self._lock:
            self._queue.append((topic, value, key, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        with self._lock:
            queued, self._queue = self._queue, []
        for topic, value, key, on_delivery in queued:
            if self.down:
                self.failures += 1
                on_delivery("KafkaError{code=_MSG_TIMED_OUT,val=-192,str=\"Local: Message timed out\"}", None)
            else:
                self.acked.append((topic, value, key))
                on_delivery(None, None)
        return len(queued)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def dead_letters(self) -> list[dict[str, Any]]:
        return [SERDE.decode("deadletter.v1", value) for _, value, _ in self.acked]


def wait_until(cond: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())
