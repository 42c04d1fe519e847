"""The sink's checkpoint under faults, with a fake ClickHouse writer, consumer and producer: a batch
ClickHouse refuses for good is split down to the bad records (dead-lettered, the rest lands, nothing
stalls), a transient error pauses only its own topic, dead letters hold inserts and commits until
the broker acknowledged them, tombstones never crash the sink."""

from __future__ import annotations

import threading

from confluent_kafka import TopicPartition
from sink_fakes import (
    DEADLETTER,
    FEB_1_MS,
    JAN_31_MS,
    NODES,
    TELEMETRY,
    Events,
    FakeProducer,
    FakeWriter,
    Msg,
    feed,
    make_sink,
    node,
    reject,
    telemetry,
)

from sinks import metrics
from sinks.batches import TopicBatch
from sinks.errors import Verdict
from sinks.writer import InsertFailed
from streams.serde import AvroSerde

SERDE = AvroSerde()


def _deadletters(producer: FakeProducer) -> list[dict[str, object]]:
    return [SERDE.decode(DEADLETTER, v) for v in producer.produced]


def _telemetry_msgs(n: int, partition: int = 0, ts_ms: int = JAN_31_MS) -> list[Msg]:
    return [
        Msg(TELEMETRY, partition, o, telemetry(SERDE, f"V{partition}-{o}", ts_ms + o), b"k") for o in range(n)
    ]


def test_records_clickhouse_refuses_are_dead_lettered_and_the_rest_lands_once() -> None:
    events: Events = []
    bad = {(0, 17), (0, 33), (1, 0)}
    writer, producer = FakeWriter(events, reject(bad)), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    feed(sink, _telemetry_msgs(50, 0) + _telemetry_msgs(10, 1))

    expected = sorted(({(0, o) for o in range(50)} | {(1, o) for o in range(10)}) - bad)
    assert sorted(writer.rows(TELEMETRY)) == expected  # every good row, once
    assert len(writer.rows(TELEMETRY)) == len(expected)
    dls = _deadletters(producer)
    assert sorted((d["source_partition"], d["source_offset"]) for d in dls) == sorted(bad)
    assert {d["error_kind"] for d in dls} == {"SINK_REJECTED"}
    assert all("Invalid value" in str(d["error"]) and d["processor"] == "carnival-sink" for d in dls)
    assert consumer.commits(TELEMETRY) == {0: 50, 1: 10}
    assert not sink.paused and not sink.plans[TELEMETRY]


def test_what_landed_of_each_partition_is_a_prefix_and_dead_letters_come_first() -> None:
    """A crash at any moment of the bisection leaves each partition's landed rows a prefix (resume at
    max(_offset) + 1 is exact), and a refused record's dead letter is acknowledged before any row after
    it lands (it is never neither a row nor a dead letter)."""
    events: Events = []
    bad = {(0, 5), (0, 6), (0, 40), (1, 3)}
    writer, producer = FakeWriter(events, reject(bad)), FakeProducer(events)
    sink, _ = make_sink(events, writer, producer)
    feed(sink, _telemetry_msgs(64, 0) + _telemetry_msgs(8, 1))

    high: dict[int, int] = {}
    acked: set[tuple[int, int]] = set()
    for event in events:
        if event[0] == "dl_acked":
            d = SERDE.decode(DEADLETTER, event[1])
            acked.add((int(d["source_partition"]), int(d["source_offset"])))  # type: ignore[call-overload]
        if event[0] == "insert" and event[2]:
            for p, o in event[3]:
                assert o > high.get(p, -1), f"row {p}:{o} landed after a later row of its partition"
                high[p] = o
                assert {b for b in bad if b[0] == p and b[1] < o} <= acked, (
                    f"row {p}:{o} before a dead letter"
                )


def test_a_batch_over_more_than_100_months_lands_instead_of_stalling_every_topic() -> None:
    """ClickHouse's TOO_MANY_PARTS (more than 100 partitions in one insert) is the batch's own doing:
    with inserts cut at the partition key, no insert holds two months."""
    events: Events = []

    def too_many_months(piece: TopicBatch) -> InsertFailed | None:
        if piece.topic != TELEMETRY:
            return None
        months = {SERDE.decode(TELEMETRY, v)["ts"].strftime("%Y%m") for *_, v, _k in piece.rows_in_order()}
        if len(months) > 100:
            return InsertFailed(
                "code_252", "Code: 252. Too many partitions for single INSERT block", Verdict.TOO_BIG
            )
        return None

    writer, producer = FakeWriter(events, too_many_months), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    month_ms = 31 * 86_400_000
    msgs = [
        Msg(TELEMETRY, 0, i, telemetry(SERDE, f"M{i}", JAN_31_MS + i * month_ms), None) for i in range(150)
    ]
    feed(sink, msgs + [Msg(NODES, 0, 0, node(SERDE, "N0", JAN_31_MS), None)])
    assert len(writer.rows(TELEMETRY)) == 150 and consumer.commits(TELEMETRY) == {0: 150}
    assert writer.rows(NODES) == [(0, 0)] and not producer.produced
    for piece in writer.landed:
        if piece.topic == TELEMETRY:
            assert (
                len(
                    {SERDE.decode(TELEMETRY, v)["ts"].strftime("%Y%m") for *_, v, _k in piece.rows_in_order()}
                )
                == 1
            )


