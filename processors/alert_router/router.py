"""The alert router: consume ``alerts.v1``, deduplicate, fan out to receivers, commit after delivery.

Order of effects for one record: decode -> dedup -> hand to every receiver's queue -> each receiver's
worker delivers (retrying while the receiver is down) -> when every receiver is done, the record is done
-> the consumer commits the highest offset below which every record of the partition is done.
A crash therefore re-delivers (at least once), never loses; the dedup window suppresses repeats seen
by this process. If receivers fall too far behind (``max_in_flight``), consumption pauses until they
catch up, which bounds memory while a receiver is down for long.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter

from core.settings import RouterSettings, Settings
from processors.alert_router.dedup import DedupWindow
from processors.alert_router.delivery import Job, Receiver, ReceiverWorker, Sender, post_json
from streams.topics import ALERTS_TOPIC

__all__ = ["ALERTS_TOPIC", "AlertRouter", "OffsetTracker", "RouterConfig"]

log = structlog.get_logger(__name__)

CONSUMED = Counter("carnival_alert_consumed_total", "alerts.v1 records read by the router", ["result"])


class RouterConfig(RouterSettings):
    """The router's configuration: the settings' ``alerts`` group (``CARNIVAL_ALERT_*``) and its topic."""

    topic: str = ALERTS_TOPIC

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RouterConfig:
        return cls(**{**settings.alerts.model_dump(), **overrides})


class OffsetTracker:
    """Which records are fully handled, per partition; thread-safe (workers call ``done``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: dict[int, deque[int]] = {}  # partition -> offsets in consumption order
        self._remaining: dict[tuple[int, int], int] = {}  # (partition, offset) -> receivers still to go
        self._committed: dict[int, int] = {}  # partition -> next offset already committed

    def add(self, partition: int, offset: int, receivers: int) -> None:
        with self._lock:
            self._order.setdefault(partition, deque()).append(offset)
            self._remaining[(partition, offset)] = receivers

    def done(self, partition: int, offset: int, receivers: int = 1) -> None:
        with self._lock:
            key = (partition, offset)
            if key in self._remaining:  # unknown: a partition revoked meanwhile
                self._remaining[key] -= receivers

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._remaining)

    def ready(self) -> dict[int, int]:
        """partition -> next offset to commit, for partitions that moved since the last call."""
        out = {}
        with self._lock:
            for partition, order in self._order.items():
                last = None
                while order and self._remaining.get((partition, order[0]), 0) <= 0:
                    last = order.popleft()
                    self._remaining.pop((partition, last), None)
                if last is not None:
                    out[partition] = last + 1
        return out

    def forget(self, partitions: list[int]) -> None:
        with self._lock:
            for partition in partitions:
                for offset in self._order.pop(partition, ()):
                    self._remaining.pop((partition, offset), None)


