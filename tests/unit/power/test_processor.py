"""The power processor under the runtime's checkpoint protocol and error policy, without a broker: the
app, table, topics and stream are small in-memory stand-ins; the detectors and the Avro serde are real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from processors.power import Detector, Incident, PowerConfig
from processors.power.processor import CHANGELOG_TOPIC, PowerProcessor
from processors.power.runtime import DETECTORS_EVICTED, DetectorCache, encode_state, rewind
from processors.power.scenario import SiteEvents, rich_failover_timeline
from processors.runtime import QUARANTINED, RetryPolicy
from streams.serde import AvroSerde

SERDE = AvroSerde()
EVENTS = "power.events.v1"


class Event:
    """A consumed ``power.events.v1`` record; its Kafka timestamp is the event's ``ts`` unless given."""

    def __init__(
        self, record: dict[str, Any] | None, offset: int, partition: int = 0, *, key: str = "dc-unit",
        produced_us: int | None = None,
    ) -> None:  # fmt: skip
        if produced_us is None:
            produced_us = record["ts"] if record is not None else 1_700_000_000_000_000
        self.topic, self.partition, self.offset = EVENTS, partition, offset
        self.key = (record["site_id"] if record is not None else key).encode()
        self.value = None if record is None else SERDE.encode(EVENTS, record)
        self.timestamp = produced_us / 1_000_000

    @property
    def message(self) -> Event:  # the tests below read a record's fields through ``message``
        return self


class Store:
    """The in-memory store of site states (``ChangelogStore`` without its Kafka restore)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.partition_of: dict[str, int] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        self.data[key] = value
        self.partition_of[key] = partition

    def drop(self, partitions: Any) -> None:
        for key in [k for k, p in self.partition_of.items() if p in set(partitions)]:
            del self.data[key], self.partition_of[key]

    def __getitem__(self, key: str) -> bytes:
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data


class IO:
    """The processor's Kafka: records handed over are acknowledged at once unless ``hold`` is set (then
    ``release()`` acknowledges them); ``fail`` makes every delivery fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any]] = []
        self.acked: list[int] = []
        self.committed: dict[int, int] = {}
        self.hold = False
        self.held: list[asyncio.Future[Any]] = []
        self.parts: frozenset[int] = frozenset({0})

    def send(self, topic: str, key: Any, value: Any, partition: int = -1) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append(fut)
        else:
            fut.set_result(None)
        return fut

    def release(self) -> None:
        for fut in self.held:
            fut.set_result(None)
        self.held = []

    async def flush(self) -> None:
        while self.held:
            await asyncio.sleep(0)

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        """Every offset a commit moves past, once (the tests' offsets are 0, 1, 2, ... of partition 0)."""
        for (_, partition), upto in offsets.items():
            start = self.committed.get(partition, 0)
            self.acked.extend(range(start, upto))
            self.committed[partition] = max(start, upto)

    def highwater(self, partition: int) -> int | None:
        return None

    def position(self, partition: int) -> int | None:
        return None

    def assigned(self) -> frozenset[int]:
        return self.parts

    def settling(self) -> bool:
        return False


class Codec:
    """What the tests read: every record sent and the dead letters among them."""

    def __init__(self, io: IO) -> None:
        self.io = io

    @property
    def sent(self) -> list[tuple[str, Any, Any]]:
        return [("changelog" if t == CHANGELOG_TOPIC else t, k, v) for t, k, v in self.io.sent]

    @property
    def dead(self) -> list[tuple[int, str, str]]:
        out = []
        for topic, _, value in self.io.sent:
            if topic == "deadletter.v1":
                rec = SERDE.decode("deadletter.v1", value)
                out.append((rec["source_offset"], rec["error_kind"], rec["error"]))
        return out


class Stream:
    """The input offsets committed (one per checkpoint: the last offset it covers)."""

    def __init__(self, io: IO) -> None:
        self.io = io

    @property
    def acked(self) -> list[int]:
        return self.io.acked


def _processor(
    checkpoint_events: int = 1, max_sites: int = 10_000
) -> tuple[PowerProcessor, Codec, Store, Stream]:
    io = IO()
    store = Store()
    p = PowerProcessor(
        io, store, SERDE, DetectorCache(PowerConfig(), store.get, lambda: 0, max_sites),
        checkpoint_s=0.0 if checkpoint_events == 1 else 3600.0, checkpoint_events=checkpoint_events,
        max_unconfirmed=4,
        retry=RetryPolicy(2, (0.0,)), clock_us=lambda: 2_000_000_000_000_000,
    )  # fmt: skip
    return p, Codec(io), store, Stream(io)


def _events() -> list[Event]:
    return [Event(r, i) for i, r in enumerate(rich_failover_timeline(SiteEvents("dc-unit")))]


