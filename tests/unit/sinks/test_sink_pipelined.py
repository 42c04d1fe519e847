"""Pipelined inserts (``sink.pipelined_inserts``): the sink reads and batches on while a topic's insert
runs, and the checkpoint is as before: offsets committed only once the rows landed, batches of a topic
land in order, and a rebalance sees every batch landed or not, never landing."""

from __future__ import annotations

import threading

from confluent_kafka import TopicPartition
from sink_fakes import (
    JAN_31_MS,
    NODES,
    TELEMETRY,
    Events,
    FakeProducer,
    FakeWriter,
    Msg,
    make_sink,
    node,
    settle,
    telemetry,
)

from sinks.avro_container import WriterSchemas
from sinks.batches import TopicBatch
from sinks.config import SINK_TABLES
from sinks.inserts import Inserter, InsertPlan, Outcome
from streams.serde import AvroSerde

SERDE = AvroSerde()


class GatedWriter(FakeWriter):
    """Holds each insert until the test opens the gate."""

    def __init__(self, events: Events) -> None:
        super().__init__(events)
        self.gate = threading.Event()
        self.started = threading.Event()

    def insert(self, piece: TopicBatch) -> int:
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().insert(piece)


def _msgs(offsets: range, partition: int = 0) -> list[Msg]:
    return [Msg(TELEMETRY, partition, o, telemetry(SERDE, f"V{o}", JAN_31_MS + o), b"k") for o in offsets]


def _turn(sink: object, msgs: list[Msg]) -> None:
    for m in msgs:
        sink._route(m)  # type: ignore[attr-defined]
    sink._flush_due(float("inf"))  # type: ignore[attr-defined]


def test_the_sink_reads_on_while_an_insert_is_in_flight_and_commits_once_it_landed() -> None:
    events: Events = []
    writer, producer = GatedWriter(events), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer, topics=(TELEMETRY,))
    _turn(sink, _msgs(range(0, 10)))  # sealed, its insert started: the loop's turn returned
    assert writer.started.wait(10)
    assert sink.plans[TELEMETRY][0].inflight is not None
    sink._route(_msgs(range(10, 15))[0])  # reading goes on meanwhile
    for m in _msgs(range(11, 15)):
        sink._route(m)
    assert sink.batches[TELEMETRY].rows == 5
    assert not consumer.commits(TELEMETRY) and not writer.landed  # nothing committed before it landed

    writer.gate.set()
    settle(sink)  # the first lands and is committed, then the second batch goes the same way
    assert writer.rows(TELEMETRY) == [(0, o) for o in range(15)]  # in order, once each
    steps = [(e[0], e[3] if e[0] == "commit" else len(e[3])) for e in events if e[0] in ("insert", "commit")]
    assert steps == [("insert", 10), ("commit", 10), ("insert", 5), ("commit", 15)]


def test_a_second_sealed_batch_waits_for_the_first_to_land() -> None:
    events: Events = []
    writer, producer = GatedWriter(events), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer, topics=(TELEMETRY,))
    _turn(sink, _msgs(range(0, 10)))
    assert writer.started.wait(10)
    sink._route(_msgs(range(10, 11))[0])
    sink._seal(TELEMETRY)  # two sealed batches: the turn waits for the head (at most one waiting)
    threading.Timer(0.05, writer.gate.set).start()
    sink._flush_due(float("inf"))
    assert consumer.commits(TELEMETRY)[0] >= 10
    settle(sink)
    assert consumer.commits(TELEMETRY) == {0: 11}
    assert [e[3] for e in events if e[0] == "insert"] == [[(0, o) for o in range(10)], [(0, 10)]]


def test_a_rebalance_waits_for_the_insert_in_flight_and_acts_on_it_first() -> None:
    events: Events = []
    writer, producer = GatedWriter(events), FakeProducer(events)
    sink, consumer = make_sink(events, writer, producer, topics=(TELEMETRY,))
    _turn(sink, _msgs(range(0, 5), 0) + _msgs(range(0, 5), 1))
    assert writer.started.wait(10)
    threading.Timer(0.05, writer.gate.set).start()
    sink._on_revoke(consumer, [TopicPartition(TELEMETRY, 1)])  # type: ignore[arg-type]
    # The insert landed whole (both partitions) and was committed before partition 1 went away.
    assert sorted(writer.rows(TELEMETRY)) == [(p, o) for p in (0, 1) for o in range(5)]
    assert consumer.commits(TELEMETRY) == {0: 5, 1: 5}
    assert not sink.plans[TELEMETRY] and (TELEMETRY, 1) not in sink.expected


def test_inserts_of_different_topics_are_in_flight_at_the_same_time() -> None:
    events: Events = []
    writers = {TELEMETRY: GatedWriter(events), NODES: GatedWriter(events)}
    inserter = Inserter(
        writers[TELEMETRY],
        SERDE,
        dead_letter=lambda *args: None,
        settle_dead_letters=lambda: None,
        backoff_initial_s=0.01,
        backoff_max_s=0.1,
        pipelined=True,
        insert_writer=writers.__getitem__,
    )
    schemas = WriterSchemas(SERDE)
    plans = []
    for topic, value in ((TELEMETRY, telemetry(SERDE, "V", JAN_31_MS)), (NODES, node(SERDE, "N", JAN_31_MS))):
        batch = TopicBatch(topic, SINK_TABLES[topic])
        ws, payload = schemas.resolve(topic, value)
        batch.add(0, 0, ws, payload, None)
        plans.append(InsertPlan(batch))
    try:
        assert [inserter.run(plan, block=False) for plan in plans] == [Outcome.IN_FLIGHT] * 2
        assert all(w.started.wait(10) for w in writers.values())  # both running, neither landed
        for w in writers.values():
            w.gate.set()
        assert [inserter.run(plan) for plan in plans] == [Outcome.DONE] * 2
        assert [len(w.landed) for w in writers.values()] == [1, 1]
    finally:
        for w in writers.values():
            w.gate.set()
        inserter.close()
