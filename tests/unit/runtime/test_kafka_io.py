"""The runtime's plain confluent-kafka clients without a broker: librdkafka's handles are small fakes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from core.settings import Settings
from processors.runtime.kafka_io import ChangelogStore, FutureProducer, InputConsumer, Record


class RawProducer:
    """Queues records; ``deliver()`` reports them (from ``poll``, as librdkafka does)."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, Any, Any, int, Any]] = []
        self.ready: list[tuple[Any, Any]] = []
        self.lock = threading.Lock()

    def produce(self, topic: str, value: Any, key: Any, partition: int = -1, on_delivery: Any = None) -> None:
        with self.lock:
            self.queued.append((topic, key, value, partition, on_delivery))

    def deliver(self, error: Any = None) -> None:
        with self.lock:
            self.ready += [(cb, error) for *_, cb in self.queued]
            self.queued = []

    def poll(self, timeout: float) -> int:
        with self.lock:
            ready, self.ready = self.ready, []
        for cb, error in ready:
            cb(error, None)
        if not ready:
            threading.Event().wait(min(timeout, 0.005))
        return len(ready)

    def flush(self, timeout: float) -> int:
        self.deliver()
        return self.poll(0)


async def _until(cond: Any) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never met")


def test_a_record_future_is_done_once_kafka_acknowledged_it_and_flush_waits_for_all() -> None:
    async def main() -> None:
        raw = RawProducer()
        producer = FutureProducer(Settings(), asyncio.get_running_loop(), raw=raw)
        try:
            futs = [producer.send("alerts.v1", b"k", b"v%d" % i) for i in range(3)]
            assert [q[2] for q in raw.queued] == [b"v0", b"v1", b"v2"]  # handed over at once
            flushing = asyncio.ensure_future(producer.flush())
            await asyncio.sleep(0.02)
            assert not any(f.done() for f in futs) and not flushing.done()
            raw.deliver()
            await asyncio.wait_for(flushing, 5)
            assert all(f.done() and f.exception() is None for f in futs)
        finally:
            producer.close()

    asyncio.run(main())


def test_a_record_kafka_refused_fails_its_future() -> None:
    async def main() -> None:
        raw = RawProducer()
        producer = FutureProducer(Settings(), asyncio.get_running_loop(), raw=raw)
        try:
            fut = producer.send("alerts.v1", b"k", b"v")
            raw.deliver(KafkaError(KafkaError._MSG_TIMED_OUT))
            await _until(fut.done)
            assert isinstance(fut.exception(), KafkaException)
        finally:
            producer.close()

    asyncio.run(main())


class RawConsumer:
    def __init__(self) -> None:
        self.commits: list[tuple[list[tuple[str, int, int]], bool]] = []
        self.subscribed: list[str] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = topics
        self.callbacks = callbacks

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))


def test_commits_name_the_next_offset_and_wait_only_when_asked() -> None:
    async def main() -> None:
        raw = RawConsumer()

        async def hook(*_: Any) -> None:
            return None

        consumer = InputConsumer(
            Settings(), "g", ["power.events.v1"], asyncio.get_running_loop(), hook, hook, raw=raw
        )
        consumer.commit({("power.events.v1", 2): 41})
        consumer.commit({("power.events.v1", 0): 7}, wait=True)
        consumer.commit({})
        assert raw.commits == [([("power.events.v1", 2, 41)], True), ([("power.events.v1", 0, 7)], False)]
        assert raw.subscribed == ["power.events.v1"]

    asyncio.run(main())


def test_a_rebalance_in_the_polling_thread_waits_for_the_processors_handlers_on_the_loop() -> None:
    async def main() -> None:
        raw = RawConsumer()
        seen: list[tuple[str, list[int], bool]] = []

        async def assigned(parts: list[int]) -> None:
            await asyncio.sleep(0.01)  # runs on the loop while the polling thread waits
            seen.append(("assigned", parts, consumer.rebalancing))

        async def revoked(parts: list[int], lost: bool) -> None:
            seen.append(("revoked", parts, lost))

        consumer = InputConsumer(
            Settings(), "g", ["power.events.v1"], asyncio.get_running_loop(), assigned, revoked, raw=raw
        )

        class TP:
            def __init__(self, p: int) -> None:
                self.partition = p

        await asyncio.to_thread(raw.callbacks["on_assign"], raw, [TP(1), TP(0)])
        assert consumer.assigned == {0, 1} and not consumer.rebalancing
        await asyncio.to_thread(raw.callbacks["on_lost"], raw, [TP(1)])
        assert seen == [("assigned", [0, 1], True), ("revoked", [1], True)]
        assert consumer.assigned == {0}

    asyncio.run(main())


def test_a_record_is_read_once_from_librdkafkas_message() -> None:
    class Msg:
        def topic(self) -> str:
            return "power.events.v1"

        def partition(self) -> int:
            return 3

        def offset(self) -> int:
            return 12

        def key(self) -> bytes:
            return b"dc-1"

        def value(self) -> bytes:
            return b"v"

        def timestamp(self) -> tuple[int, int]:
            return (1, 1_700_000_000_250)

    rec = Record.of(Msg())
    assert (rec.topic, rec.partition, rec.offset, rec.key, rec.value) == (
        "power.events.v1",
        3,
        12,
        b"dc-1",
        b"v",
    )
    assert rec.timestamp == pytest.approx(1_700_000_000.25)


def test_the_store_forgets_the_keys_of_revoked_partitions_only() -> None:
    store = ChangelogStore(Settings(), "carnival-power-sites-changelog", "g")
    store.put("a", b"1", 0)
    store.put("b", b"2", 1)
    store.put("c", b"3", 1)
    store.drop([1])
    assert store.data == {"a": b"1"} and store.partition_of == {"a": 0}
    assert store.get("a") == b"1" and store.get("b") is None