def test_too_big_inserts_are_halved_and_land_without_dead_letters() -> None:
    events: Events = []

    def memory(piece: TopicBatch) -> InsertFailed | None:
        return (
            InsertFailed("code_241", "Code: 241. Memory limit exceeded", Verdict.TOO_BIG)
            if piece.rows > 100
            else None
        )

    writer, producer = FakeWriter(events, memory), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    feed(sink, _telemetry_msgs(500, 0))
    assert sorted(writer.rows(TELEMETRY)) == [(0, o) for o in range(500)]
    assert not producer.produced and consumer.commits(TELEMETRY) == {0: 500}


def test_a_transient_error_pauses_only_its_topic_and_the_retry_lands_the_same_piece() -> None:
    events: Events = []
    down = threading.Event()
    down.set()

    def telemetry_down(piece: TopicBatch) -> InsertFailed | None:
        if piece.topic == TELEMETRY and down.is_set():
            message = (
                "Code: 252. Too many parts (3001). Merges are processing significantly slower than inserts"
            )
            return InsertFailed("code_252", message, Verdict.TRANSIENT)
        return None

    writer, producer = FakeWriter(events, telemetry_down), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    feed(
        sink,
        _telemetry_msgs(20, 0) + [Msg(NODES, 1, o, node(SERDE, f"N{o}", JAN_31_MS), None) for o in range(5)],
    )
    assert sink.paused_topics == {TELEMETRY}
    assert consumer.paused == {(TELEMETRY, 0), (TELEMETRY, 1)}  # nodes keep flowing
    assert writer.rows(NODES) == [(1, o) for o in range(5)] and consumer.commits(NODES) == {1: 5}
    assert not writer.rows(TELEMETRY) and TELEMETRY not in {e[1] for e in events if e[0] == "commit"}
    feed(sink, [Msg(NODES, 1, 5, node(SERDE, "N5", JAN_31_MS), None)])  # still flowing while telemetry waits
    assert consumer.commits(NODES) == {1: 6} and not producer.produced  # nothing dead-lettered

    failed = [e[3:] for e in events if e[0] == "insert" and e[1] == TELEMETRY]
    down.clear()
    sink.plans[TELEMETRY][0].retry_at = 0.0  # the backoff has passed
    feed(sink, [])
    assert sorted(writer.rows(TELEMETRY)) == [(0, o) for o in range(20)]
    landed = [e[3:] for e in events if e[0] == "insert" and e[1] == TELEMETRY and e[2]]
    assert landed == failed[:1]  # the same rows with the same deduplication token
    assert consumer.commits(TELEMETRY) == {0: 20} and not sink.paused and not consumer.paused


def test_dead_letters_hold_inserts_and_commits_until_acknowledged() -> None:
    """The broker is down past message.timeout.ms: the first delivery of the dead letter fails. It is
    produced again; no row after it lands and no offset is committed before the broker has it."""
    events: Events = []
    writer, producer = FakeWriter(events), FakeProducer(events, failures=2)
    sink, consumer = make_sink(events, writer, producer)
    msgs = _telemetry_msgs(10, 0)
    msgs[4] = Msg(TELEMETRY, 0, 4, b"\x00garbage", b"k")  # undecodable: dead-lettered at once
    feed(sink, msgs)

    assert [e[0] for e in events if e[0].startswith("dl_")] == ["dl_failed", "dl_failed", "dl_acked"]
    assert len(producer.produced) == 3  # produced again after each failure
    first_ack = next(i for i, e in enumerate(events) if e[0] == "dl_acked")
    assert all(i > first_ack for i, e in enumerate(events) if e[0] in ("insert", "commit"))
    assert consumer.commits(TELEMETRY) == {0: 10}
    assert sorted(writer.rows(TELEMETRY)) == [(0, o) for o in range(10) if o != 4]


def test_a_dead_letter_never_acknowledged_is_never_committed() -> None:
    events: Events = []
    writer, producer = FakeWriter(events), FakeProducer(events, failures=10**9)
    sink, consumer = make_sink(events, writer, producer)
    sink.stop_event.set()  # stopping: the shutdown deadline bounds the wait for the broker
    for m in [Msg(TELEMETRY, 0, 0, b"\x00junk", None), *_telemetry_msgs(3, 0)[1:]]:
        sink._route(m)  # type: ignore[arg-type]
    sink._shutdown()
    assert not [e for e in events if e[0] == "commit"] and not writer.rows(TELEMETRY)
    assert len(producer.produced) > 1  # retried meanwhile


