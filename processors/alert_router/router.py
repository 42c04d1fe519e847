"""The alert router: consume ``alerts.v1`` once per receiver, deduplicate, deliver, commit after delivery.

Each receiver has a lane (``lane.py``): its own consumer group (``<group_id>.<kind>-<hash of URL>``),
dedup window, in-flight cap and delivery thread. A lane commits a record once its receiver accepted it,
or rejected it for good and the dead letter saying so is acknowledged. A receiver that is down holds
back only its own lane: at ``max_in_flight`` records its consumer pauses while the other lanes go on.

The router's own group (``group_id``, what lag dashboards and the demo watch) is committed at the lowest
offset every lane has committed, per partition, read back from the broker (so this stays right with
several router processes sharing the lanes' partitions). A record is therefore committed there only
when every receiver has delivered or dead-lettered it. A new receiver's lane starts where the router's
group is, not at the start of the topic.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from core.settings import RouterSettings, Settings
from processors.alert_router.deadletters import DeadLetterSender, RawProducer
from processors.alert_router.delivery import Receiver, ReceiverWorker, Sender
from processors.alert_router.lane import ReceiverLane, lane_group
from processors.alert_router.offsets import OffsetTracker
from streams.topics import ALERTS_TOPIC

__all__ = ["ALERTS_TOPIC", "AlertRouter", "OffsetTracker", "RouterConfig"]

log = structlog.get_logger(__name__)

ConsumerFactory = Callable[[str], Consumer]  # group id -> consumer
METADATA_TIMEOUT_S = 5.0
PARTITIONS_REFRESH_S = 30.0


class RouterConfig(RouterSettings):
    """The router's configuration: the settings' ``alerts`` group (``CARNIVAL_ALERT_*``) and its topic."""

    topic: str = ALERTS_TOPIC

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RouterConfig:
        return cls(**{**settings.alerts.model_dump(), **overrides})


class AlertRouter:
    """Routes ``alerts.v1`` to receivers. ``run(stop)`` blocks until ``stop`` is set; ``close`` drains."""

    def __init__(self, settings: Settings, receivers: list[Receiver], config: RouterConfig | None = None,
                 sender: Sender | None = None, consumer_factory: ConsumerFactory | None = None,
                 producer: RawProducer | None = None) -> None:  # fmt: skip
        from streams.serde import serde_from_settings

        if not receivers:
            raise ValueError("the alert router needs at least one receiver")
        keys = [(r.kind, r.url) for r in receivers]
        if len(set(keys)) != len(keys):
            raise ValueError("the same receiver (kind and URL) is given twice")
        self.settings = settings
        self.config = cfg = config or RouterConfig.from_settings(settings)
        self.receivers = receivers
        self.serde = serde_from_settings(settings)
        self._make_consumer = consumer_factory or self._kafka_consumer
        producer = producer or self._kafka_producer()
        self.deadletters = DeadLetterSender(producer, self.serde, cfg.deadletter_retry_s)
        self.consumer = self._make_consumer(cfg.group_id)  # the router's group: committed, never subscribed
        self.lanes = [
            ReceiverLane(r, self._make_consumer(lane_group(cfg.group_id, r)), cfg, self.serde,
                         self.deadletters, cfg.topic, primary=i == 0, sender=sender)
            for i, r in enumerate(receivers)
        ]  # fmt: skip
        self.committed: dict[int, int] = {}  # partition -> offset committed for the router's group
        self._partitions: list[int] = []
        self._partitions_at = -PARTITIONS_REFRESH_S
        self._last_commit = 0.0
        self._last_record = time.monotonic()
        self._main_commits = 0

    def _kafka_consumer(self, group_id: str) -> Consumer:
        from streams.kafka import make_consumer

        return make_consumer(self.settings, group_id)

    def _kafka_producer(self) -> RawProducer:
        from confluent_kafka import Producer

        from streams.kafka import producer_config

        return Producer(producer_config(self.settings, **{"delivery.report.only.error": False}))

    # -- what callers read ----------------------------------------------------------------------
    @property
    def workers(self) -> list[ReceiverWorker]:
        return [lane.worker for lane in self.lanes]

    @property
    def in_flight(self) -> int:
        """Records some receiver has not finished (delivered or dead-lettered with an acknowledgement)."""
        return sum(lane.in_flight for lane in self.lanes)

    @property
    def stats(self) -> dict[str, int]:
        """Record counts as seen by the first lane (every lane reads every record), dead letters of all."""
        first = self.lanes[0].stats
        dead_lettered = sum(lane.stats["dead_lettered"] for lane in self.lanes)
        return {"consumed": first["consumed"], "deduplicated": first["deduplicated"],
                "undecodable": first["undecodable"], "dead_lettered": dead_lettered,
                "committed": self._main_commits}  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_idle_s: float | None = None) -> None:
        """Consume until ``stop`` is set (or, with ``max_idle_s``, until idle and fully delivered)."""
        self._seed_lanes()
        for lane in self.lanes:
            lane.start()
        log.info("alert_router_started", group=self.config.group_id,
                 receivers={lane.receiver.name: lane.group for lane in self.lanes})  # fmt: skip
        try:
            while not stop.is_set():
                read = sum(self._step(lane) for lane in self.lanes)
                self.deadletters.poll(0)
                if read:
                    self._last_record = time.monotonic()
                self._commit(force=False)
                if (max_idle_s is not None and time.monotonic() - self._last_record > max_idle_s
                        and self.in_flight == 0 and self.deadletters.pending == 0):  # fmt: skip
                    break
                if not read:
                    stop.wait(0.02)
        finally:
            self.close()

    def _step(self, lane: ReceiverLane) -> int:
        """One lane's step; an error in it (a bug, a client error) is logged and the lane goes on next time,
        so no lane can stop the others or the router."""
        try:
            return lane.step()
        except Exception as exc:  # noqa: BLE001 - records are guarded inside; this is the last line
            log.exception("alert_lane_error", receiver=lane.receiver.name, error=str(exc))
            time.sleep(0.1)
            return 0

    def close(self) -> None:
        """Give receivers ``drain_timeout_s`` to finish, commit what is done, stop workers, close."""
        deadline = time.monotonic() + self.config.drain_timeout_s
        while (self.in_flight or self.deadletters.pending) and time.monotonic() < deadline:
            self.deadletters.poll(0.05)
            self._commit(force=True)
        for lane in self.lanes:
            lane.stop()
        self.deadletters.flush(max(0.5, deadline - time.monotonic()))
        self._commit(force=True)
        self.deadletters.close(0.5)
        for lane in self.lanes:
            lane.close()
        with contextlib.suppress(RuntimeError, KafkaException):
            self.consumer.close()
        log.info("alert_router_stopped", undelivered=self.in_flight,
                 dead_letters_pending=self.deadletters.pending, **self.stats)  # fmt: skip

    # -- offsets --------------------------------------------------------------------------------
    def _topic_partitions(self, offset: int = -1001) -> list[TopicPartition]:
        now = time.monotonic()
        if now - self._partitions_at >= PARTITIONS_REFRESH_S or not self._partitions:
            try:
                meta = self.consumer.list_topics(self.config.topic, timeout=METADATA_TIMEOUT_S)
                topic = meta.topics.get(self.config.topic)
                if topic is not None and topic.error is None:
                    self._partitions = sorted(topic.partitions)
                    self._partitions_at = now
            except KafkaException as exc:
                log.warning("alert_metadata_failed", error=str(exc))
        return [TopicPartition(self.config.topic, p, offset) for p in self._partitions]

    @staticmethod
    def _committed(consumer: Consumer, partitions: list[TopicPartition]) -> dict[int, int]:
        """partition -> committed offset of ``consumer``'s group (absent: nothing committed yet)."""
        return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=METADATA_TIMEOUT_S)
                if tp.offset >= 0}  # fmt: skip

    def _seed_lanes(self) -> None:
        """A lane whose group has no offset for a partition starts where the router's group is."""
        partitions = self._topic_partitions()
        if not partitions:
            return
        try:
            self.committed = self._committed(self.consumer, partitions)
            for lane in self.lanes:
                have = self._committed(lane.consumer, partitions)
                seed = [TopicPartition(self.config.topic, p, o)
                        for p, o in self.committed.items() if p not in have]  # fmt: skip
                if seed:
                    lane.consumer.commit(offsets=seed, asynchronous=False)
                    log.info("alert_lane_seeded", receiver=lane.receiver.name, group=lane.group,
                             offsets={tp.partition: tp.offset for tp in seed})  # fmt: skip
        except (KafkaException, RuntimeError) as exc:  # another router may be running: it seeded already
            log.warning("alert_lane_seed_failed", error=str(exc))

    def _commit(self, force: bool) -> None:
        """Every lane commits what it finished; the router's group then gets, per partition, the lowest
        offset every lane's group has (as the broker has it, whoever committed it)."""
        now = time.monotonic()
        if not force and now - self._last_commit < self.config.commit_interval_s:
            return
        self._last_commit = now
        for lane in self.lanes:
            lane.commit()
        partitions = self._topic_partitions()
        if not partitions:
            return
        try:
            per_lane = [self._committed(lane.consumer, partitions) for lane in self.lanes]
        except (KafkaException, RuntimeError) as exc:
            log.warning("alert_commit_failed", group=self.config.group_id, error=str(exc))
            return
        moved = []
        for tp in partitions:
            offsets = [c.get(tp.partition) for c in per_lane]
            if any(o is None for o in offsets):
                continue
            low = min(o for o in offsets if o is not None)
            if low > self.committed.get(tp.partition, -1):
                moved.append(TopicPartition(self.config.topic, tp.partition, low))
        if not moved:
            return
        try:
            self.consumer.commit(offsets=moved, asynchronous=False)
        except (KafkaException, RuntimeError) as exc:
            log.warning("alert_commit_failed", group=self.config.group_id, error=str(exc))
            return
        self._main_commits += len(moved)
        self.committed.update({tp.partition: tp.offset for tp in moved})
