"""Kafka clients on confluent-kafka: a producer that counts deliveries, and consumer/admin factories.

Every client gets its connection and security settings from ``Settings.kafka`` (``client_config()``), so
SASL and SSL work the same for every component. The operator's librdkafka passthrough
(``CARNIVAL_KAFKA_EXTRA_CONFIG``) wins over the defaults here; what a caller passes explicitly wins over it.

librdkafka's own log lines and client errors (a refused connection is logged every few milliseconds
while the broker is away) go to the structured log at debug level, never to the terminal
(``CLIENT_LOGGING``, in every config built here); ``await_broker`` turns an unreachable cluster into
one clear ``BrokerUnreachable`` after ``kafka_connect_timeout_s``.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import Producer as _RawProducer
from confluent_kafka.admin import AdminClient

from core.metrics import KAFKA_DELIVERED, KAFKA_DELIVERY_FAILED, KAFKA_PRODUCED
from core.settings import Settings
from streams.exceptions import BrokerUnreachable

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 1_000_000
"""The producers' ``message.max.bytes``: below the broker's default limit (1 MiB + 12 bytes per batch), so
whatever librdkafka accepts the broker accepts too."""
RECORD_OVERHEAD_BYTES = 512
"""What librdkafka adds to key + value when it checks ``message.max.bytes`` (about 40 bytes), rounded up."""


class _ClientLog:
    """The ``logger`` of every confluent client: librdkafka's lines become debug events of the structured
    log (served by the client's poll/flush/consume), so a retrying client never floods the terminal."""

    def log(self, level: int, fmt: str, *args: object) -> None:
        log.debug("kafka_client_log", level=logging.getLevelName(level), message=fmt % args if args else fmt)


def _on_client_error(err: KafkaError) -> None:
    # Transport errors and "all brokers down" are retried by librdkafka; the callers see what matters
    # (delivery reports, await_broker's timeout), so these are kept for debugging. A fatal error ends the
    # client (e.g. the idempotent producer's sequence lost): that one is an error.
    if err.fatal():
        log.error("kafka_client_fatal", code=err.name(), error=err.str())
    else:
        log.debug("kafka_client_error", code=err.name(), error=err.str())


CLIENT_LOGGING: dict[str, Any] = {"logger": _ClientLog(), "error_cb": _on_client_error}
"""Part of every config built here (a caller's own ``error_cb`` or ``logger`` wins)."""

# Idempotent, fully acknowledged, compressed and batched: safe to retry, cheap on the wire.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "message.timeout.ms": 120_000,
    "message.max.bytes": MAX_MESSAGE_BYTES,
    # Java's (and aiokafka's/faust's) key hashing, not librdkafka's CRC32 default: a key must land in the
    # same partition whoever produced it, or co-partitioned faust tables would see the wrong keys.
    "partitioner": "murmur2_random",
}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    kafka = settings.kafka
    return {**CLIENT_LOGGING, **kafka.client_config(), **PRODUCER_DEFAULTS, **kafka.extra_config, **overrides}


@dataclass
class DeliveryStats:
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    last_error: str | None = None

    @property
    def pending(self) -> int:
        return self.produced - self.delivered - self.failed