async def _settle(p: PowerProcessor) -> None:
    await p.settle()
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
            if (
                record["seq"] == SERDE.decode(EVENTS, events[3].message.value)["seq"]
                and record["device_id"] == SERDE.decode(EVENTS, events[3].message.value)["device_id"]
            ):
                raise ZeroDivisionError("detector bug")
            return original(self, record, arrival_us)

        monkeypatch.setattr(Detector, "on_event", on_event)
        await p.handle(events)
        await _settle(p)
        assert [(off, kind) for off, kind, _ in codec.dead] == [(broken_offset, "PROCESSING")]
        assert "ZeroDivisionError: detector bug" in codec.dead[0][2]
        assert stream.acked == [e.message.offset for e in events]

    asyncio.run(main())


# -- input guards -----------------------------------------------------------------------------------
YEAR_3000_US = 32_503_680_000_000_000


def _future_event(after: Event, offset: int) -> Event:
    """A measurement stamped in the year 3000 whose Kafka timestamp is that of ``after``'s message."""
    record = SiteEvents("dc-unit").event("meter-1", "MEASUREMENT", 0.0, seq=10_000)
    record["ts"] = YEAR_3000_US
    return Event(record, offset, produced_us=int(after.message.timestamp * 1_000_000))


def _renumbered(events: list[Event]) -> list[Event]:
    for i, e in enumerate(events):
        e.message.offset = i
    return events


def _kinds(codec: Codec) -> list[str]:
    return [SERDE.decode("power.incidents.v1", v)["kind"] for v in _incidents(codec)]


def test_an_event_stamped_far_past_its_arrival_is_dead_lettered_and_never_blinds_its_site() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        good = _events()
        events = _renumbered([*good[:20], _future_event(good[19], 0), *good[20:]])
        await p.handle(events)
        await _settle(p)
        assert [(off, kind) for off, kind, _ in codec.dead] == [(20, "FUTURE_TIMESTAMP")]
        assert "after the record's arrival" in codec.dead[0][2] and "300 s" in codec.dead[0][2]
        assert "FAILOVER" in _kinds(codec)
        assert table["dc-unit"] == _applied_once(good)  # as if the future event never came
        assert stream.acked == [e.message.offset for e in events]

    asyncio.run(main())


def test_the_skew_is_judged_against_the_kafka_timestamp_never_the_wall_clock() -> None:
    async def main() -> None:
        p, codec, _, _ = _processor()
        # A replay of a simulated past read years later (the processor's clock is 2033), events produced
        # now with Kafka timestamps years after their own time, and one event 299 s ahead of its arrival:
        # nothing is refused.
        records = rich_failover_timeline(SiteEvents("dc-unit"))
        replayed = [Event(r, i, produced_us=1_800_000_000_000_000) for i, r in enumerate(records[:50])]
        replayed.append(Event(records[50], 50, produced_us=records[50]["ts"] - 299_000_000))
        await p.handle(replayed)
        await _settle(p)
        assert codec.dead == []

    asyncio.run(main())


