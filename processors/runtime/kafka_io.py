"""A processor's Kafka clients on plain confluent-kafka, for an asyncio processor that uses the runtime's
checkpoint protocol (``processors.runtime.checkpoint``) without faust.

faust costs ~100 µs of Python per consumed event (an Event, a channel queue, per-event acks and
sensors) and tens of µs per produced record (a future, a buffer slot); librdkafka does the same in C.
What this module gives a processor:

* :class:`InputConsumer`: the input topics in a consumer group; ``batch()`` returns what is waiting
  (at most ``max_events``, at once when one record is there: no batching window); ``commit()`` after a
  checkpoint, never before. Polling runs in a thread so the event loop (timers, checkpoints,
  deliveries) goes on; the group's rebalance callbacks run in that thread and wait for the processor's
  async handlers on the loop (``on_assigned``/``on_revoked``).
* :class:`FutureProducer`: every record gets an asyncio future resolved when Kafka acknowledged it (or
  failed it past the producer's retries); ``flush()`` waits for all of them. No linger by default: an
  alert leaves as soon as it is produced.
* :class:`ChangelogStore`: key -> bytes kept in memory, restored from a compacted changelog topic
  (partition = input partition) when partitions are assigned; writes go to that changelog.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import Producer as RawProducer

from core.settings import Settings
from streams.kafka import consumer_config, producer_config
from streams.topics import TopicSpec, apply_topics

log = structlog.get_logger(__name__)

__all__ = ["ChangelogStore", "FutureProducer", "InputConsumer", "Record", "declare_changelog"]


@dataclass(slots=True)
class Record:
    """One consumed record (librdkafka's ``Message`` read once into plain attributes)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None  # the Kafka timestamp in seconds (None: not available)

    @classmethod
    def of(cls, msg: Any) -> Record:
        kind, ms = msg.timestamp()
        return cls(
            msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
            None if kind == TIMESTAMP_NOT_AVAILABLE or ms <= 0 else ms / 1000,
        )  # fmt: skip


def declare_changelog(settings: Settings, name: str, partitions: int, doc: str) -> None:
    """Create the compacted changelog topic (``partitions`` as the input) if it does not exist yet."""
    apply_topics(settings, specs=[TopicSpec(name, "table key", doc, compacted=True, partitions=partitions)])


# -- producer ----------------------------------------------------------------------------------------
class FutureProducer:
    """confluent-kafka producer whose records each get an asyncio future (see the module docstring).

    Delivery reports are served by a thread of its own (``poll``) and handed to the loop in one call per
    round, so a checkpoint's hundreds of changelog records cost one loop wake-up, not hundreds."""

    def __init__(
        self, settings: Settings, loop: asyncio.AbstractEventLoop, linger_ms: float = 0.0, raw: Any = None
    ) -> None:
        config = producer_config(settings, **{"linger.ms": linger_ms, "compression.type": "none"})
        self._producer = raw if raw is not None else RawProducer(config)
        self._loop = loop
        self._pending: set[asyncio.Future[None]] = set()
        self._settled: list[tuple[asyncio.Future[None], Any]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="producer-deliveries", daemon=True)
        self._thread.start()

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1
    ) -> asyncio.Future[None]:
        """Hand one record over (never waits for Kafka); the future is done once Kafka acknowledged it."""
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending.add(fut)

        def delivered(err: Any, msg: Any) -> None:
            with self._lock:
                self._settled.append((fut, err))

        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
                return fut
            except BufferError:  # the local queue is full: serve deliveries until there is room
                self._producer.poll(0.01)

    async def flush(self) -> None:
        """Wait until every record handed over so far is settled (delivered or failed: the futures say)."""
        pending = list(self._pending)
        if pending:
            await asyncio.wait(pending)

    def _serve(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            settled, self._settled = self._settled, []
        if settled:
            self._loop.call_soon_threadsafe(self._settle, settled)

    def _settle(self, settled: list[tuple[asyncio.Future[None], Any]]) -> None:
        for fut, err in settled:
            self._pending.discard(fut)
            if fut.done():
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(KafkaException(err))
                log.error("kafka_delivery_failed", error=str(err))

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop serving deliveries and flush what is queued (from a thread: it blocks)."""
        self._closing.set()
        self._thread.join(5.0)
        self._producer.flush(timeout_s)


# -- consumer ----------------------------------------------------------------------------------------
class InputConsumer:
    """The processor's input topics in its consumer group (see the module docstring).

    ``on_assigned(partitions)`` and ``on_revoked(partitions, lost)`` are coroutines of the processor,
    awaited on the loop while the group waits in the rebalance (``lost``: the session expired, other
    members may already own them: nothing may be committed)."""

    def __init__(
        self,
        settings: Settings,
        group: str,
        topics: Sequence[str],
        loop: asyncio.AbstractEventLoop,
        on_assigned: Callable[[list[int]], Awaitable[None]],
        on_revoked: Callable[[list[int], bool], Awaitable[None]],
        *,
        session_timeout_s: float = 10.0,
        fetch_wait_ms: int = 5,
        raw: Any = None,
    ) -> None:
        session_ms = int(session_timeout_s * 1000)
        self.topics = list(topics)
        self._loop = loop
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self.rebalancing = False
        self.assigned: set[int] = set()
        self._consumer = raw if raw is not None else Consumer(consumer_config(
            settings, group,
            **{"session.timeout.ms": session_ms, "heartbeat.interval.ms": max(session_ms // 4, 100),
               "fetch.wait.max.ms": fetch_wait_ms, "on_commit": self._committed},
        ))  # fmt: skip
        self._consumer.subscribe(
            self.topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lost
        )

    # -- what the processor calls ------------------------------------------------------------------
    async def batch(self, max_events: int, timeout_s: float) -> list[Record]:
        """What is waiting (at most ``max_events``); waits at most ``timeout_s`` for a first record."""
        return await asyncio.to_thread(self._poll, max_events, timeout_s)

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        """Commit ``(topic, partition) -> next offset``; asynchronous unless ``wait`` (a failure only
        means a replay: it is logged)."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if wait:
                self._consumer.commit(offsets=tps, asynchronous=False)
            else:
                self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:  # e.g. revoked meanwhile: the next owner replays them
            log.warning("input_commit_failed", error=str(exc))

    def highwater(self, topic: str, partition: int) -> int | None:
        """The high watermark of an assigned partition as of the last fetch (None: not known yet)."""
        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except KafkaException:
            return None
        return None if high is None or high < 0 else int(high)

    def position(self, topic: str, partition: int) -> int | None:
        try:
            [tp] = self._consumer.position([TopicPartition(topic, partition)])
        except KafkaException:
            return None
        return None if tp.offset < 0 else int(tp.offset)

    async def close(self) -> None:
        """Leave the group (its partitions move now, not after the session timeout)."""
        await asyncio.to_thread(self._consumer.close)

    # -- in the polling thread ---------------------------------------------------------------------
    def _poll(self, max_events: int, timeout_s: float) -> list[Record]:
        first = self._consumer.poll(timeout_s)  # returns as soon as one record is there
        if first is None:
            return []
        msgs = [first, *self._consumer.consume(max_events - 1, 0)] if max_events > 1 else [first]
        records = []
        for msg in msgs:
            if msg.error():
                log.warning("input_consume_error", error=str(msg.error()))
                continue
            records.append(Record.of(msg))
        return records

    def _call(self, coro: Awaitable[None]) -> None:
        self.rebalancing = True
        try:
            asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]
        finally:
            self.rebalancing = False

    def _assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        mine = sorted({tp.partition for tp in partitions})
        self.assigned |= set(mine)
        log.info("input_partitions_assigned", partitions=mine)
        self._call(self._on_assigned(mine))

    def _revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._drop(partitions, lost=False)

    def _lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._drop(partitions, lost=True)

    def _drop(self, partitions: list[TopicPartition], lost: bool) -> None:
        gone = sorted({tp.partition for tp in partitions})
        log.info("input_partitions_revoked", partitions=gone, lost=lost)
        self._call(self._on_revoked(gone, lost))
        self.assigned -= set(gone)

    @staticmethod
    def _committed(err: Any, partitions: list[TopicPartition]) -> None:
        if err is not None:
            log.warning("input_commit_failed", error=str(err))