class Producer:
    """confluent-kafka producer with delivery reports counted per topic and flush on close.

    ``produce`` never raises on a full local queue: it serves delivery callbacks until there is room,
    which is the backpressure a fast file reader needs. Counts are kept in plain ints on the hot path
    and added to the Prometheus counters when callbacks are served (a labelled inc per record costs
    more than the produce call itself).
    """

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        # Only failures call back into Python: a callback per record costs as much as producing it.
        # Successes are counted at flush (produced - failed - still pending).
        # The callback is the client's default (config), not an argument of each produce call: one fewer
        # Python reference librdkafka keeps per queued record (a third of produce()'s cost).
        config = producer_config(
            settings, **{"delivery.report.only.error": True, "on_delivery": self._on_delivery, **overrides}
        )
        self._producer = _RawProducer(config)
        self.max_message_bytes = int(config.get("message.max.bytes", MAX_MESSAGE_BYTES))
        self._only_errors = bool(config.get("delivery.report.only.error"))
        self.stats = DeliveryStats()
        self._unreported: Counter[tuple[str, str]] = Counter()
        self._produced: dict[str, int] = {}  # topic -> produced since the last report (the hot path's count)
        self._by_topic: dict[str, Counter[str]] = {k: Counter() for k in ("produced", "failed", "delivered")}

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:  # only with delivery.report.only.error overridden to False
            self.stats.delivered += 1
            self._unreported[("delivered", msg.topic() or "?")] += 1
        else:
            self.stats.failed += 1
            self.stats.last_error = str(err)
            self._unreported[("failed", msg.topic() or "?")] += 1
            log.error("kafka_delivery_failed", topic=msg.topic(), error=str(err))

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        partition: int | None = None,
    ) -> None:
        """``partition``: this one, not the key's (the partitioner's choice when None)."""
        while True:
            try:
                if partition is not None:
                    self._producer.produce(topic, value, key, partition=partition, headers=headers)
                elif headers is None:
                    self._producer.produce(topic, value, key)
                else:
                    self._producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                self.poll(0.05)
        stats = self.stats
        stats.produced += 1
        self._produced[topic] = self._produced.get(topic, 0) + 1
        if stats.produced % 1000 == 0:
            self.poll(0)

    def poll(self, timeout: float = 0) -> int:
        served: int = self._producer.poll(timeout)
        self._report()
        return served

    def _report(self) -> None:
        for topic, n in self._produced.items():
            self._unreported[("produced", topic)] += n
        self._produced.clear()
        for (what, topic), n in self._unreported.items():
            _COUNTERS[what].labels(topic=topic).inc(n)
            if what != "delivered":
                self._by_topic[what][topic] += n
        self._unreported.clear()

    def flush(self, timeout: float = 60.0) -> int:
        """Wait for every queued record to be acknowledged; return how many are still pending."""
        remaining: int = self._producer.flush(timeout)
        if self._only_errors:
            self.stats.delivered = self.stats.produced - self.stats.failed - remaining
            if remaining == 0:  # everything is settled: whatever did not fail was delivered
                for topic, n in self._by_topic["produced"].items():
                    settled = n - self._by_topic["failed"][topic]
                    self._unreported[("delivered", topic)] += settled - self._by_topic["delivered"][topic]
                    self._by_topic["delivered"][topic] = settled
        self._report()
        return remaining

    def close(self) -> None:
        remaining = self.flush()
        if remaining:
            log.error("kafka_flush_incomplete", pending=remaining)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_COUNTERS = {"produced": KAFKA_PRODUCED, "delivered": KAFKA_DELIVERED, "failed": KAFKA_DELIVERY_FAILED}


def make_consumer(settings: Settings, group_id: str | None = None, **overrides: Any) -> Consumer:
    """A consumer with manual commits: callers commit only after their effect is durable."""
    return Consumer(consumer_config(settings, group_id, **overrides))


def consumer_config(settings: Settings, group_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    kafka = settings.kafka
    return {
        **CLIENT_LOGGING,
        **kafka.client_config(),
        "group.id": group_id or f"carnival-adhoc-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
        **kafka.extra_config,
        **overrides,
    }


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {**CLIENT_LOGGING, **settings.kafka.client_config(), **overrides}


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    return AdminClient(admin_config(settings, **overrides))


def await_broker(settings: Settings, timeout_s: float | None = None) -> None:
    """Return once the cluster answers a metadata request; raise BrokerUnreachable after ``timeout_s``
    (default ``settings.kafka_connect_timeout_s``) with what was tried and which settings to check."""
    timeout = settings.kafka_connect_timeout_s if timeout_s is None else timeout_s
    errors: list[str] = []  # the latest connection error: it says why ("Connection refused", TLS, auth)

    def on_error(err: KafkaError) -> None:
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            errors[:] = [err.str()]
        _on_client_error(err)

    admin = make_admin(settings, error_cb=on_error)
    try:
        admin.list_topics(timeout=timeout)
        return
    except KafkaException as exc:
        admin.poll(0)  # serves the queued error callbacks: the connection's own reason
        cause = errors[-1] if errors else exc.args[0].str()
    raise BrokerUnreachable(
        f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:g} s ({cause}). "
        "Check CARNIVAL_KAFKA_BOOTSTRAP (and the CARNIVAL_KAFKA_SECURITY_PROTOCOL/SASL/SSL settings), "
        "or start the local stack with `carnival stack up`; "
        "CARNIVAL_KAFKA_CONNECT_TIMEOUT_S sets how long to wait."
    )
