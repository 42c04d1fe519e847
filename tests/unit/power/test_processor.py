"""The power processor under the runtime's checkpoint protocol and error policy, without a broker: the
app, table, topics and stream are small in-memory stand-ins; the detectors and the Avro serde are real."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from processors.power import Detector, PowerConfig
from processors.power.processor import PowerProcessor
from processors.power.runtime import DetectorCache, encode_state
from processors.power.scenario import SiteEvents, rich_failover_timeline
from processors.runtime import QUARANTINED, RetryPolicy
from streams.serde import AvroSerde

SERDE = AvroSerde()
EVENTS = "power.events.v1"


class Event:
    def __init__(self, record: dict[str, Any], offset: int, partition: int = 0) -> None:
        self.message = SimpleNamespace(
            topic=EVENTS, partition=partition, offset=offset, key=record["site_id"].encode(),
            value=SERDE.encode(EVENTS, record), timestamp=record["ts"] / 1_000_000,
        )  # fmt: skip


class Topic:
    def __init__(self, name: str, sent: list[tuple[str, Any, Any]]) -> None:
        self.name, self.sent = name, sent

    async def send(self, key: Any = None, value: Any = None, partition: Any = None, **kw: Any) -> Any:
        self.sent.append((self.name, key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)  # the table's offset callback (kw) has nothing to keep in memory here
        return fut


class Table(dict[str, bytes]):
    def __init__(self, sent: list[tuple[str, Any, Any]]) -> None:
        super().__init__()
        self.data = self  # the store: ``table.data[key] = value``
        self.changelog_topic = Topic("changelog", sent)
        self.key_serializer = self.value_serializer = "raw"
        self._on_changelog_sent = None


class Codec:
    def __init__(self) -> None:
        self.serde = SERDE
        self.sent: list[tuple[str, Any, Any]] = []
        self.dead: list[tuple[int, str, str]] = []

    def topic(self, name: str) -> Topic:
        return Topic(name, self.sent)

    async def dead_letter(self, msg: Any, kind: str, error: str) -> None:
        self.dead.append((msg.offset, kind, error))


class Stream:
    def __init__(self) -> None:
        self.acked: list[int] = []

    async def ack(self, event: Event) -> None:
        self.acked.append(event.message.offset)


class Producer:
    async def flush(self) -> None:
        return None


def _processor() -> tuple[PowerProcessor, Codec, Table, Stream]:
    codec = Codec()
    table = Table(codec.sent)
    app = SimpleNamespace(producer=Producer())
    p = PowerProcessor(
        app, table, codec, DetectorCache(PowerConfig(), table.get, lambda: 0),
        checkpoint_s=0.0, checkpoint_events=1, max_unconfirmed=4,
        retry=RetryPolicy(2, (0.0,)), clock_us=lambda: 2_000_000_000_000_000,
    )  # fmt: skip
    stream = Stream()
    p.inputs.stream = stream
    return p, codec, table, stream


def _events() -> list[Event]:
    return [Event(r, i) for i, r in enumerate(rich_failover_timeline(SiteEvents("dc-unit")))]


async def _settle(p: PowerProcessor) -> None:
    await p.checkpointer.settle()
    for _ in range(5):
        await asyncio.sleep(0)


def _applied_once(events: list[Event]) -> bytes:
    """The state of a detector that saw every event exactly once, in order."""
    ref = Detector("dc-unit", PowerConfig())
    for e in events:
        ref.on_event(SERDE.decode(EVENTS, e.message.value), arrival_us=int(e.message.timestamp * 1e6))
    return encode_state(ref)


def _incidents(codec: Codec) -> list[bytes]:
    return [value for topic, _, value in codec.sent if topic == "power.incidents.v1"]


def test_a_batch_is_acked_after_its_outputs_and_its_state() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        events = _events()
        await p.handle(events)
        await _settle(p)
        assert stream.acked == [e.message.offset for e in events]
        assert table["dc-unit"] == _applied_once(events)
        assert _incidents(codec)
        assert [t for t, _, _ in codec.sent][-1] == "changelog"  # state after every output

    asyncio.run(main())


def test_an_output_that_cannot_be_encoded_once_is_retried_and_applied_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        events = _events()
        real_encode = SERDE.encode
        failures = [1]

        def flaky(topic: str, record: Any) -> bytes:
            if topic == "power.incidents.v1" and failures[0]:
                failures[0] -= 1
                raise ValueError("encoder broke")
            return real_encode(topic, record)

        monkeypatch.setattr(SERDE, "encode", flaky)
        await p.handle(events)
        await _settle(p)
        assert stream.acked == [e.message.offset for e in events]  # once each
        assert codec.dead == []
        assert table["dc-unit"] == _applied_once(events)  # the failed run left no trace in the state

    asyncio.run(main())


def test_a_failure_outside_record_handling_is_never_acked_while_it_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        events = _events()

        def broken(topic: str, record: Any) -> bytes:
            raise ValueError("encoder broke")

        calls: list[int] = []
        real_process = p.process

        async def counting(batch: Any) -> None:
            calls.append(len(batch))
            await real_process(batch)

        monkeypatch.setattr(SERDE, "encode", broken)
        p.runner._process = counting
        await p.runner._attempt(list(events), "batch")  # what a batch failure does: retries, no acks
        assert calls == [len(events), len(events)]
        assert stream.acked == [] and p.checkpointer.pending.events == [] and "dc-unit" not in table

    asyncio.run(main())


def test_the_record_whose_outputs_never_encode_is_quarantined_and_the_rest_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        events = _events()
        real_encode = SERDE.encode

        def no_incidents(topic: str, record: Any) -> bytes:
            if topic == "power.incidents.v1" and record["state"] == "OPEN":
                raise ValueError("cannot encode OPEN")
            return real_encode(topic, record)

        monkeypatch.setattr(SERDE, "encode", no_incidents)
        await p.handle(events)
        await _settle(p)
        assert sorted(stream.acked) == [e.message.offset for e in events]  # every offset moves on
        quarantined = [(off, kind) for off, kind, _ in codec.dead if kind == QUARANTINED]
        assert len(quarantined) >= 1
        assert all("cannot encode OPEN" in err for _, kind, err in codec.dead if kind == QUARANTINED)

    asyncio.run(main())


def test_a_record_that_breaks_its_detector_is_dead_lettered_and_the_batch_continues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        events = _events()
        broken_offset = events[3].message.offset
        original = Detector.on_event

        def on_event(self: Detector, record: Any, arrival_us: int | None = None) -> list[Any]:
            if record["seq"] == SERDE.decode(EVENTS, events[3].message.value)["seq"] and record[
                "device_id"
            ] == SERDE.decode(EVENTS, events[3].message.value)["device_id"]:
                raise ZeroDivisionError("detector bug")
            return original(self, record, arrival_us)

        monkeypatch.setattr(Detector, "on_event", on_event)
        await p.handle(events)
        await _settle(p)
        assert [(off, kind) for off, kind, _ in codec.dead] == [(broken_offset, "PROCESSING")]
        assert "ZeroDivisionError: detector bug" in codec.dead[0][2]
        assert stream.acked == [e.message.offset for e in events]

    asyncio.run(main())
