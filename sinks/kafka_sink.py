"""The ClickHouse sink: a plain confluent-kafka consumer loop with exact control of batches and offsets.

Exactly-once as analysts see it (every Kafka record is one row, none lost, none twice):

1. The rows in ClickHouse are the state. When partitions are assigned, the sink kills any insert a
   previous owner still has in flight for them, reads ``max(_offset)`` per partition from the table
   (a per-part projection, as durable as the rows) and resumes at max + 1, or at the committed Kafka
   offset when that is further (records at the end that went to the dead-letter topic), or at the
   beginning. No second state to fall out of step with the data.
2. A batch (one per topic) holds one contiguous offset range per partition and one writer schema. It is
   inserted as pieces of one table partition each (one insert, one part, all or nothing), in an order
   that keeps what landed of each partition a prefix of it (``sinks/inserts.py``).
3. A piece is retried with the same ``insert_deduplication_token`` (topic + exact ranges), so a retry
   after a timeout that did land is dropped by ClickHouse.
4. Offsets are committed after the batch landed and its dead letters were acknowledged.

Records that cannot be decoded, tombstones on topics that are not compacted, and records ClickHouse
refuses for good go to ``deadletter.v1`` (with their source partition and offset) and count as
processed. A transient ClickHouse error pauses only the topic whose batch failed: the batch is retried
with exponential backoff while the other topics go on; the consumer keeps being polled (group membership
stays alive).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka import Producer as ConfluentProducer

from core.settings import Settings
from sinks import metrics
from sinks.avro_container import WriterSchemas
from sinks.batches import TopicBatch
from sinks.clickhouse import ClickHouseUnavailable, require_reachable
from sinks.config import SINK_TABLES, SinkConfig
from sinks.deadletters import DeadLetterOutbox, RawProducer
from sinks.inserts import Inserter, InsertPlan, Outcome
from sinks.writer import ClickHouseWriter
from streams.deadletter import TOMBSTONE, deadletter_record
from streams.exceptions import SerializationError
from streams.kafka import make_consumer, producer_config
from streams.serde import serde_from_settings
from streams.topics import TOPICS

log = structlog.get_logger(__name__)

PROCESSOR = "carnival-sink"
DEADLETTER_FLUSH_S = 10.0


class Stopping(Exception):
    """The stop event was set (or the shutdown deadline passed) while the sink waited."""


class KafkaSink:
    def __init__(
        self,
        settings: Settings,
        config: SinkConfig | None = None,
        topics: Iterable[str] | None = None,
        stop_event: threading.Event | None = None,
        *,
        consumer: Consumer | None = None,
        writer: ClickHouseWriter | None = None,
        make_producer: Callable[[], RawProducer] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or SinkConfig.from_settings(settings)
        self.topics = sorted(topics or SINK_TABLES)
        unknown = [t for t in self.topics if t not in SINK_TABLES]
        if unknown:
            raise ValueError(f"no ClickHouse table for topics {unknown}; known: {sorted(SINK_TABLES)}")
        self.stop_event = stop_event or threading.Event()
        self.serde = serde_from_settings(settings)
        self.schemas = WriterSchemas(self.serde)
        self.writer = writer or ClickHouseWriter(settings, self.config)
        # Each topic's inserts on a client of their own (pipelined, they run at the same time); an injected
        # writer (tests) serves them all.
        insert_writer = (
            None if writer is not None else (lambda topic: ClickHouseWriter(settings, self.config))
        )
        if consumer is None:
            consumer_conf: dict[str, Any] = {
                "max.poll.interval.ms": 300_000,
                "session.timeout.ms": self.config.session_timeout_ms,
            }
            if self.config.instance_id:
                consumer_conf["group.instance.id"] = self.config.instance_id
            consumer = make_consumer(settings, self.config.group_id, **consumer_conf)
        self.consumer: Consumer = consumer
        self.outbox = DeadLetterOutbox(
            make_producer or (lambda: cast(RawProducer, ConfluentProducer(producer_config(settings)))),
            self.serde,
        )
        self.inserter = Inserter(
            self.writer,
            self.serde,
            self._dead_letter,
            self._settle_dead_letters,
            self.config.backoff_initial_s,
            self.config.backoff_max_s,
            pipelined=self.config.pipelined_inserts,
            insert_writer=insert_writer,
        )
        self.batches = {t: TopicBatch(t, SINK_TABLES[t]) for t in self.topics}
        self.plans: dict[str, deque[InsertPlan]] = {t: deque() for t in self.topics}  # sealed, in order
        self.expected: dict[tuple[str, int], int] = {}  # assigned and positioned: next offset to take
        self.pending: set[tuple[str, int]] = set()  # assigned, position not known yet (ClickHouse down)
        self.stash: deque[Message] = deque()  # polled while waiting; processed in order afterwards
        self.paused_topics: set[str] = set()
        self._deadline: float | None = None  # set while shutting down: waits end there
        self._last_lag = 0.0

    @property
    def paused(self) -> bool:
        return bool(self.paused_topics)

    @property
    def rows_inserted(self) -> int:
        return self.inserter.rows_inserted

    # ----------------------------------------------------------------------------------- loop
    def run(self) -> None:
        log.info(
            "sink_started",
            topics=self.topics,
            group=self.config.group_id,
            batch_rows=self.config.batch_rows,
            flush_interval_s=self.config.flush_interval_s,
        )
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        try:
            while not self.stop_event.is_set():
                if self.pending:
                    self._resolve_pending()
                if not self.stash:
                    self.stash.extend(self.consumer.consume(self.config.poll_batch, timeout=0.1))
                while self.stash:
                    self._route(self.stash.popleft())
                self._flush_due(time.monotonic())
                self._report_lag()
        except Stopping:
            pass
        finally:
            self._shutdown()

    def _route(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("sink_kafka_error", error=str(err))
            return
        topic: str = msg.topic()  # type: ignore[assignment]  # never None for a message without error
        partition: int = msg.partition()  # type: ignore[assignment]
        offset: int = msg.offset()  # type: ignore[assignment]
        tp = (topic, partition)
        expected = self.expected.get(tp)
        if expected is None:
            return  # not (or not yet) positioned: it will be read again from the right offset
        if offset < expected:
            metrics.DUPLICATE_DELIVERIES.labels(topic=topic).inc()
            return
        self.expected[tp] = offset + 1
        batch = self.batches[topic]
        value = msg.value()
        if value is None:
            self._tombstone(batch, partition, offset, msg.key())
            return
        try:
            ws, payload = self.schemas.resolve(topic, value)
        except SerializationError as exc:
            if exc.kind == "REGISTRY":
                self._retry_after_registry_error(tp, offset, exc)
                return
            self._dead_letter(topic, partition, offset, value, msg.key(), exc.kind, str(exc))
            batch.skip(partition, offset)
            return
        if not batch.accepts(ws):
            batch = self._seal(topic)  # a new writer schema starts a new batch (one container per schema)
        batch.add(partition, offset, ws, payload, msg.key())
        if batch.rows >= self.config.batch_rows:
            self._seal(topic)

    def _tombstone(self, batch: TopicBatch, partition: int, offset: int, key: bytes | None) -> None:
        """A null value: the delete marker of a compacted topic (nothing to land), else a dead letter."""
        topic = batch.topic
        spec = TOPICS.get(topic)
        if spec is not None and spec.compacted:
            metrics.TOMBSTONES.labels(topic=topic, action="skipped").inc()
        else:
            metrics.TOMBSTONES.labels(topic=topic, action="deadlettered").inc()
            error = f"{topic}: null value (tombstone) on a topic that is not compacted"
            self._dead_letter(topic, partition, offset, None, key, TOMBSTONE, error)
        batch.skip(partition, offset)

    def _retry_after_registry_error(self, tp: tuple[str, int], offset: int, exc: SerializationError) -> None:
        """The registry is unreachable: read the record again later (transient, never dead-lettered)."""
        log.warning("sink_registry_unavailable", topic=tp[0], partition=tp[1], error=str(exc))
        self.expected[tp] = offset
        self.stash = deque(m for m in self.stash if (m.topic(), m.partition()) != tp)
        self.consumer.seek(TopicPartition(tp[0], tp[1], offset))
        self._wait(self.config.backoff_max_s)

    def _flush_due(self, now: float) -> None:
        for topic, batch in self.batches.items():
            if not batch.empty and (
                batch.rows >= self.config.batch_rows or batch.age(now) >= self.config.flush_interval_s
            ):
                self._seal(topic)
        for topic in self.topics:
            if self.plans[topic] or topic in self.paused_topics:
                self._advance(topic)  # a paused topic whose batches were all revoked resumes here

    # ---------------------------------------------------------------------------- checkpoint
    def _seal(self, topic: str) -> TopicBatch:
        """The topic's batch is complete: queue it for inserting; return the topic's new batch."""
        batch = self.batches[topic]
        if not batch.empty:
            self.plans[topic].append(InsertPlan(batch))
            batch = self.batches[topic] = TopicBatch(topic, batch.table)
        return batch

    def _advance(self, topic: str) -> None:
        """Insert the topic's sealed batches in order, commit each that landed; on a transient error
        pause this topic (only) until its retry lands."""
        queue = self.plans[topic]
        while queue:
            plan = queue[0]
            if plan.retry_at > time.monotonic():
                return
            # Pipelined, the loop reads on while the head's insert runs; once the next batch is sealed
            # too, it waits for it (at most one batch in flight and one waiting per topic).
            if not self._settle(topic, self.inserter.run(plan, block=len(queue) > 1)):
                return
        if topic in self.paused_topics:
            self._resume(topic)

    def _settle(self, topic: str, outcome: Outcome) -> bool:
        """Act on the head plan's outcome; True when it is done (landed and committed)."""
        if outcome is Outcome.RETRY:
            self._pause(topic)
            return False
        if outcome is not Outcome.DONE:
            return False
        plan = self.plans[topic].popleft()
        self._commit(topic, plan.batch.commit_positions())
        return True

    def _finish_inflight(self) -> None:
        """Wait for the inserts in flight and act on them, starting none: a rebalance (like every step
        before pipelining) sees each batch either landed or not, never landing."""
        for topic in self.topics:
            queue = self.plans[topic]
            if queue and queue[0].inflight is not None:
                self._settle(topic, self.inserter.run(queue[0], start=False))

    def _commit(self, topic: str, positions: dict[int, int]) -> None:
        offsets = [TopicPartition(topic, p, o) for p, o in positions.items() if (topic, p) in self.expected]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - commits are advisory here: ClickHouse holds the state
            log.warning("sink_commit_failed", topic=topic, error=str(exc))

    def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None,
        kind: str,
        error: str,
    ) -> None:
        record = deadletter_record(
            topic, kind, error, value, key=key, partition=partition, offset=offset, processor=PROCESSOR
        )
        self.outbox.add(record)
        metrics.DEADLETTERED.labels(topic=topic, kind=kind).inc()

    def _settle_dead_letters(self) -> None:
        """Return once every dead letter is acknowledged (failed ones are produced again meanwhile)."""
        backoff = self.config.backoff_initial_s
        while self.outbox.pending:
            left = self.outbox.flush(timeout=DEADLETTER_FLUSH_S)
            if not left:
                return
            log.warning("sink_deadletter_flush_pending", pending=left, retry_in_s=round(backoff, 2))
            self._wait(backoff)
            backoff = min(backoff * 2, self.config.backoff_max_s)

    # ------------------------------------------------------------------------- backpressure
    def _topic_partitions(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in (*self.expected, *self.pending) if t == topic]

    def _pause(self, topic: str) -> None:
        if topic not in self.paused_topics:
            self.paused_topics.add(topic)
            metrics.PAUSED.set(1)
            metrics.TOPIC_PAUSED.labels(topic=topic).set(1)
            log.warning("sink_paused", topic=topic)
        tps = self._topic_partitions(topic)
        if tps:
            self.consumer.pause(tps)

    def _resume(self, topic: str) -> None:
        self.paused_topics.discard(topic)
        metrics.TOPIC_PAUSED.labels(topic=topic).set(0)
        if not self.paused_topics:
            metrics.PAUSED.set(0)
        ready = [TopicPartition(t, p) for (t, p) in self.expected if t == topic]
        if ready:
            self.consumer.resume(ready)
        log.info("sink_resumed", topic=topic)

    def _wait(self, seconds: float) -> None:
        """Keep the consumer polled (membership, rebalance callbacks) without taking new work."""
        deadline = time.monotonic() + seconds
        while True:
            past_deadline = self._deadline is not None and time.monotonic() >= self._deadline
            if self.stop_event.is_set() or past_deadline:
                raise Stopping
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stash.extend(self.consumer.consume(self.config.poll_batch, timeout=min(left, 0.2)))

    # ---------------------------------------------------------------------------- rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._finish_inflight()
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.pending.update(tps)
        positions = self._positions(tps)
        assign = []
        for tp in tps:
            start = positions.get(tp)
            if start is not None:
                self.pending.discard(tp)
                self.expected[tp] = start
            assign.append(TopicPartition(tp[0], tp[1], start if start is not None else OFFSET_BEGINNING))
        consumer.assign(assign)
        hold = [TopicPartition(t, p) for (t, p) in tps if (t, p) in self.pending or t in self.paused_topics]
        if hold:
            consumer.pause(hold)
        log.info(
            "sink_partitions_assigned",
            partitions=len(tps),
            pending=len(self.pending),
            positions={f"{t}:{p}": o for (t, p), o in sorted(positions.items())},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._finish_inflight()
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for topic in {t for t, _ in gone}:
            if topic in self.batches:
                lost = {p for t, p in gone if t == topic}
                self._reposition_uncertain(topic, lost)
                self.batches[topic].drop_partitions(lost)
                for plan in self.plans[topic]:
                    plan.drop_partitions(lost)
                self.plans[topic] = deque(plan for plan in self.plans[topic] if not plan.batch.empty)
        self.stash = deque(m for m in self.stash if (m.topic(), m.partition()) not in gone)
        for tp in gone:
            self.expected.pop(tp, None)
            self.pending.discard(tp)
            with contextlib.suppress(KeyError):
                metrics.LAG.remove(tp[0], str(tp[1]))
        log.info("sink_partitions_revoked", partitions=len(gone))

    def _reposition_uncertain(self, topic: str, lost: set[int]) -> None:
        """The head insert of ``topic`` timed out (it may have landed) and holds partitions being revoked:
        its retry without them would carry another deduplication token, so if the first attempt did land,
        the kept partitions' rows would land twice. Those partitions are positioned again instead, from
        what ClickHouse holds (after fencing the attempt still in flight), like a new assignment."""
        queue = self.plans[topic]
        if (
            not queue
            or queue[0].error is None
            or queue[0].error.reason != "unavailable"
            or not queue[0].pieces
        ):
            return
        in_head = set(queue[0].pieces[0].partitions_with_rows())
        uncertain = in_head - lost if in_head & lost else set()
        if not uncertain:
            return
        log.warning("sink_reposition_after_uncertain_insert", topic=topic, partitions=sorted(uncertain))
        self.batches[topic].drop_partitions(uncertain)
        for plan in queue:
            plan.drop_partitions(uncertain)
        tps = {(topic, p) for p in uncertain}
        self.stash = deque(m for m in self.stash if (m.topic(), m.partition()) not in tps)
        for tp in tps:
            self.expected.pop(tp, None)
            self.pending.add(tp)
        self.consumer.pause([TopicPartition(t, p) for t, p in sorted(tps)])

    def _positions(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where each partition resumes: max(stored max offset + 1, committed); {} if ClickHouse is down."""
        try:
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in self.consumer.committed(
                    [TopicPartition(t, p) for t, p in tps], timeout=self.config.position_timeout_s
                )
                if tp.offset >= 0
            }
        except Exception as exc:  # noqa: BLE001 - without commits we still know ClickHouse's state
            log.warning("sink_committed_lookup_failed", error=str(exc))
            committed = {}
        positions: dict[tuple[str, int], int] = {}
        try:
            for topic in sorted({t for t, _ in tps}):
                parts = sorted(p for t, p in tps if t == topic)
                self.writer.fence(topic, parts)
                stored = self.writer.max_offsets(topic, SINK_TABLES[topic], parts)
                for p in parts:
                    from_ch = stored[p] + 1 if p in stored else None
                    from_kafka = committed.get((topic, p))
                    candidates = [o for o in (from_ch, from_kafka) if o is not None]
                    start = self._within_log(topic, p, max(candidates) if candidates else 0)
                    source = (
                        "clickhouse"
                        if from_ch is not None and start == from_ch
                        else "committed"
                        if from_kafka is not None
                        else "beginning"
                    )
                    if from_ch is not None and from_kafka is not None and from_ch < from_kafka:
                        log.info(
                            "sink_resume_after_dead_letters",
                            topic=topic,
                            partition=p,
                            clickhouse=from_ch,
                            committed=from_kafka,
                        )
                    metrics.POSITIONS.labels(topic=topic, source=source).inc()
                    positions[(topic, p)] = start
        except Exception as exc:  # noqa: BLE001 - ClickHouse down: resolve later, partitions stay paused
            self.writer.reset()
            log.warning("sink_positions_unavailable", partitions=len(tps), error=str(exc)[:300])
            return {}
        return positions

    def _within_log(self, topic: str, partition: int, start: int) -> int:
        """Clamp a resume offset to what the log holds, saying loudly why it had to be."""
        low, high = self.consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=self.config.position_timeout_s
        )
        if start < low:
            if start > 0:
                log.error(
                    "sink_records_expired_before_landing",
                    topic=topic,
                    partition=partition,
                    resume=start,
                    log_start=low,
                    lost=low - start,
                )
            return low
        if start > high:
            # ClickHouse holds offsets the log never reached: the topic was recreated. Read it all again
            # (its offsets restart at 0, so _offset no longer identifies one record across incarnations).
            log.error(
                "sink_offsets_beyond_log_end",
                topic=topic,
                partition=partition,
                resume=start,
                log_end=high,
                action="reading the partition from its start",
            )
            return low
        return start

    def _resolve_pending(self) -> None:
        positions = self._positions(sorted(self.pending))
        if not positions:
            self._wait(self.config.backoff_max_s / 4)
            return
        for tp, start in positions.items():
            self.pending.discard(tp)
            self.expected[tp] = start
        self.stash = deque(m for m in self.stash if (m.topic(), m.partition()) not in positions)
        # Re-assign everything with explicit offsets (a seek right after assign is not reliable).
        self.consumer.assign(
            [TopicPartition(t, p, o) for (t, p), o in self.expected.items()]
            + [TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self.pending]
        )
        hold = [TopicPartition(t, p) for t, p in self.pending]
        hold += [TopicPartition(t, p) for t, p in self.expected if t in self.paused_topics]
        if hold:
            self.consumer.pause(hold)
        log.info("sink_positions_resolved", partitions=len(positions))

    # ----------------------------------------------------------------------------- metrics
    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < self.config.lag_interval_s:
            return
        self._last_lag = now
        for (topic, partition), nxt in list(self.expected.items()):
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except Exception:  # noqa: BLE001 - no fetch yet
                continue
            if high >= 0:
                metrics.LAG.labels(topic=topic, partition=str(partition)).set(max(0, high - nxt))

    # ----------------------------------------------------------------------------- shutdown
    def _shutdown(self) -> None:
        stop = self.stop_event
        self.stop_event = threading.Event()  # let _wait run during the final flush, bounded by the deadline
        self._deadline = time.monotonic() + self.config.shutdown_timeout_s
        try:
            if self.expected:
                for topic in self.topics:
                    self._seal(topic)
                while any(self.plans.values()):
                    for topic in self.topics:
                        self._advance(topic)
                    if any(self.plans.values()):
                        self._wait(0.1)  # raises Stopping at the deadline
        except Stopping:
            log.warning(
                "sink_shutdown_unflushed", rows=sum(p.batch.rows for q in self.plans.values() for p in q)
            )
        finally:
            self.stop_event = stop
            self._deadline = None
            try:
                self.outbox.close()
                self.consumer.close()
            finally:
                self.inserter.close()
                self.writer.close()
            log.info("sink_stopped", rows_inserted=self.rows_inserted)


def run_sink(
    settings: Settings,
    topics: Iterable[str] | None = None,
    stop_event: threading.Event | None = None,
    config: SinkConfig | None = None,
    **overrides: Any,
) -> int:
    """Run the sink until ``stop_event`` is set; return the number of rows inserted.

    ClickHouse must answer within ``clickhouse_connect_timeout_s`` at the start (one clear error and
    exit status 1 otherwise); an outage after that is waited out, paused, without losing anything."""
    cfg = config or SinkConfig.from_settings(settings, **overrides)
    try:
        require_reachable(settings)
    except ClickHouseUnavailable as exc:
        log.error("sink_clickhouse_unreachable", error=str(exc))
        raise SystemExit(f"error: {exc}") from exc
    sink = KafkaSink(settings, cfg, topics, stop_event)
    sink.run()
    return sink.rows_inserted
