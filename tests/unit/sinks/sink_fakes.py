"""Stand-ins for the sink's three peers in unit tests: a consumer that records commits and pauses, a
ClickHouse writer that refuses what a test tells it to, a producer whose deliveries fail on demand.
One event log (``Events``) orders what happened across them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import wait
from typing import Any

from confluent_kafka import TopicPartition

from core.settings import Settings
from schemas.examples import EXAMPLES
from sinks.batches import TopicBatch
from sinks.config import SinkConfig
from sinks.errors import Verdict
from sinks.kafka_sink import KafkaSink
from sinks.writer import InsertFailed
from streams.records import parse_json_record
from streams.serde import AvroSerde

TELEMETRY, NODES, DEADLETTER = "fleet.telemetry.v1", "fleet.nodes.v1", "deadletter.v1"
JAN_31_MS = 1_769_817_600_000  # 2026-01-31T00:00:00Z
FEB_1_MS = JAN_31_MS + 86_400_000
Events = list[tuple[Any, ...]]


class Msg:
    """The part of confluent_kafka.Message the sink reads."""

    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None
    ) -> None:
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k


class FakeConsumer:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.paused: set[tuple[str, int]] = set()

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        for tp in offsets:
            self.events.append(("commit", tp.topic, tp.partition, tp.offset))

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in tps}

    def consume(self, n: int, timeout: float = 0) -> list[Msg]:
        return []

    def close(self) -> None:
        pass

    def commits(self, topic: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for e in self.events:
            if e[0] == "commit" and e[1] == topic:
                out[e[2]] = e[3]
        return out


class FakeWriter:
    """Lands pieces unless ``refuse(piece)`` returns an InsertFailed for it."""

    def __init__(
        self, events: Events, refuse: Callable[[TopicBatch], InsertFailed | None] | None = None
    ) -> None:
        self.events = events
        self.refuse = refuse or (lambda piece: None)
        self.landed: list[TopicBatch] = []

    def partition_key(self, table: str) -> str:
        return "" if table == "nodes" else "toYYYYMM(ts)"

    def insert(self, piece: TopicBatch) -> int:
        error = self.refuse(piece)
        rows = [(p, o) for p, o, *_ in piece.rows_in_order()]
        self.events.append(("insert", piece.topic, error is None, rows, piece.token()))
        if error is not None:
            raise error
        self.landed.append(piece)
        return piece.rows

    def rows(self, topic: str) -> list[tuple[int, int]]:
        return [(p, o) for piece in self.landed if piece.topic == topic for p, o, *_ in piece.rows_in_order()]

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeProducer:
    """Delivery reports at flush; the first ``failures`` deliveries fail (the broker was down)."""

    def __init__(self, events: Events, failures: int = 0) -> None:
        self.events = events
        self.failures = failures
        self.queue: list[tuple[bytes, Any]] = []
        self.produced: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: Any = None, on_delivery: Any = None) -> None:
        self.queue.append((value, on_delivery))
        self.produced.append(value)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        queue, self.queue = self.queue, []
        for value, callback in queue:
            if self.failures > 0:
                self.failures -= 1
                self.events.append(("dl_failed",))
                callback("KafkaError{code=_MSG_TIMED_OUT}", None)
            else:
                self.events.append(("dl_acked", value))
                callback(None, None)
        return 0


def reject(
    bad: set[tuple[int, int]], verdict: Verdict = Verdict.REJECTED
) -> Callable[[TopicBatch], InsertFailed | None]:
    """Refuse every piece holding one of ``bad`` (partition, offset), as ClickHouse refuses a bad bool."""

    def refuse(piece: TopicBatch) -> InsertFailed | None:
        if any((p, o) in bad for p, o, *_ in piece.rows_in_order()):
            return InsertFailed(
                "code_1001", "Code: 1001, type: avro::Exception, e.what() = Invalid value", verdict
            )
        return None

    return refuse


def telemetry(serde: AvroSerde, vin: str, ts_ms: int) -> bytes:
    rec = parse_json_record(TELEMETRY, {**EXAMPLES[TELEMETRY], "vin": vin})
    return serde.encode(TELEMETRY, {**rec, "ts": ts_ms})


def node(serde: AvroSerde, vin: str, ts_ms: int) -> bytes:
    rec = parse_json_record(NODES, {**EXAMPLES[NODES], "vin": vin})
    return serde.encode(NODES, {**rec, "ts": ts_ms})


def make_sink(
    events: Events,
    writer: FakeWriter,
    producer: FakeProducer,
    topics: tuple[str, ...] = (TELEMETRY, NODES),
    partitions: int = 2,
) -> tuple[KafkaSink, FakeConsumer]:
    consumer = FakeConsumer(events)
    config = SinkConfig(
        flush_interval_s=0.0, backoff_initial_s=0.001, backoff_max_s=0.01, shutdown_timeout_s=1.0
    )
    sink = KafkaSink(
        Settings(),
        config,
        topics,
        consumer=consumer,  # type: ignore[arg-type]
        writer=writer,  # type: ignore[arg-type]
        make_producer=lambda: producer,
    )
    for topic in topics:
        for p in range(partitions):
            sink.expected[(topic, p)] = 0
    return sink, consumer


def feed(sink: KafkaSink, msgs: list[Msg]) -> None:
    """Route ``msgs``, then seal and insert what is due (one turn of the sink's loop), and wait for the
    pipelined inserts to land (the loop's next turns)."""
    for m in msgs:
        sink._route(m)  # type: ignore[arg-type]
    sink._flush_due(float("inf"))
    settle(sink)


def settle(sink: KafkaSink) -> None:
    """Wait for every insert in flight and act on it, as the loop's next turns would."""
    while inflight := [q[0].inflight for q in sink.plans.values() if q and q[0].inflight is not None]:
        wait(inflight)
        sink._flush_due(float("inf"))
