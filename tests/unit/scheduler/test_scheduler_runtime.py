"""The scheduler's pool side under the runtime's checkpoint protocol and error policy, without a broker:
app, table, topics, producers and stream are in-memory stand-ins; the Scheduler and the serde are real."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from test_scheduler_support import T0, cfg, req, tel

from processors.runtime import QUARANTINED, RetryPolicy
from processors.scheduler.scheduling import PoolScheduler
from processors.scheduler.wiring_runtime import REQUEST, TELEMETRY, WorkerKnobs, pack
from processors.scheduler.wiring_state import restore
from streams.serde import AvroSerde

SERDE = AvroSerde()
RAW = AvroSerde(SERDE.registry, raw_timestamps=True)


class Store:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._key_partition: dict[bytes, int] = {}


class Producer:
    """The confluent BatchProducer: records are "in Kafka" once flushed."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.kafka: list[tuple[str, bytes | None, bytes | None, int]] = []

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1) -> None:
        self.queued.append((topic, key, value, partition))

    def flush(self, timeout: float = 60.0) -> None:
        self.kafka.extend(self.queued)
        self.queued = []


class Codec:
    def __init__(self) -> None:
        self.serde = SERDE
        self.dead: list[tuple[Any, str, str]] = []

    async def dead_letter(self, msg: Any, kind: str, error: str) -> None:
        self.dead.append((msg.offset, kind, error))


class Stream:
    def __init__(self) -> None:
        self.acked: list[int] = []

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)


class FaustProducer:
    async def flush(self) -> None:
        return None


class Event:
    def __init__(self, kind: bytes, topic: str, record: dict[str, Any], offset: int, pool: str = "us-west"):
        payload = SERDE.encode(topic, record)
        self.message = SimpleNamespace(
            topic="carnival-scheduler-bypool", partition=0, offset=offset, key=pool.encode(),
            value=pack(kind, payload, 0, offset), timestamp=record["ts"] / 1000,
        )  # fmt: skip


def _scheduler() -> tuple[PoolScheduler, Producer, Codec, Store, Stream]:
    producer, codec, store, stream = Producer(), Codec(), Store(), Stream()
    table = SimpleNamespace(data=store)
    app = SimpleNamespace(producer=FaustProducer())
    config = cfg()
    pools = PoolScheduler(
        app, table, SimpleNamespace(), codec, RAW, config, WorkerKnobs(), lambda: producer,
        partitions=1, state_changelog="state-changelog", checkpoint_s=0.0, retry=RetryPolicy(2, (0.0,)),
    )  # fmt: skip
    pools.inputs.stream = stream
    return pools, producer, codec, store, stream


def _events() -> list[Event]:
    return [
        Event(TELEMETRY, "fleet.telemetry.v1", tel("car-1", T0), 0),
        Event(TELEMETRY, "fleet.telemetry.v1", tel("car-2", T0 + 1000), 1),
        Event(REQUEST, "tasks.requests.v1", req("task-1", T0 + 2000), 2),
    ]


async def _settle(pools: PoolScheduler) -> None:
    await pools.checkpointer.settle()
    for _ in range(5):
        await asyncio.sleep(0)


def _assignments(producer: Producer) -> list[bytes | None]:
    return [k for topic, k, _, _ in producer.kafka if topic == "tasks.assignments.v1"]


def test_outputs_reach_kafka_before_the_state_and_the_acks_come_last() -> None:
    async def main() -> None:
        pools, producer, codec, store, stream = _scheduler()
        await pools.handle(_events())
        await _settle(pools)
        topics = [t for t, *_ in producer.kafka]
        assert "tasks.assignments.v1" in topics
        first_state = topics.index("state-changelog")
        assert all(t != "state-changelog" for t in topics[:first_state])
        assert max(i for i, t in enumerate(topics) if t == "tasks.assignments.v1") < first_state
        assert stream.acked == [0, 1, 2]
        restored = restore(0, [(k, v) for t, k, v, _ in producer.kafka if t == "state-changelog" and v])
        assert set(restored.nodes) == {"car-1", "car-2"} and "task-1" in restored.tasks

    asyncio.run(main())


def test_an_output_that_fails_to_encode_once_leaves_the_batch_unacked_and_it_is_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        pools, producer, codec, store, stream = _scheduler()
        real = SERDE.encode
        failures = [1]
        acked_during_failure: list[list[int]] = []

        def flaky(topic: str, record: Any) -> bytes:
            if topic == "tasks.assignments.v1" and failures[0]:
                failures[0] -= 1
                acked_during_failure.append(list(stream.acked))
                raise ValueError("encoder broke")
            return real(topic, record)

        monkeypatch.setattr(SERDE, "encode", flaky)
        await pools.handle(_events())
        await _settle(pools)
        assert acked_during_failure == [[]]
        assert stream.acked == [0, 1, 2] and codec.dead == []
        assert len(set(_assignments(producer))) == 1  # replayed: the same assignment (same id) again
        restored = restore(0, [(k, v) for t, k, v, _ in producer.kafka if t == "state-changelog" and v])
        assert restored.tasks["task-1"]["state"] == "ASSIGNED"  # applied once, not twice

    asyncio.run(main())


def test_a_record_whose_outputs_never_encode_is_quarantined_and_the_rest_are_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        pools, producer, codec, store, stream = _scheduler()
        real = SERDE.encode

        def never_assignments(topic: str, record: Any) -> bytes:
            if topic == "tasks.assignments.v1":
                raise ValueError("cannot encode assignment")
            return real(topic, record)

        monkeypatch.setattr(SERDE, "encode", never_assignments)
        await pools.handle(_events())
        await _settle(pools)
        assert sorted(stream.acked) == [0, 1, 2]
        assert [(off, kind) for off, kind, _ in codec.dead] == [(2, QUARANTINED)]
        assert "cannot encode assignment" in codec.dead[0][2]

    asyncio.run(main())


def test_a_record_that_breaks_the_scheduler_is_dead_lettered_and_the_rest_continue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from processors.scheduler.matching import Scheduler

    async def main() -> None:
        pools, producer, codec, store, stream = _scheduler()
        original = Scheduler.on_telemetry

        def on_telemetry(self: Scheduler, record: Any, arrival_ms: int | None = None) -> Any:
            if record["vin"] == "car-2":
                raise ZeroDivisionError("scheduler bug")
            return original(self, record, arrival_ms=arrival_ms)

        monkeypatch.setattr(Scheduler, "on_telemetry", on_telemetry)
        await pools.handle(_events())
        await _settle(pools)
        assert [(off, kind) for off, kind, _ in codec.dead] == [(1, "PROCESSING")]
        assert stream.acked == [0, 1, 2]
        restored = restore(0, [(k, v) for t, k, v, _ in producer.kafka if t == "state-changelog" and v])
        assert set(restored.nodes) == {"car-1"}

    asyncio.run(main())