# -- state -------------------------------------------------------------------------------------------
class ChangelogStore:
    """key -> bytes of the assigned partitions, in memory, durable in a compacted changelog topic whose
    partition ``p`` holds the keys of input partition ``p``. A worker always restores from the changelog,
    which holds exactly what was acknowledged (a local copy could hold writes a crash lost in flight)."""

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.settings, self.topic, self.group = settings, topic, group
        self.data: dict[str, bytes] = {}
        self.partition_of: dict[str, int] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        self.data[key] = value
        self.partition_of[key] = partition

    def drop(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for key in [k for k, p in self.partition_of.items() if p in gone]:
            del self.data[key]
            del self.partition_of[key]

    def restore(self, partitions: Iterable[int], timeout_s: float = 300.0) -> int:
        """Read the changelog partitions from the beginning to their end (blocking: run it in a thread);
        returns the number of keys restored."""
        parts = sorted(set(partitions))
        if not parts:
            return 0
        consumer = Consumer(consumer_config(self.settings, self.group, **{"fetch.wait.max.ms": 10}))
        try:
            ends: dict[int, int] = {}
            for p in parts:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)
                if high > low:
                    ends[p] = high
            if not ends:
                return 0
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            stop_at = time.monotonic() + timeout_s
            while ends:
                if time.monotonic() > stop_at:
                    raise TimeoutError(f"restoring {self.topic}: partitions {sorted(ends)} not read in time")
                for msg in consumer.consume(10_000, 0.5):
                    if msg.error():
                        continue
                    p, key, value = int(msg.partition() or 0), msg.key(), msg.value()
                    if key is not None:
                        k = key.decode("utf-8", "replace")
                        if value is None:
                            self.data.pop(k, None)
                            self.partition_of.pop(k, None)
                        else:
                            self.put(k, value, p)
                    if p in ends and int(msg.offset() or 0) + 1 >= ends[p]:
                        del ends[p]
                for p in list(ends):  # compaction may leave the last offsets empty
                    [pos] = consumer.position([TopicPartition(self.topic, p)])
                    if pos.offset >= ends[p]:
                        del ends[p]
            return sum(1 for p in self.partition_of.values() if p in set(parts))
        finally:
            consumer.close()
