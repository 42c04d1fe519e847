"""The ClickHouse sink: a plain confluent-kafka consumer loop with exact control of batches and offsets.

Exactly-once as analysts see it (every Kafka record is one row, none lost, none twice):

1. The rows in ClickHouse are the state. When partitions are assigned, the sink kills any insert a
   previous owner still has in flight for them, reads ``max(_offset)`` per partition from the table
   (a per-part projection, as durable as the rows) and resumes at max + 1, or at the committed Kafka
   offset when that is further (records at the end that went to the dead-letter topic), or at the
   beginning. No second state to fall out of step with the data.
2. A batch (one per topic) holds one contiguous offset range per partition and one writer schema, and
   is inserted as one Avro container: one insert, one part, all or nothing.
3. A batch is retried with the same ``insert_deduplication_token`` (topic + exact ranges), so a retry
   after a timeout that did land is dropped by ClickHouse.
4. Offsets are committed after the insert returned (lag monitoring, and the fallback above).

Records that cannot be decoded go to ``deadletter.v1`` (with their source partition and offset) and
count as processed. When ClickHouse fails, every partition is paused, the consumer keeps being polled
(group membership stays alive), and the batch is retried with exponential backoff until it lands.
Checkpoint order: produce dead letters and flush the producer, insert, commit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from core.settings import Settings
from sinks import metrics
from sinks.avro_container import WriterSchemas
from sinks.batches import TopicBatch
from sinks.config import SINK_TABLES, SinkConfig
from sinks.writer import ClickHouseWriter, InsertFailed
from streams.deadletter import deadletter_record, send_to_deadletter
from streams.exceptions import SerializationError
from streams.kafka import Producer, make_consumer
from streams.serde import serde_from_settings

log = structlog.get_logger(__name__)

PROCESSOR = "carnival-sink"


class Stopping(Exception):
    """The stop event was set while the sink waited for ClickHouse."""


class KafkaSink:
    def __init__(
        self,
        settings: Settings,
        config: SinkConfig | None = None,
        topics: Iterable[str] | None = None,
        stop_event: threading.Event | None = None,
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
        self.writer = ClickHouseWriter(settings, self.config)
        consumer_conf: dict[str, Any] = {
            "max.poll.interval.ms": 300_000,
            "session.timeout.ms": self.config.session_timeout_ms,
        }
        if self.config.instance_id:
            consumer_conf["group.instance.id"] = self.config.instance_id
        self.consumer: Consumer = make_consumer(settings, self.config.group_id, **consumer_conf)
        self.producer: Producer | None = None  # created on the first dead letter
        self.batches = {t: TopicBatch(t, SINK_TABLES[t]) for t in self.topics}
        self.expected: dict[tuple[str, int], int] = {}  # assigned and positioned: next offset to take
        self.pending: set[tuple[str, int]] = set()  # assigned, position not known yet (ClickHouse down)
        self.stash: deque[Message] = deque()  # polled while waiting; processed in order afterwards
        self.paused = False
        self.dead_letters_unflushed = 0
        self.rows_inserted = 0
        self._last_lag = 0.0

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
        topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
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
        if value is None:  # a tombstone (compacted topics): nothing to land
            batch.skip(partition, offset)
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
            self._flush(batch)  # a new writer schema starts a new batch (one container per schema)
        batch.add(partition, offset, ws, payload, msg.key())
        if batch.rows >= self.config.batch_rows:
            self._flush(batch)

    def _retry_after_registry_error(self, tp: tuple[str, int], offset: int, exc: SerializationError) -> None:
        """The registry is unreachable: read the record again later (transient, never dead-lettered)."""
        log.warning("sink_registry_unavailable", topic=tp[0], partition=tp[1], error=str(exc))
        self.expected[tp] = offset
        self.stash = deque(m for m in self.stash if (m.topic(), m.partition()) != tp)
        self.consumer.seek(TopicPartition(tp[0], tp[1], offset))
        self._wait(self.config.backoff_max_s)

    def _flush_due(self, now: float) -> None:
        for batch in self.batches.values():
            if not batch.empty and (
                batch.rows >= self.config.batch_rows or batch.age(now) >= self.config.flush_interval_s
            ):
                self._flush(batch)

    # ---------------------------------------------------------------------------- checkpoint
    def _flush(self, batch: TopicBatch, deadline: float | None = None) -> None:
        """Dead letters out, then the insert (retried until it lands), then the commit."""
        backoff = self.config.backoff_initial_s
        while not batch.empty:
            self._flush_dead_letters()
            if batch.rows == 0:
                break
            try:
                self.rows_inserted += self.writer.insert(batch)
                break
            except InsertFailed as exc:
                if exc.data_error and self._dead_letter_rejected(batch):
                    continue  # bad records removed: try the rest at once
                metrics.INSERT_RETRIES.labels(table=batch.table, reason=exc.reason).inc()
                log.warning(
                    "sink_insert_failed",
                    table=batch.table,
                    rows=batch.rows,
                    reason=exc.reason,
                    retry_in_s=round(backoff, 2),
                    error=str(exc)[:300],
                )
                if deadline is not None and time.monotonic() + backoff > deadline:
                    raise Stopping from exc
                self._pause()
                self._wait(backoff)  # partitions revoked meanwhile leave the batch
                backoff = min(backoff * 2, self.config.backoff_max_s)
        if not batch.empty:
            self._commit(batch.topic, batch.commit_positions())
        batch.clear()
        if self.paused:
            self._resume()

    def _commit(self, topic: str, positions: dict[int, int]) -> None:
        offsets = [TopicPartition(topic, p, o) for p, o in positions.items() if (topic, p) in self.expected]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - commits are advisory here: ClickHouse holds the state
            log.warning("sink_commit_failed", topic=topic, error=str(exc))

    def _dead_letter_rejected(self, batch: TopicBatch) -> bool:
        """ClickHouse could not parse the batch: decode every record, dead-letter the bad ones."""
        assert batch.schema is not None
        bad = 0
        if batch.schema.header_len == 0:
            return False  # re-encoded bodies were decoded by the serde already
        for partition, run in list(batch.runs.items()):
            rejected: set[int] = set()
            for offset, payload, key in zip(run.offsets, run.payloads, run.keys, strict=True):
                try:
                    self.serde.decode(batch.topic, payload)
                except SerializationError as exc:
                    rejected.add(offset)
                    self._dead_letter(batch.topic, partition, offset, payload, key, exc.kind, str(exc))
            if rejected:
                batch.remove_rows(partition, rejected)
                bad += len(rejected)
        if bad:
            log.warning("sink_rejected_records_dead_lettered", topic=batch.topic, records=bad)
        return bad > 0

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
        if self.producer is None:
            self.producer = Producer(self.settings)
        record = deadletter_record(
            topic, kind, error, value, key=key, partition=partition, offset=offset, processor=PROCESSOR
        )
        send_to_deadletter(self.producer, self.serde, record)
        metrics.DEADLETTERED.labels(topic=topic, kind=kind).inc()
        self.dead_letters_unflushed += 1

    def _flush_dead_letters(self) -> None:
        if self.producer is None or not self.dead_letters_unflushed:
            return
        backoff = self.config.backoff_initial_s
        while self.producer.flush(timeout=10.0):
            log.warning("sink_deadletter_flush_pending", pending=self.dead_letters_unflushed)
            self._wait(backoff)
            backoff = min(backoff * 2, self.config.backoff_max_s)
        self.dead_letters_unflushed = 0

    # ------------------------------------------------------------------------- backpressure
    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            metrics.PAUSED.set(1)
            log.warning("sink_paused")
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)

    def _resume(self) -> None:
        self.paused = False
        metrics.PAUSED.set(0)
        ready = [TopicPartition(t, p) for (t, p) in self.expected]
        if ready:
            self.consumer.resume(ready)
        log.info("sink_resumed")

    def _wait(self, seconds: float) -> None:
        """Keep the consumer polled (membership, rebalance callbacks) without taking new work."""
        deadline = time.monotonic() + seconds
        while True:
            if self.stop_event.is_set():
                raise Stopping
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stash.extend(self.consumer.consume(self.config.poll_batch, timeout=min(left, 0.2)))

    # ---------------------------------------------------------------------------- rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
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
        hold = [TopicPartition(t, p) for (t, p) in tps if (t, p) in self.pending or self.paused]
        if hold:
            consumer.pause(hold)
        log.info(
            "sink_partitions_assigned",
            partitions=len(tps),
            pending=len(self.pending),
            positions={f"{t}:{p}": o for (t, p), o in sorted(positions.items())},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for topic in {t for t, _ in gone}:
            if topic in self.batches:
                self.batches[topic].drop_partitions(p for t, p in gone if t == topic)
        self.stash = deque(m for m in self.stash if (m.topic(), m.partition()) not in gone)
        for tp in gone:
            self.expected.pop(tp, None)
            self.pending.discard(tp)
            with contextlib.suppress(KeyError):
                metrics.LAG.remove(tp[0], str(tp[1]))
        log.info("sink_partitions_revoked", partitions=len(gone))

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
        if self.paused:
            hold += [TopicPartition(t, p) for t, p in self.expected]
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
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        stop = self.stop_event
        self.stop_event = threading.Event()  # let _wait run during the final flush, bounded by deadline
        try:
            for batch in self.batches.values():
                if not batch.empty and self.expected:
                    self._flush(batch, deadline=deadline)
        except Stopping:
            log.warning("sink_shutdown_unflushed", rows=sum(b.rows for b in self.batches.values()))
        finally:
            self.stop_event = stop
            if self.producer is not None:
                self.producer.close()
                self.producer = None  # let librdkafka's client go now, not at garbage collection
            try:
                self.consumer.close()
            finally:
                self.writer.close()
            log.info("sink_stopped", rows_inserted=self.rows_inserted)


def run_sink(
    settings: Settings,
    topics: Iterable[str] | None = None,
    stop_event: threading.Event | None = None,
    config: SinkConfig | None = None,
    **overrides: Any,
) -> int:
    """Run the sink until ``stop_event`` is set; return the number of rows inserted."""
    cfg = config or SinkConfig.from_settings(settings, **overrides)
    sink = KafkaSink(settings, cfg, topics, stop_event)
    sink.run()
    return sink.rows_inserted
