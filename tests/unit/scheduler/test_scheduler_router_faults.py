"""The telemetry router thread and the batch producer under hostile records and Kafka faults (issue 11),
with fake consumers and producers (no broker): the real ones are in tests/integration."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaException
from test_scheduler_runtime import Event, _scheduler
from test_scheduler_support import T0, req, tel

from core.settings import Settings
from processors.scheduler import wiring_router
from processors.scheduler.wiring_router import BatchProducer, TelemetryRouter
from processors.scheduler.wiring_runtime import REQUEST, TELEMETRY, unpack, unpack_batch
from streams.deadletter import FUTURE_TIMESTAMP, TOMBSTONE
from streams.kafka import DeliveryStats
from streams.serde import AvroSerde
from streams.topics import DEADLETTER_TOPIC, TELEMETRY_TOPIC

SERDE = AvroSerde(raw_timestamps=True)
YEAR_3000 = 32_503_680_000_000


class Msg:
    """A consumed confluent-kafka message."""

    def __init__(self, value: bytes | None, offset: int, arrival_ms: int = T0) -> None:
        self._value, self._offset, self._arrival = value, offset, arrival_ms

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return b"vin"

    def topic(self) -> str:
        return TELEMETRY_TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._arrival


class FakeProducer:
    """streams.kafka.Producer: ``fail`` records of the next flush are reported as not delivered."""

    def __init__(self, fail: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.stats = DeliveryStats()
        self.fail = fail

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        self.sent.append((topic, value, key if isinstance(key, bytes | None) else key.encode()))
        self.stats.produced += 1

    def flush(self, timeout: float = 60.0) -> int:
        self.stats.failed += self.fail
        self.fail = 0
        return 0


def _route_of(value: bytes) -> tuple[str, int]:
    record = SERDE.decode(TELEMETRY_TOPIC, value)
    return str(record["region"]), int(record["ts"])


def _router() -> TelemetryRouter:
    return TelemetryRouter(Settings(), _route_of, SERDE.encode, max_future_skew_s=300)


def _dead_kinds(producer: FakeProducer) -> list[str]:
    return [
        SERDE.decode(DEADLETTER_TOPIC, v)["error_kind"] for t, v, _ in producer.sent if t == DEADLETTER_TOPIC
    ]


def test_a_tombstone_and_a_year_3000_record_are_dead_lettered_and_the_rest_is_routed() -> None:
    router, producer = _router(), FakeProducer()
    msgs = [
        Msg(None, 0),
        Msg(SERDE.encode(TELEMETRY_TOPIC, tel("V1", YEAR_3000)), 1),
        Msg(SERDE.encode(TELEMETRY_TOPIC, tel("V2", T0 - 3_600_000)), 2),  # a simulated past: fine
    ]
    positions, routed = router.route_batch(producer, msgs)  # type: ignore[arg-type]
    assert positions == {(TELEMETRY_TOPIC, 0): 3} and routed == 1
    assert _dead_kinds(producer) == [TOMBSTONE, FUTURE_TIMESTAMP]
    pool_records = [v for t, v, _ in producer.sent if t != DEADLETTER_TOPIC]
    env = unpack(pool_records[0])
    assert env.kind == TELEMETRY and env.source_offset == 2


class FakeConsumer:
    def __init__(self, msgs: list[Msg], router: TelemetryRouter) -> None:
        self.msgs, self.router, self.commits = list(msgs), router, []

    def subscribe(self, topics: list[str]) -> None:
        pass

    def poll(self, timeout: float) -> Msg | None:
        if not self.msgs:
            self.router.stopping.set()
            return None
        return self.msgs.pop(0)

    def consume(self, n: int, timeout: float) -> list[Msg]:
        out, self.msgs = self.msgs[:n], self.msgs[n:]
        return out

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.commits.append(offsets)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fail", [0, 1])
def test_the_router_never_commits_past_a_record_kafka_refused(
    fail: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = _router()
    msgs = [Msg(SERDE.encode(TELEMETRY_TOPIC, tel(f"V{i}", T0 + i)), i) for i in range(3)]
    consumer, producer = FakeConsumer(msgs, router), FakeProducer(fail=fail)
    monkeypatch.setattr(wiring_router, "make_consumer", lambda *a, **k: consumer)
    monkeypatch.setattr(wiring_router, "Producer", lambda *a, **k: producer)
    if fail:
        with pytest.raises(KafkaException, match="not delivered"):
            router._run()
        assert consumer.commits == []
    else:
        router._run()
        assert [[(tp.topic, tp.offset) for tp in c] for c in consumer.commits] == [[(TELEMETRY_TOPIC, 3)]]
        assert len(unpack_batch(unpack(producer.sent[0][1]).payload)) == 3


class FlakyRaw:
    """A confluent Producer whose flush returns the records still in flight, as given, one per call."""

    def __init__(self, remaining: list[int], errors: list[list[str]] | None = None) -> None:
        self.remaining, self.errors, self.calls = list(remaining), list(errors or []), 0
        self.owner: BatchProducer | None = None

    def produce(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self, timeout: float) -> int:
        self.calls += 1
        if self.errors and self.owner is not None:
            self.owner._errors.extend(self.errors.pop(0))
        return self.remaining.pop(0) if self.remaining else 0


def _batch_producer(raw: FlakyRaw) -> BatchProducer:
    producer = BatchProducer(Settings(), raw=raw)
    raw.owner = producer
    return producer


def test_records_still_in_flight_after_one_flush_slice_are_waited_for_not_a_failure() -> None:
    raw = FlakyRaw([3, 1, 0])  # a broker away for a while: the records get through on the third slice
    _batch_producer(raw).flush()
    assert raw.calls == 3


def test_a_failed_flush_is_not_remembered_by_the_next_one() -> None:
    raw = FlakyRaw([0, 0], errors=[["deadletter.v1[0]: Message timed out"], []])
    producer = _batch_producer(raw)
    with pytest.raises(KafkaException, match="timed out"):
        producer.flush()
    producer.flush()  # nothing failed since: no error


def test_records_never_settled_fail_the_flush_after_its_timeout() -> None:
    raw = FlakyRaw([5] * 1000)
    with pytest.raises(KafkaException, match="5 records unacknowledged"):
        _batch_producer(raw).flush(timeout=0.0)


def test_a_pool_topic_tombstone_and_a_future_request_are_dead_lettered_and_the_batch_goes_on() -> None:
    async def main() -> None:
        pools, producer, codec, store, stream = _scheduler()
        tomb = Event(TELEMETRY, "fleet.telemetry.v1", tel("car-1", T0), 0)
        tomb.message.value = None
        future = Event(REQUEST, "tasks.requests.v1", req("task-x", YEAR_3000), 1)
        future.message.timestamp = T0 / 1000
        events = [tomb, future, Event(TELEMETRY, "fleet.telemetry.v1", tel("car-1", T0), 2),
                  Event(REQUEST, "tasks.requests.v1", req("task-1", T0 + 1000), 3)]  # fmt: skip
        await pools.handle(events)
        await pools.checkpointer.settle()
        assert [(off, kind) for off, kind, _ in codec.dead] == [(0, TOMBSTONE), (1, FUTURE_TIMESTAMP)]
        sched = pools.states[0].scheduler
        assert sched.clock == T0 + 1000 and sched.tasks["task-1"].vin == "car-1"
        assert "task-x" not in sched.tasks

    asyncio.run(main())