def test_tombstones_are_dead_lettered_or_skipped_on_compacted_topics() -> None:
    events: Events = []
    writer, producer = FakeWriter(events), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    before = metrics.TOMBSTONES.labels(topic=NODES, action="skipped")._value.get()
    feed(
        sink,
        [
            Msg(TELEMETRY, 0, 0, None, b"vin-1"),
            *_telemetry_msgs(3, 0)[1:],
            Msg(NODES, 0, 0, node(SERDE, "N0", JAN_31_MS), b"N0"),
            Msg(NODES, 0, 1, None, b"N0"),  # a compacted topic's delete marker
        ],
    )
    (dl,) = _deadletters(producer)
    assert dl["error_kind"] == "TOMBSTONE" and (dl["source_topic"], dl["source_offset"]) == (TELEMETRY, 0)
    assert dl["key"] == b"vin-1" and dl["value"] is None and "tombstone" in str(dl["error"])
    assert metrics.TOMBSTONES.labels(topic=NODES, action="skipped")._value.get() == before + 1
    assert consumer.commits(TELEMETRY) == {0: 3} and consumer.commits(NODES) == {0: 2}
    assert writer.rows(NODES) == [(0, 0)]


def test_a_batch_across_a_month_boundary_is_inserted_one_month_at_a_time() -> None:
    """Each insert is one part: a batch spanning January and February is two inserts, in offset order
    per partition (January rows first where they come first)."""
    events: Events = []
    writer, producer = FakeWriter(events), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    day = 86_400_000
    p0 = [
        Msg(TELEMETRY, 0, o, telemetry(SERDE, f"A{o}", JAN_31_MS + (o // 5) * day), None) for o in range(10)
    ]
    p1 = [
        Msg(TELEMETRY, 1, o, telemetry(SERDE, f"B{o}", FEB_1_MS if o < 3 else JAN_31_MS), None)
        for o in range(6)
    ]
    feed(sink, p0 + p1)
    months = [
        {SERDE.decode(TELEMETRY, v)["ts"].month for *_, v, _k in piece.rows_in_order()}
        for piece in writer.landed
    ]
    assert all(len(m) == 1 for m in months) and len(months) == 3
    assert [sorted(p.rows_in_order())[0][:2] for p in writer.landed] == [(0, 0), (0, 5), (1, 3)]
    assert sorted(writer.rows(TELEMETRY)) == sorted([(0, o) for o in range(10)] + [(1, o) for o in range(6)])
    assert consumer.commits(TELEMETRY) == {0: 10, 1: 6}


def test_revoking_part_of_an_insert_that_timed_out_repositions_the_rest_instead_of_a_new_token() -> None:
    """The insert timed out (it may have landed). Partition 1 is revoked: retrying the rest under another
    deduplication token could land partition 0's rows twice, so partition 0 is positioned again from
    ClickHouse, like a new assignment; a topic left without batches resumes."""
    events: Events = []
    timeout = InsertFailed("unavailable", "Read timed out")
    writer, producer = FakeWriter(events, lambda piece: timeout), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    feed(sink, _telemetry_msgs(5, 0) + _telemetry_msgs(5, 1))
    assert sink.paused_topics == {TELEMETRY} and sink.plans[TELEMETRY]

    sink._on_revoke(consumer, [TopicPartition(TELEMETRY, 1)])  # type: ignore[arg-type]
    assert (TELEMETRY, 0) in sink.pending and (TELEMETRY, 0) not in sink.expected
    assert (TELEMETRY, 1) not in sink.pending and (TELEMETRY, 1) not in sink.expected
    assert not sink.plans[TELEMETRY] and sink.batches[TELEMETRY].empty
    assert (TELEMETRY, 0) in consumer.paused and not [e for e in events if e[0] == "commit"]
    feed(sink, [])
    assert TELEMETRY not in sink.paused_topics


def test_revoking_part_of_a_refused_insert_just_drops_the_revoked_rows() -> None:
    """An error with a code from the server means the insert did not land: nothing to reposition."""
    events: Events = []
    down = InsertFailed("code_242", "Code: 242. Table is in readonly mode")
    writer, producer = FakeWriter(events, lambda piece: down), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer)
    feed(sink, _telemetry_msgs(5, 0) + _telemetry_msgs(5, 1))
    sink._on_revoke(consumer, [TopicPartition(TELEMETRY, 1)])  # type: ignore[arg-type]
    assert (TELEMETRY, 0) in sink.expected and not sink.pending
    (plan,) = sink.plans[TELEMETRY]
    assert plan.pieces is not None and [p.partitions_with_rows() for p in plan.pieces] == [[0]]
