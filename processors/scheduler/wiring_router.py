"""The telemetry route of the scheduler worker on plain confluent-kafka, in a thread of the worker.

It also carries the datacenter sites' records to the pools: ``sites.capacity.v1`` to the pool of the
site's region (envelope ``C``), ``sites.power_state.v1`` to every partition of the pool topic (``P``: it
names no region, and a site's power decides where its region's work goes). Both are decoded here
(they are few), so an undecodable one is dead-lettered before it reaches a pool.

``fleet.telemetry.v1`` (key vin) -> ``carnival-scheduler-bypool`` (key = region), envelope ``B``: the
records of one pool in a consumed batch are packed, in order, up to ``pack_max`` per pool-topic record
(``T`` for a single one). In faust this hop cost two Python-level Kafka operations per event (aiokafka
fetch + faust send through its producer buffer, a future per message); here librdkafka batches both
sides in C, the Python work per record is a region peek and a list append, and the scheduler's faust
agent handles one pool-topic record per pack instead of per telemetry record.

At-least-once, the same guarantee faust gave: a batch of records is consumed, produced, the producer is
flushed (every record acknowledged by all replicas), and only then are the batch's input offsets
committed (synchronously, before the next ``consume``, so a rebalance never hands over a partition with
routed-but-uncommitted records). A crash replays at most the uncommitted batch: duplicates on the pool
topic, which the scheduler ignores (same vin and ts = duplicate, older ts = late). Order per vin is kept:
one input partition is routed by one thread, and the idempotent producer keeps per-partition order.
A batch with a record Kafka refused (past ``message.timeout.ms``) is not committed: the router stops and
the worker exits, so the next start routes the batch again (the runtime's policy for Kafka failures).

Guards, each a dead letter with its reason, before a record reaches a pool: a tombstone (TOMBSTONE, the
topic is not compacted), an undecodable value, a ``ts`` more than ``max_future_skew_s`` past the record's
Kafka timestamp (FUTURE_TIMESTAMP, judged against the arrival, never the wall clock).

Consumer group ``carnival-scheduler-router`` (its own group: the router is stateless, so its partitions
may be split differently from the faust group's), same session timeout as the faust consumer so a
SIGKILLed worker's telemetry partitions move to the others as fast as its pool partitions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException, TopicPartition
from confluent_kafka import Producer as RawProducer

from core.metrics import RECORDS_REJECTED
from core.settings import Settings
from processors.groups import TELEMETRY_ROUTER
from processors.scheduler.wiring_runtime import (
    BYPOOL_TOPIC,
    DEAD_LETTERED,
    ROUTED,
    SITE_CAPACITY,
    SITE_POWER,
    TELEMETRY,
    pack,
    pack_batch,
)
from streams.deadletter import FUTURE_TIMESTAMP, TOMBSTONE, deadletter_record
from streams.event_time import DEFAULT_MAX_FUTURE_SKEW_S, future_skew_error
from streams.exceptions import SerializationError
from streams.kafka import Producer, make_consumer, producer_config
from streams.topics import DEADLETTER_TOPIC, SITE_CAPACITY_TOPIC, SITE_POWER_STATE_TOPIC, TELEMETRY_TOPIC

log = structlog.get_logger(__name__)

ROUTER_GROUP = TELEMETRY_ROUTER.group


class TelemetryRouter(threading.Thread):
    """Consume telemetry, produce it to the pool topic keyed by region, commit after the flush."""

    def __init__(
        self,
        settings: Settings,
        route_of: Callable[[bytes], tuple[str, int]],
        encode: Callable[[str, dict[str, Any]], bytes],
        *,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
        session_timeout_s: float = 10.0,
        batch_max: int = 5000,
        pack_max: int = 200,
        linger_ms: float = 1.0,
        processor: str = "scheduler",
        decode: Callable[[str, bytes], dict[str, Any]] | None = None,
        partitions: int = 1,
    ) -> None:
        super().__init__(name="scheduler-telemetry-router", daemon=True)
        self.settings = settings
        self.route_of = route_of  # value -> (pool, event ts in ms); SerializationError if undecodable
        self.encode = encode
        self.max_future_skew_s = max_future_skew_s
        self.session_timeout_s = session_timeout_s
        self.batch_max = batch_max
        self.pack_max = max(1, pack_max)
        self.linger_ms = linger_ms
        self.processor = processor
        self.decode = decode  # site records (capacity, power state); None: the router reads telemetry only
        self.partitions = partitions  # of the pool topic: a power state goes to each
        self.stopping = threading.Event()
        self.failed: BaseException | None = None

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the worker's watchdog sees it (``failed``) and stops the process
            self.failed = exc
            log.exception("scheduler_router_failed")

    def _run(self) -> None:
        session_ms = int(self.session_timeout_s * 1000)
        consumer = make_consumer(
            self.settings,
            group_id=ROUTER_GROUP,
            **{
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(session_ms // 4, 100),
                "fetch.wait.max.ms": 10,
                "partition.assignment.strategy": "cooperative-sticky",
            },
        )
        producer = Producer(self.settings, **{"linger.ms": self.linger_ms, "compression.type": "none"})
        topics = (
            [TELEMETRY_TOPIC, SITE_CAPACITY_TOPIC, SITE_POWER_STATE_TOPIC]
            if self.decode
            else [TELEMETRY_TOPIC]
        )
        consumer.subscribe(topics)
        routed = ROUTED.labels(topic=TELEMETRY_TOPIC)
        log.info("scheduler_router_started", group=ROUTER_GROUP)
        try:
            while not self.stopping.is_set():
                first = consumer.poll(0.1)  # returns as soon as one record is there
                if first is None:
                    continue
                msgs = [first, *consumer.consume(self.batch_max - 1, 0)]
                failed_before = producer.stats.failed
                positions, n = self.route_batch(producer, msgs)
                if not positions:
                    continue
                while producer.flush(10.0):  # all acknowledged before the offsets move past them
                    if self.stopping.is_set():
                        return  # not committed: replayed by whoever gets the partitions
                if producer.stats.failed > failed_before:  # never commit past a record Kafka refused
                    raise KafkaException(
                        f"{producer.stats.failed - failed_before} routed records or dead letters were not "
                        f"delivered ({producer.stats.last_error}); the batch is not committed"
                    )
                try:
                    consumer.commit(
                        offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                        asynchronous=False,
                    )
                except KafkaException as exc:  # e.g. revoked meanwhile: the new owner replays them
                    log.warning("scheduler_router_commit_failed", error=str(exc))
                routed.inc(n)
        finally:
            producer.flush(10.0)
            consumer.close()  # leaves the group: the partitions move now, not after the session timeout
            log.info("scheduler_router_stopped")

    def route_batch(self, producer: Producer, msgs: list[Any]) -> tuple[dict[tuple[str, int], int], int]:
        """Produce one consumed batch to the pool topic (and its bad records to deadletter.v1); returns the
        offsets to commit once all is acknowledged, and how many records were routed."""
        positions: dict[tuple[str, int], int] = {}
        packs: dict[str, list[tuple[bytes, int, int]]] = {}
        n = 0
        for msg in msgs:
            if msg.error():
                log.warning("scheduler_router_consume_error", error=str(msg.error()))
                continue
            value, part, off = msg.value(), int(msg.partition() or 0), int(msg.offset() or 0)
            positions[(str(msg.topic()), part)] = off + 1
            if value is None:
                self._dead_letter(producer, msg, TOMBSTONE, f"a tombstone (null value) on {msg.topic()}, "
                                  "which is not compacted")  # fmt: skip
                continue
            topic = msg.topic()
            try:
                if topic == TELEMETRY_TOPIC:
                    pool, ts = self.route_of(value)
                else:
                    assert self.decode is not None  # subscribed to site topics only with a decoder
                    site = self.decode(topic, value)
                    pool, ts = str(site.get("region") or ""), int(site["ts"])
            except SerializationError as exc:
                self._dead_letter(producer, msg, exc.kind, str(exc))
                continue
            kind, arrival = msg.timestamp()
            error = future_skew_error(
                ts, None if kind == TIMESTAMP_NOT_AVAILABLE else arrival, self.max_future_skew_s
            )
            if error is not None:
                self._dead_letter(producer, msg, FUTURE_TIMESTAMP, f"{msg.topic()}: {error}")
                continue
            if topic == SITE_CAPACITY_TOPIC:
                producer.produce(BYPOOL_TOPIC, pack(SITE_CAPACITY, value, part, off), pool.encode())
                n += 1
                continue
            if topic == SITE_POWER_STATE_TOPIC:
                for p in range(self.partitions):
                    producer.produce(BYPOOL_TOPIC, pack(SITE_POWER, value, part, off), msg.key(), partition=p)
                n += 1
                continue
            items = packs.setdefault(pool, [])
            items.append((value, part, off))
            if len(items) >= self.pack_max:
                self._produce_pack(producer, pool, packs.pop(pool))
            n += 1
        for pool, items in packs.items():
            self._produce_pack(producer, pool, items)
        return positions, n

    @staticmethod
    def _produce_pack(producer: Producer, pool: str, items: list[tuple[bytes, int, int]]) -> None:
        """One record keeps the envelope a single telemetry record always had (replay compatible)."""
        if len(items) == 1:
            value, part, off = items[0]
            producer.produce(BYPOOL_TOPIC, pack(TELEMETRY, value, part, off), pool.encode())
        else:
            producer.produce(BYPOOL_TOPIC, pack_batch(items), pool.encode())

    def _dead_letter(self, producer: Producer, msg: Any, kind: str, error: str) -> None:
        DEAD_LETTERED.labels(kind=kind).inc()
        RECORDS_REJECTED.labels(topic=msg.topic(), kind=kind).inc()
        log.warning("record_dead_lettered", topic=msg.topic(), partition=msg.partition(),
                    offset=msg.offset(), kind=kind, error=error, processor=self.processor)  # fmt: skip
        record = deadletter_record(
            msg.topic(), kind, error, value=msg.value(), key=msg.key(),
            partition=msg.partition(), offset=msg.offset(), processor=self.processor,
        )  # fmt: skip
        producer.produce(DEADLETTER_TOPIC, self.encode(DEADLETTER_TOPIC, record), msg.topic().encode())


class BatchProducer:
    """confluent-kafka producer of the ``schedule`` agent's outputs and state-changelog records.

    faust's producer costs tens of µs of Python per record (a future, a buffer slot, a callback); here a
    record is one ``produce`` call and a batch ends with one ``flush`` (waited for in a thread, so the
    event loop keeps fetching and heart-beating). Idempotent, acks from all replicas, order kept per
    partition. Any delivery failure fails the batch (``flush`` raises), like a failed faust send did.

    A record still in flight when a flush slice ends is not a failure: librdkafka settles every record
    within ``message.timeout.ms`` (delivered, or failed with an error report), so ``flush`` waits that
    long (plus a margin) before it gives up; a broker that is away for a minute delays the checkpoint
    instead of failing it (the runtime's checkpoint failure is final: the worker exits). A failed flush
    keeps nothing: the next one judges only what was reported since.
    """

    def __init__(self, settings: Settings, linger_ms: float = 1.0, raw: Any | None = None) -> None:
        config = producer_config(settings, **{"linger.ms": linger_ms, "compression.type": "none",
                                              "delivery.report.only.error": True})  # fmt: skip
        self._producer = raw if raw is not None else RawProducer(config)
        self.settle_s = float(config.get("message.timeout.ms", 300_000)) / 1000 + 30.0
        self._errors: list[str] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.05)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record is acknowledged (at most ``timeout``, default ``settle_s``); raise if
        any failed or some are still unsettled then. Run it off the event loop."""
        deadline = time.monotonic() + (self.settle_s if timeout is None else timeout)
        remaining = self._producer.flush(min(10.0, max(deadline - time.monotonic(), 0.0)))
        while remaining and not self._errors and time.monotonic() < deadline:
            remaining = self._producer.flush(min(10.0, max(deadline - time.monotonic(), 0.0)))
        if self._errors or remaining:
            errors, self._errors = self._errors, []
            raise KafkaException(f"{remaining} records unacknowledged, failed: {errors[:5]}")