def test_a_rewind_refuses_the_future_event_again(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        p, codec, table, stream = _processor(checkpoint_events=1_000_000)  # nothing saved in between
        good = _events()
        first = _renumbered([*good[:20], _future_event(good[19], 0)])
        await p.handle(first)
        original = Detector.on_event
        broken = SERDE.decode(EVENTS, good[20].message.value)

        def on_event(self: Detector, record: Any, arrival_us: int | None = None) -> list[Any]:
            if (record["device_id"], record["seq"]) == (broken["device_id"], broken["seq"]):
                raise ZeroDivisionError("detector bug")
            return original(self, record, arrival_us)

        monkeypatch.setattr(Detector, "on_event", on_event)
        rest = _renumbered(_events()[20:])
        for e in rest:
            e.message.offset += 21
        await p.handle(rest)  # the broken event rewinds the site: the unsaved batch is replayed
        await p.checkpointer.checkpoint()
        await _settle(p)
        assert [kind for _, kind, _ in codec.dead] == ["FUTURE_TIMESTAMP", "PROCESSING"]
        assert "FAILOVER" in _kinds(codec)
        assert table["dc-unit"] == _applied_once([*good[:20], *good[21:]])

    asyncio.run(main())


def test_a_tombstone_is_dead_lettered_and_the_site_goes_on() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        events = _renumbered([Event(None, 0), *_events()])
        await p.handle(events)
        await _settle(p)
        assert [(off, kind) for off, kind, _ in codec.dead] == [(0, "TOMBSTONE")]
        assert "null value" in codec.dead[0][2]
        assert "FAILOVER" in _kinds(codec)
        assert stream.acked == [e.message.offset for e in events]

    asyncio.run(main())


def test_a_rewind_skips_an_invalid_event_it_replays() -> None:
    site = SiteEvents("dc-unit")
    cache = DetectorCache(PowerConfig(), {}.get, lambda: 0)
    bad = site.measure(1.0, gens_online=-1)  # valid Avro, refused by the detector (VALIDATION)
    good = site.measure(2.0)
    rewind(cache, "dc-unit", [(bad, bad["ts"]), (good, good["ts"])])
    assert cache.get("dc-unit").stats["events"] == 1


def test_sites_evicted_past_max_sites_come_back_from_the_table_unchanged() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor(max_sites=2)
        evicted = DETECTORS_EVICTED._value.get()
        good = _events()
        flood = [Event(SiteEvents(f"dc-flood-{i}").measure(0.5 + i * 0.001), 0) for i in range(60)]
        mixed: list[Event] = []
        for i, e in enumerate(good):  # the real site's events, each batch with flooding sites
            mixed.append(e)
            if i % 50 == 0:
                mixed += flood[i // 50 % 60 : i // 50 % 60 + 3]
        mixed = _renumbered(mixed)
        for start in range(0, len(mixed), 40):
            await p.handle(mixed[start : start + 40])
            for _ in range(5):  # the worker waits for its next batch: the checkpoint runs meanwhile
                await asyncio.sleep(0)
            # The bound, plus the sites of the batch being run and those of the checkpoint being written
            # beside it (pinned until their states are encoded).
            assert len(p.detectors) <= 2 + 40 + 40
        await _settle(p)
        assert DETECTORS_EVICTED._value.get() - evicted >= 10
        assert table["dc-unit"] == _applied_once(good)  # evicted and read again: nothing lost
        assert codec.dead == []
        assert "FAILOVER" in _kinds(codec)

    asyncio.run(main())


# -- latency: outputs first, checkpoints beside the batches ---------------------------------------
def _alerts(codec: Codec) -> list[dict[str, Any]]:
    return [SERDE.decode("alerts.v1", v) for topic, _, v in codec.sent if topic == "alerts.v1"]


def test_an_alert_leaves_as_its_rule_fires_and_batches_go_on_while_the_checkpoint_waits_for_kafka() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor()
        codec.io.hold = True  # Kafka acknowledges nothing for now
        events = _events()
        ref = Detector("dc-unit", PowerConfig())
        fires = next(
            i
            for i, e in enumerate(events)
            if any(isinstance(o, Incident) for o in ref.on_event(SERDE.decode(EVENTS, e.value), e.offset))
        )
        first, second = events[: fires + 1], events[fires + 1 :]  # the first batch ends with an OPEN
        await asyncio.wait_for(p.handle(first), 10)  # not held up by the checkpoint it starts
        assert any(a["status"] == "FIRING" for a in _alerts(codec))
        assert "changelog" not in [t for t, _, _ in codec.sent] and stream.acked == []
        await asyncio.wait_for(p.handle(second), 10)  # nor is the next batch
        assert stream.acked == [] and "dc-unit" not in table  # state and offsets wait for the acks
        codec.io.hold = False
        codec.io.release()
        await _settle(p)
        assert stream.acked == [e.offset for e in events]
        assert table["dc-unit"] == _applied_once(events)

    asyncio.run(main())


def test_a_batch_runs_while_a_checkpoint_encodes_and_the_state_written_is_the_checkpoints_own() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor(checkpoint_events=1_000_000)
        sites = [SiteEvents(f"dc-cow-{i:02d}") for i in range(40)]  # several encoding chunks
        first = _renumbered([Event(s.measure(1.0), 0) for s in sites])
        await p.handle(first)
        checkpoint = asyncio.ensure_future(p.checkpointer.checkpoint())
        while p.snapshot is None:
            await asyncio.sleep(0)
        last = sites[-1]
        assert last.site_id in p.snapshot.remaining  # not encoded yet
        later = Event(last.measure(2.0), 40)
        await p.handle([later])  # changes it while the checkpoint is written
        await checkpoint
        written = [v for t, k, v in codec.sent if t == "changelog" and k == last.site_id.encode()]
        assert written == [encode_state(_fed(last.site_id, [first[-1]]))]  # without the second event
        assert stream.acked == list(range(40))  # the second batch is the next checkpoint's
        await _settle(p)
        assert table[last.site_id] == encode_state(_fed(last.site_id, [first[-1], later]))
        assert stream.acked == list(range(41))

    asyncio.run(main())


def _fed(site_id: str, events: list[Event]) -> Detector:
    ref = Detector(site_id, PowerConfig())
    for e in events:
        ref.on_event(SERDE.decode(EVENTS, e.value), arrival_us=int(e.timestamp * 1e6))
    return ref


def test_revoked_partitions_are_checkpointed_committed_and_forgotten() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor(checkpoint_events=1_000_000)
        events = _events()
        await p.handle(events)
        assert stream.acked == []
        await p.on_revoked([0])
        assert stream.acked == [e.offset for e in events]
        assert "dc-unit" not in table and len(p.detectors) == 0  # the next owner restores it

    asyncio.run(main())


def test_lost_partitions_commit_nothing_more_and_stop_the_worker() -> None:
    async def main() -> None:
        p, codec, table, stream = _processor(checkpoint_events=1_000_000)
        await p.handle(_events())
        with pytest.raises(RuntimeError, match="lost"):
            await p.on_revoked([0], lost=True)
        assert stream.acked == []

    asyncio.run(main())
