"""Consumer lag per processor, sampled in the background so the page always has a short history.

The faust workers and the alert router commit their progress to Kafka: ``streams.lag.group_lag`` reads
it. The sink's resume state is ClickHouse itself (``max(_offset)`` per partition, see sinks/kafka_sink.py),
so its lag is the high watermark minus the next offset ClickHouse does not hold yet.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from clickhouse_connect.driver.client import Client
from confluent_kafka import TopicPartition

from core.settings import Settings
from processors.groups import GROUPS as PROCESSOR_GROUPS
from sinks.tables import TABLE_FOR_TOPIC
from streams.kafka import make_consumer
from streams.lag import group_lag

log = structlog.get_logger(__name__)

SINK = "sink"
# processor -> (consumer group, input topics): the processors' own declaration.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {n: (g.group, g.topics) for n, g in PROCESSOR_GROUPS.items()}
HISTORY = 720  # samples kept: an hour at the default 5 s refresh
KAFKA_TIMEOUT_S = 5.0


def sink_lag(settings: Settings, client: Client, timeout_s: float = KAFKA_TIMEOUT_S) -> int:
    """Records in the sink's topics that are not in ClickHouse yet."""
    union = " UNION ALL ".join(
        f"SELECT _topic, _partition, max(_offset) FROM {table} GROUP BY _topic, _partition"
        for table in TABLE_FOR_TOPIC.values()
    )
    stored = {(str(t), int(p)): int(o) for t, p, o in client.query(union).result_rows}
    consumer = make_consumer(settings)
    try:
        meta = consumer.list_topics(timeout=timeout_s).topics
        behind = 0
        for topic in TABLE_FOR_TOPIC:
            for partition in meta[topic].partitions if topic in meta else ():
                tp = TopicPartition(topic, partition)
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
                done = stored.get((topic, partition))
                behind += max(0, high - (done + 1 if done is not None else low))
        return behind
    finally:
        consumer.close()


def processor_lag(settings: Settings, client: Client) -> dict[str, int]:
    """Records behind, per processor."""
    lag = {name: sum(group_lag(settings, group, list(topics), KAFKA_TIMEOUT_S).values())
           for name, (group, topics) in GROUPS.items()}  # fmt: skip
    lag[SINK] = sink_lag(settings, client)
    return lag


@dataclass
class LagSampler:
    """Samples ``processor_lag`` every ``interval_s`` on a daemon thread; ``rows()`` gives the history."""

    settings: Settings
    client: Client
    interval_s: float = 5.0
    samples: deque[tuple[datetime, dict[str, int]]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        threading.Thread(target=self._run, name="dashboard-lag", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> None:
        try:
            lag = processor_lag(self.settings, self.client)
        except Exception as exc:  # noqa: BLE001 - Kafka down must not take the page down
            with self._lock:
                self.error = f"{type(exc).__name__}: {exc}"
            log.warning("dashboard_lag_failed", error=self.error)
            return
        with self._lock:
            self.samples.append((datetime.now(UTC), lag))
            self.error = None

    def rows(self) -> list[tuple[datetime, str, int]]:
        with self._lock:
            return [(ts, name, n) for ts, lag in self.samples for name, n in sorted(lag.items())]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample()
            self._stop.wait(max(0.5, self.interval_s - (time.monotonic() - started)))
