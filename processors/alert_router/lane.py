"""One receiver's lane: its own consumer group on ``alerts.v1``, dedup window, in-flight cap, delivery
worker and commits. Lanes share nothing but the dead-letter producer, so a receiver that is down or slow
pauses only its own consumer (at ``max_in_flight`` records) while the others go on reading and
committing. The router commits its own group from the lanes' committed offsets (``router.py``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge

from core.settings import RouterSettings
from processors.alert_router.deadletters import DeadLetterSender
from processors.alert_router.dedup import DedupWindow
from processors.alert_router.delivery import (
    Backoff,
    DeliveryError,
    Job,
    Receiver,
    ReceiverWorker,
    Sender,
    post_json,
)
from processors.alert_router.offsets import OffsetTracker
from streams.deadletter import DECODE, DELIVERY_REJECTED, PROCESSING, TOMBSTONE, deadletter_record

__all__ = ["ReceiverLane", "lane_group"]

log = structlog.get_logger(__name__)

CONSUMED = Counter(
    "carnival_alert_consumed_total", "alerts.v1 records read, per receiver lane", ["receiver", "result"]
)
IN_FLIGHT = Gauge("carnival_alert_in_flight", "Records read and not finished, per receiver", ["receiver"])
PAUSED = Gauge("carnival_alert_paused", "1 while a receiver's consumer is paused at its cap", ["receiver"])
POLL_BATCH = 200  # records taken from the consumer per step, at most


def lane_group(group_id: str, receiver: Receiver) -> str:
    """The receiver's own consumer group: named by a hash of kind and URL (not by position or a URL that
    carries a token), so reordering the options does not swap two receivers' progress."""
    digest = hashlib.sha256(f"{receiver.kind}|{receiver.url}".encode()).hexdigest()[:12]
    return f"{group_id}.{receiver.kind}-{digest}"


