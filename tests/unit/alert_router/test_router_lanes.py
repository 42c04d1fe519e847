"""Receivers progress independently, and what cannot be delivered is dead-lettered before it is
committed: the router over an in-memory broker (``router_fakes``) with real local HTTP receivers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from router_fakes import SERDE, FakeBroker, FakeProducer, alert, encoded, wait_until

from core.settings import Settings
from processors.alert_router.delivery import Receiver
from processors.alert_router.lane import lane_group
from processors.alert_router.router import AlertRouter, RouterConfig
from processors.alert_router.testing import OK, REFUSE, REJECT_400, FaultyReceiver, RecordingReceiver
from streams.deadletter import DELIVERY_REJECTED, PROCESSING, TOMBSTONE
from streams.exceptions import SerializationError

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "commit_interval_s": 0.01, "drain_timeout_s": 0.5,
        "deadletter_retry_s": 0.02, "timeout_s": 1.0}  # fmt: skip
GROUP = RouterConfig().group_id


@contextmanager
def running(router: AlertRouter) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(10)


def router_for(broker: FakeBroker, receivers: list[Receiver], producer: FakeProducer | None = None,
               **config: Any) -> AlertRouter:  # fmt: skip
    return AlertRouter(Settings(), receivers, RouterConfig(**{**FAST, **config}),
                       consumer_factory=broker.consumer, producer=producer or FakeProducer())  # fmt: skip


def fingerprints(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["alerts"][0]["fingerprint"] for b in bodies]


def test_a_down_receiver_does_not_stop_the_others_and_its_backlog_is_bounded() -> None:
    """Before: one in-flight count for all receivers; at the cap the one consumer paused, for everyone."""
    fps = [f"f{i:02d}" for i in range(40)]
    broker = FakeBroker(encoded(*(alert(fp) for fp in fps)), partitions=2)
    with RecordingReceiver() as good, FaultyReceiver(REFUSE) as down:
        good_r, down_r = Receiver("good", good.url), Receiver("down", down.url)
        router = router_for(broker, [good_r, down_r], max_in_flight=5)
        with running(router):
            assert wait_until(lambda: len(good.received) == 40), len(good.received)
            down_lane = router.lanes[1]
            assert down_lane.in_flight <= 5 and down_lane.worker.backlog <= 5 and down_lane.paused
            assert wait_until(lambda: sum(broker.group_offsets(lane_group(GROUP, good_r)).values()) == 40)
            assert broker.group_offsets(GROUP) == {}  # the router's group waits for the down receiver
            down.mode = OK
            assert wait_until(lambda: len(down.received) == 40), len(down.received)
            assert wait_until(lambda: sum(broker.group_offsets(GROUP).values()) == 40)
    assert sorted(fingerprints(good.received)) == fps and sorted(fingerprints(down.received)) == fps


def test_a_4xx_goes_to_deadletter_once_with_status_and_body_and_counts_as_handled() -> None:
    """Before: a 4xx was logged and the alert dropped for that receiver, with no dead letter."""
    values = encoded(alert("a"), alert("b"), alert("c"))
    broker = FakeBroker(values)
    producer = FakeProducer()
    with RecordingReceiver() as good, FaultyReceiver(REJECT_400) as rejecting:
        router = router_for(broker, [Receiver("good", good.url), Receiver("strict", rejecting.url)], producer)
        with running(router):
            assert wait_until(lambda: broker.group_offsets(GROUP) == {0: 3})
    assert rejecting.attempts == {REJECT_400: 3}  # once each, never retried
    letters = producer.dead_letters()
    where = [(d["error_kind"], d["source_topic"], d["source_partition"], d["source_offset"]) for d in letters]
    assert where == [
        (DELIVERY_REJECTED, "alerts.v1", 0, 0), (DELIVERY_REJECTED, "alerts.v1", 0, 1),
        (DELIVERY_REJECTED, "alerts.v1", 0, 2)]  # fmt: skip
    assert [d["value"] for d in letters] == values  # the original record, to replay once fixed
    assert all("strict" in d["error"] and "HTTP 400" in d["error"] for d in letters)
    assert all("field alerts[0].labels is not accepted" in d["error"] for d in letters)
    assert len(good.received) == 3


def test_rejected_body_kept_in_the_dead_letter_is_bounded() -> None:
    broker = FakeBroker(encoded(alert("a")))
    producer = FakeProducer()
    with FaultyReceiver(REJECT_400) as rejecting:
        router = router_for(broker, [Receiver("strict", rejecting.url)], producer, rejected_body_max_bytes=12)
        with running(router):
            assert wait_until(lambda: broker.group_offsets(GROUP) == {0: 1})
    (letter,) = producer.dead_letters()
    assert repr(FaultyReceiver.REJECT_BODY[:12].decode()) in letter["error"]
    assert FaultyReceiver.REJECT_BODY[:13].decode() not in letter["error"]


def test_dead_letters_the_broker_did_not_acknowledge_hold_the_commit() -> None:
    """Before: the dead letter was flushed, a failure only logged, and the offset committed anyway."""
    broker = FakeBroker([*encoded(alert("a")), None, *encoded(alert("b"))])
    producer = FakeProducer()
    producer.down = True
    with FaultyReceiver(REJECT_400) as rejecting:
        receiver = Receiver("strict", rejecting.url)
        router = router_for(broker, [receiver], producer)
        with running(router):
            assert wait_until(lambda: producer.failures >= 9)  # each produced again, again and again
            assert broker.group_offsets(GROUP) == {}
            assert broker.group_offsets(lane_group(GROUP, receiver)) == {}
            assert router.deadletters.pending == 3 and producer.acked == []
            producer.down = False  # the broker is back
            assert wait_until(lambda: broker.group_offsets(GROUP) == {0: 3})
    kinds = sorted((d["source_offset"], d["error_kind"]) for d in producer.dead_letters())
    assert kinds == [(0, DELIVERY_REJECTED), (1, TOMBSTONE), (2, DELIVERY_REJECTED)]  # each exactly once
    assert router.deadletters.pending == 0


def test_tombstones_and_undecodable_records_are_dead_lettered_once_with_a_reason() -> None:
    """Before: a tombstone was dead-lettered as DECODE; now TOMBSTONE, and once for all receivers."""
    unknown_schema = b"\xc3\x01" + bytes(8) + b"\x02"
    broker = FakeBroker([None, b"not avro at all", unknown_schema, *encoded(alert("ok"))])
    producer = FakeProducer()
    with RecordingReceiver() as one, RecordingReceiver() as two:
        router = router_for(broker, [Receiver("one", one.url), Receiver("two", two.url)], producer)
        with running(router) as thread:
            assert wait_until(lambda: broker.group_offsets(GROUP) == {0: 4})
            assert thread.is_alive()
    letters = sorted((d["source_offset"], d["error_kind"]) for d in producer.dead_letters())
    assert letters == [(0, TOMBSTONE), (1, "BAD_MAGIC"), (2, "UNKNOWN_FINGERPRINT")]
    assert all(d["error"] for d in producer.dead_letters())
    assert fingerprints(one.received) == ["ok"] and fingerprints(two.received) == ["ok"]
    assert router.stats["undecodable"] == 3


class _Unshapeable(Receiver):
    def payload(self, alert: dict[str, Any], external_url: str = "") -> dict[str, Any]:
        raise ValueError("cannot express this alert")


def test_an_alert_a_receiver_cannot_shape_is_dead_lettered_not_retried_forever() -> None:
    broker = FakeBroker(encoded(alert("a")))
    producer = FakeProducer()
    router = router_for(broker, [_Unshapeable("odd", "http://127.0.0.1:9/never")], producer)
    with running(router):
        assert wait_until(lambda: broker.group_offsets(GROUP) == {0: 1})
    (letter,) = producer.dead_letters()
    assert letter["error_kind"] == PROCESSING and "cannot express this alert" in letter["error"]


def test_a_new_receiver_starts_where_the_router_group_is() -> None:
    broker = FakeBroker(encoded(*(alert(f"f{i}") for i in range(5))))
    broker.committed[GROUP] = {0: 3}  # the router had delivered 0..2 to the receivers it had then
    with RecordingReceiver() as newcomer:
        router = router_for(broker, [Receiver("new", newcomer.url)])
        with running(router):
            assert wait_until(lambda: broker.group_offsets(GROUP) == {0: 5})
    assert fingerprints(newcomer.received) == ["f3", "f4"]


def test_receiver_groups_do_not_depend_on_order_or_name() -> None:
    a, b = Receiver("webhook-1", "http://a/h"), Receiver("webhook-2", "http://b/h")
    renamed = Receiver("webhook-2", "http://a/h")
    assert lane_group("g", a) == lane_group("g", renamed) != lane_group("g", b)
    assert "http" not in lane_group("g", a) and lane_group("g", a).startswith("g.alertmanager-")



class _RegistryDownTwice:
    """The serde, except that the schema registry fails the first two decodes (a transient error)."""

    def __init__(self) -> None:
        self.failures = 0

    def decode(self, topic: str, data: bytes) -> dict[str, Any]:
        if self.failures < 2:
            self.failures += 1
            raise SerializationError("REGISTRY", "schema id 1: connection refused")
        return SERDE.decode(topic, data)

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        return SERDE.encode(topic, record)


def test_a_registry_outage_is_waited_out_not_dead_lettered() -> None:
    broker = FakeBroker(encoded(alert("a"), alert("b")))
    producer = FakeProducer()
    with RecordingReceiver() as rx:
        router = router_for(broker, [Receiver("one", rx.url)], producer)
        router.lanes[0].serde = _RegistryDownTwice()
        with running(router):
            assert wait_until(lambda: broker.group_offsets(GROUP) == {0: 2})
    assert producer.acked == [] and router.lanes[0].serde.failures == 2
    assert fingerprints(rx.received) == ["a", "b"]  # in order, each once
