"""Fuzz: whatever bytes arrive on ``alerts.v1`` (tombstones, noise, valid alerts with extreme values,
valid encodings cut short or with a byte flipped), a receiver lane never raises; every record ends up
routed (with a body that serializes), deduplicated, or dead-lettered with a kind and a reason; and every
offset becomes committable. ``CARNIVAL_FUZZ_EXAMPLES`` scales the example count."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from router_fakes import SERDE, TOPIC, FakeBroker, FakeMessage, FakeProducer

from processors.alert_router.deadletters import DeadLetterSender
from processors.alert_router.delivery import Receiver
from processors.alert_router.lane import ReceiverLane
from processors.alert_router.router import RouterConfig

EXAMPLES = int(os.environ.get("CARNIVAL_FUZZ_EXAMPLES", "1000"))
MILLIS = st.sampled_from([-(2**63), -1, 0, 1, 2**41, 10**13, 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)
TEXT = st.sampled_from(["", "dc-1", "\u00e9\u6f22\U0001f525", "x" * 300, "\x00\n\t"]) | st.text(max_size=8)

alerts = st.fixed_dictionaries({
    "fingerprint": TEXT, "status": st.sampled_from(["FIRING", "RESOLVED"]),
    "severity": st.sampled_from(["critical", "warning", "info"]), "kind": TEXT,
    "site_id": st.none() | TEXT, "region": st.none() | TEXT, "summary": TEXT,
    "starts_at": MILLIS, "ends_at": st.none() | MILLIS,
    "labels": st.dictionaries(TEXT, TEXT, max_size=2), "incident_id": st.none() | TEXT,
})  # fmt: skip


def encode(alert: dict[str, Any]) -> bytes:
    try:
        return SERDE.encode(TOPIC, alert)
    except Exception:  # noqa: BLE001 - a value Avro cannot hold: its repr is noise bytes instead
        return repr(alert).encode()[:300]


@st.composite
def records(draw: st.DrawFn) -> bytes | None:
    choice = draw(st.sampled_from(["tombstone", "noise", "alert", "cut", "flipped"]))
    if choice == "tombstone":
        return None
    if choice == "noise":
        return draw(st.binary(max_size=100))
    value = encode(draw(alerts))
    if choice == "cut":
        return value[: draw(st.integers(0, max(0, len(value) - 1)))]
    if choice == "flipped" and value:
        at = draw(st.integers(0, len(value) - 1))
        return value[:at] + bytes([value[at] ^ draw(st.integers(1, 255))]) + value[at + 1 :]
    return value


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(values=st.lists(records(), min_size=1, max_size=4), kind=st.sampled_from(["alertmanager", "slack"]))
def test_no_record_can_crash_a_lane_and_every_one_is_accounted_for(values: list[bytes | None],
                                                                   kind: str) -> None:  # fmt: skip
    broker = FakeBroker(values)
    producer = FakeProducer()
    receiver = Receiver("fuzz", "http://127.0.0.1:9/h", kind)  # type: ignore[arg-type]
    lane = ReceiverLane(receiver, broker.consumer("fuzz"), RouterConfig(), SERDE,  # type: ignore[arg-type]
                        DeadLetterSender(producer, SERDE), TOPIC, primary=True)  # fmt: skip
    for offset, value in enumerate(values):
        assert lane._handle(FakeMessage(0, offset, value)) == 1
    routed = 0
    while not lane.worker._queue.empty():  # stand in for the delivery thread: the body must serialize
        job = lane.worker._queue.get()
        json.dumps(job.body, default=str)
        lane._on_done(job)
        routed += 1
    lane.deadletters.poll()
    assert lane.tracker.ready() == {0: len(values)} and lane.in_flight == 0
    letters = producer.dead_letters()
    assert all(d["error_kind"] and d["error"] and d["source_offset"] is not None for d in letters)
    assert routed + lane.stats["deduplicated"] + len(letters) == len(values)
    assert sum(v is None for v in values) == sum(d["error_kind"] == "TOMBSTONE" for d in letters)