class ReceiverLane:
    """``step()`` reads what its consumer has (unless at the cap), hands alerts to the worker and commits
    what is done. ``primary``: this lane dead-letters records nobody can route (tombstones, undecodable),
    once; the other lanes skip them."""

    def __init__(self, receiver: Receiver, consumer: Consumer, config: RouterSettings, serde: Any,
                 deadletters: DeadLetterSender, topic: str, primary: bool,
                 sender: Sender | None = None) -> None:  # fmt: skip
        self.receiver = receiver
        self.consumer = consumer
        self.config = config
        self.serde = serde
        self.deadletters = deadletters
        self.topic = topic
        self.primary = primary
        self.group = lane_group(config.group_id, receiver)
        self.tracker = OffsetTracker()
        self.dedup = DedupWindow(config.dedup_window_s, config.dedup_max_entries)
        send = sender or functools.partial(post_json, body_max_bytes=config.rejected_body_max_bytes)
        self.worker = ReceiverWorker(
            receiver, self._on_done, on_rejected=self._on_rejected, timeout_s=config.timeout_s,
            backoff_initial_s=config.backoff_initial_s, backoff_max_s=config.backoff_max_s,
            backoff_multiplier=config.backoff_multiplier, external_url=config.external_url, sender=send,
        )  # fmt: skip
        self.stats = {"consumed": 0, "deduplicated": 0, "undecodable": 0, "dead_lettered": 0, "committed": 0}
        self.paused = False
        self._to_commit: dict[int, int] = {}  # partition -> offset done but not committed yet
        self._registry_backoff = Backoff(
            config.backoff_initial_s, config.backoff_max_s, config.backoff_multiplier
        )
        self._wait_until = 0.0  # no reading before this (monotonic): the schema registry was down
        self._metric = {"receiver": receiver.name}

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()
        self.consumer.subscribe([self.topic], on_revoke=self._on_revoke)

    def stop(self) -> None:
        self.worker.stop()
        self.commit()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, KafkaException):  # already closed / broker gone
            self.consumer.close()

    @property
    def in_flight(self) -> int:
        return self.tracker.in_flight

    # -- one step -------------------------------------------------------------------------------
    def step(self, timeout_s: float = 0.0) -> int:
        """Read and dispatch up to a batch; returns how many records were read."""
        self.worker.ensure_alive()
        read = 0
        while (read < POLL_BATCH and self.tracker.in_flight < self.config.max_in_flight
               and time.monotonic() >= self._wait_until):  # fmt: skip
            msg = self.consumer.poll(timeout_s if read == 0 else 0)
            if msg is None:
                break
            read += self._handle(msg)
        self._flow_control()
        if read == 0 and self.paused:
            msg = self.consumer.poll(0)  # serve rebalance callbacks while paused
            if msg is not None:  # from a partition assigned since the pause: handled, never dropped
                read += self._handle(msg)
        IN_FLIGHT.labels(**self._metric).set(self.tracker.in_flight)
        return read

    def _flow_control(self) -> None:
        in_flight, cap = self.tracker.in_flight, self.config.max_in_flight
        if in_flight >= cap:
            if not self.paused:
                log.warning("alert_receiver_paused", receiver=self.receiver.name, in_flight=in_flight)
            self.consumer.pause(self.consumer.assignment())  # again each step: a rebalance resumes
            self.paused = True
        elif self.paused and in_flight < max(1, cap // 2):
            self.consumer.resume(self.consumer.assignment())
            self.paused = False
            log.info("alert_receiver_resumed", receiver=self.receiver.name, in_flight=in_flight)
        PAUSED.labels(**self._metric).set(int(self.paused))

    # -- records --------------------------------------------------------------------------------
    def _handle(self, msg: Message) -> int:
        if msg.error():
            log.warning("alert_consume_error", receiver=self.receiver.name, error=str(msg.error()))
            return 0
        partition, offset, value = msg.partition() or 0, msg.offset() or 0, msg.value()
        try:
            if value is None:
                raise _Unroutable(TOMBSTONE, "tombstone (null value) on the alerts topic")
            alert = self.serde.decode(msg.topic() or self.topic, value)
            self._registry_backoff.reset()
        except Exception as exc:  # noqa: BLE001 - any unusable record goes to the dead-letter topic
            if getattr(exc, "kind", None) == "REGISTRY":  # the record is fine; the schema registry is not
                self._read_again_later(partition, offset, exc)
                return 0
            self.stats["consumed"] += 1
            self.tracker.add(partition, offset)
            self.stats["undecodable"] += 1
            self._count("undecodable")
            kind = getattr(exc, "kind", None) or DECODE
            if not self.primary:  # the primary lane dead-letters it, once
                self.tracker.done(partition, offset)
                return 1
            log.error("alert_undecodable", partition=partition, offset=offset, error_kind=kind,
                      error=str(exc))  # fmt: skip
            self._dead_letter(partition, offset, value, msg.key(), kind, str(exc))
            return 1
        self.stats["consumed"] += 1
        self.tracker.add(partition, offset)
        try:
            if not self.dedup.should_send(alert["fingerprint"], alert["status"]):
                self.stats["deduplicated"] += 1
                self._count("deduplicated")
                log.info("alert_deduplicated", receiver=self.receiver.name, fingerprint=alert["fingerprint"],
                         status=alert["status"])  # fmt: skip
                self.tracker.done(partition, offset)
                return 1
            body = self.receiver.payload(alert, self.config.external_url)
        except Exception as exc:  # noqa: BLE001 - a record this receiver's shape cannot express
            error = f"receiver {self.receiver.name}: cannot build the {self.receiver.kind} body: {exc!r}"
            log.error("alert_payload_failed", receiver=self.receiver.name, offset=offset, error=error)
            self._dead_letter(partition, offset, value, msg.key(), PROCESSING, error)
            return 1
        self._count("routed")
        self.worker.submit(Job(partition, offset, alert, value, msg.key(), body))
        return 1

    def _read_again_later(self, partition: int, offset: int, exc: Exception) -> None:
        """A transient decode failure: read the record again after a backoff instead of dead-lettering it."""
        delay = self._registry_backoff.next_delay()
        log.warning("alert_registry_unavailable", receiver=self.receiver.name, partition=partition,
                    offset=offset, error=str(exc), retry_in_s=round(delay, 2))  # fmt: skip
        self.consumer.seek(TopicPartition(self.topic, partition, offset))
        self._wait_until = time.monotonic() + delay

    def _count(self, result: str) -> None:
        CONSUMED.labels(receiver=self.receiver.name, result=result).inc()

    def _on_done(self, job: Job) -> None:
        self.tracker.done(job.partition, job.offset)

    def _on_rejected(self, job: Job, error: DeliveryError) -> None:
        """A 4xx (or other permanent status): the alert, the status and the answer's first bytes go to the
        dead-letter topic; the alert is done for this receiver once the dead letter is acknowledged."""
        body = error.body[: self.config.rejected_body_max_bytes].decode(errors="replace")
        text = f"receiver {self.receiver.name} rejected the alert: HTTP {error.status}; body: {body!r}"
        self._dead_letter(job.partition, job.offset, job.value, job.key, DELIVERY_REJECTED, text)

    def _dead_letter(self, partition: int, offset: int, value: bytes | None, key: bytes | None, kind: str,
                     error: str) -> None:  # fmt: skip
        record = deadletter_record(self.topic, kind, error, value, key, partition, offset,
                                   processor="alert_router")  # fmt: skip
        self.stats["dead_lettered"] += 1
        self.deadletters.send(record, functools.partial(self.tracker.done, partition, offset))

    # -- offsets --------------------------------------------------------------------------------
    def commit(self) -> None:
        """Commit what is done; a failed commit is tried again with the next one (nothing else may move)."""
        self._to_commit.update(self.tracker.ready())
        if not self._to_commit:
            return
        offsets = [TopicPartition(self.topic, p, o) for p, o in self._to_commit.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except (KafkaException, RuntimeError) as exc:
            log.warning("alert_commit_failed", receiver=self.receiver.name, error=str(exc))
            return
        self.stats["committed"] += len(offsets)
        self._to_commit.clear()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.commit()
        gone = [tp.partition for tp in partitions]
        self.tracker.forget(gone)
        for partition in gone:
            self._to_commit.pop(partition, None)


class _Unroutable(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