class AlertRouter:
    """Routes ``alerts.v1`` to receivers. ``run(stop)`` blocks until ``stop`` is set; ``close`` drains."""

    def __init__(self, settings: Settings, receivers: list[Receiver], config: RouterConfig | None = None,
                 sender: Sender = post_json, consumer: Consumer | None = None) -> None:  # fmt: skip
        from streams.kafka import make_consumer
        from streams.serde import serde_from_settings

        if not receivers:
            raise ValueError("the alert router needs at least one receiver")
        self.settings = settings
        self.config = cfg = config or RouterConfig.from_settings(settings)
        self.receivers = receivers
        self.serde = serde_from_settings(settings)
        self.consumer = consumer or make_consumer(settings, cfg.group_id)
        self.tracker = OffsetTracker()
        self.dedup = DedupWindow(cfg.dedup_window_s, cfg.dedup_max_entries)
        self.workers = [
            ReceiverWorker(r, self._on_done, timeout_s=cfg.timeout_s, backoff_initial_s=cfg.backoff_initial_s,
                           backoff_max_s=cfg.backoff_max_s, external_url=cfg.external_url, sender=sender)
            for r in receivers
        ]  # fmt: skip
        self.stats = {"consumed": 0, "deduplicated": 0, "undecodable": 0, "committed": 0}
        self._paused = False
        self._last_commit = 0.0
        self._last_record = time.monotonic()
        self._producer: Any = None

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_idle_s: float | None = None) -> None:
        """Consume until ``stop`` is set (or, with ``max_idle_s``, until idle and fully delivered)."""
        for worker in self.workers:
            worker.start()
        self.consumer.subscribe([self.config.topic], on_revoke=self._on_revoke)
        log.info(
            "alert_router_started", receivers=[r.name for r in self.receivers], group=self.config.group_id
        )
        try:
            while not stop.is_set():
                msg = self.consumer.poll(0.1)
                if msg is not None:
                    self._handle(msg)
                self._flow_control()
                self._commit(force=False)
                if (max_idle_s is not None and time.monotonic() - self._last_record > max_idle_s
                        and self.tracker.in_flight == 0):  # fmt: skip
                    break
        finally:
            self.close()

    def close(self) -> None:
        """Give receivers ``drain_timeout_s`` to finish, commit what is done, stop workers, close."""
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.tracker.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
            self._commit(force=True)
        for worker in self.workers:
            worker.stop()
        self._commit(force=True)
        if self._producer is not None:
            self._producer.close()
        with contextlib.suppress(RuntimeError):  # already closed
            self.consumer.close()
        log.info("alert_router_stopped", undelivered=self.tracker.in_flight, **self.stats)

    # -- records --------------------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        if msg.error():
            log.warning("alert_consume_error", error=str(msg.error()))
            return
        partition, offset, value = msg.partition() or 0, msg.offset() or 0, msg.value()
        self._last_record = time.monotonic()
        self.stats["consumed"] += 1
        self.tracker.add(partition, offset, len(self.workers))
        try:
            if value is None:
                raise ValueError("empty record (tombstone) on the alerts topic")
            alert = self.serde.decode(msg.topic() or self.config.topic, value)
        except Exception as exc:  # noqa: BLE001 - any unusable record goes to the dead-letter topic
            self._dead_letter(msg, exc)
            self.tracker.done(partition, offset, len(self.workers))
            return
        if not self.dedup.should_send(alert["fingerprint"], alert["status"]):
            self.stats["deduplicated"] += 1
            CONSUMED.labels(result="deduplicated").inc()
            log.info("alert_deduplicated", fingerprint=alert["fingerprint"], status=alert["status"])
            self.tracker.done(partition, offset, len(self.workers))
            return
        CONSUMED.labels(result="routed").inc()
        job = Job(partition, offset, alert)
        for worker in self.workers:
            worker.submit(job)

    def _on_done(self, job: Job) -> None:
        self.tracker.done(job.partition, job.offset)

    def _dead_letter(self, msg: Message, exc: Exception) -> None:
        from streams.deadletter import deadletter_record, send_to_deadletter
        from streams.kafka import Producer

        self.stats["undecodable"] += 1
        CONSUMED.labels(result="undecodable").inc()
        kind = getattr(exc, "kind", "DECODE")
        log.error("alert_undecodable", partition=msg.partition(), offset=msg.offset(), error=str(exc))
        if self._producer is None:
            self._producer = Producer(self.settings)
        record = deadletter_record(msg.topic() or self.config.topic, kind, str(exc), msg.value(), msg.key(),
                                   msg.partition(), msg.offset(), processor="alert_router")  # fmt: skip
        send_to_deadletter(self._producer, self.serde, record)
        self._producer.flush(10)

    # -- offsets and flow -----------------------------------------------------------------------
    def _commit(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self.config.commit_interval_s:
            return
        self._last_commit = now
        ready = self.tracker.ready()
        if not ready:
            return
        offsets = [TopicPartition(self.config.topic, p, o) for p, o in ready.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            self.stats["committed"] += len(offsets)
        except (KafkaException, RuntimeError) as exc:
            log.warning("alert_commit_failed", error=str(exc))  # records are re-delivered: at least once

    def _flow_control(self) -> None:
        in_flight = self.tracker.in_flight
        if not self._paused and in_flight >= self.config.max_in_flight:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True
            log.warning("alert_router_paused", in_flight=in_flight,
                        backlog={w.receiver.name: w.backlog for w in self.workers})  # fmt: skip
        elif self._paused and in_flight < self.config.max_in_flight // 2:
            self.consumer.resume(self.consumer.assignment())
            self._paused = False
            log.info("alert_router_resumed", in_flight=in_flight)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(force=True)
        self.tracker.forget([tp.partition for tp in partitions])
