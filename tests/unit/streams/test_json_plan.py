"""The produce fast path (streams/json_plan.py): it takes a line only when validation + encoding would, and
then writes the same bytes; everything else is left to the slow path (tests/fuzz has the bulk version)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas import TOPICS
from schemas.examples import EXAMPLES
from streams.exceptions import SerializationError, ValidationError
from streams.json_plan import compile_json_plan
from streams.produce import produce_json_lines
from streams.records import parse_json_record
from streams.serde import AvroSerde
from streams.topics import key_field

SERDE = AvroSerde()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PLANNED = sorted(t for t in TOPICS if SERDE.json_plan(t) is not None)

# Values at and around every rule's edge: types, ranges, timestamp bounds (as integers and ISO strings with
# offsets), empty and over-long text, unknown enum symbols.
EDGES: list[Any] = [
    None, True, False, 0, -1, 1, 9, 10, 100, 100.0, 100.00000001, -0.0, 2**31 - 1, 2**31, -(2**31) - 1,
    2**63 - 1, 2**63, 1.5, 1e308, 10**400, "", "x", "x" * 65, "x" * 1001, "é" * 40, "UNKNOWN", "HW4", "P",
    946684799999, 946684800000, 4102444799999, 4102444800000, 946684800000000, 4102444799999999,
    "2000-01-01T00:00:00Z", "2000-01-01T00:30:00+01:00", "1999-12-31T23:59:59.999Z", "2099-12-31T23:59:59Z",
    "2100-01-01T00:00:00Z", "2025-06-01T21:15:00.250", "2025-06-01", "nope", "AAAA", "AAA", [], {},
]  # fmt: skip


def slow_path(topic: str, obj: Any) -> tuple[bytes, str | None, int | None] | None:
    try:
        record = parse_json_record(topic, obj)
        value = SERDE.encode(topic, record)
    except (ValidationError, SerializationError):
        return None
    key = record[key_field(topic)]
    ts = record.get("ts")
    ms = (ts - EPOCH) // timedelta(milliseconds=1) if isinstance(ts, datetime) else None
    return value, None if key is None else str(key), ms


def test_every_topic_but_maps_has_a_plan() -> None:
    assert set(TOPICS) - set(PLANNED) == {"alerts.v1"}  # its labels are a map: the slow path only
    with pytest.raises(TypeError):
        compile_json_plan("alerts.v1")


def test_no_plan_with_a_registry() -> None:
    assert AvroSerde(registry=object()).json_plan("fleet.telemetry.v1") is None


@pytest.mark.parametrize("topic", PLANNED)
def test_examples_take_the_fast_path_with_the_same_bytes_key_and_time(topic: str) -> None:
    plan = SERDE.json_plan(topic)
    assert plan is not None
    fast = plan(orjson.dumps(EXAMPLES[topic]))
    assert fast is not None
    assert fast == slow_path(topic, EXAMPLES[topic])


@pytest.mark.parametrize("topic", PLANNED)
def test_edge_values_in_every_field_agree_with_the_slow_path(topic: str) -> None:
    plan = SERDE.json_plan(topic)
    assert plan is not None
    taken = refused = 0
    for name in EXAMPLES[topic]:
        for value in EDGES:
            obj = {**EXAMPLES[topic], name: value}
            fast = plan(json.dumps(obj).encode())
            slow = slow_path(topic, obj)
            if fast is None:
                refused += 1
            else:
                taken += 1
                assert fast == slow, (name, value)
        missing = {k: v for k, v in EXAMPLES[topic].items() if k != name}
        fast = plan(orjson.dumps(missing))
        assert fast is None or fast == slow_path(topic, missing), name
    assert plan(orjson.dumps({**EXAMPLES[topic], "extra": 1})) is None
    assert taken and refused


def test_refusals_are_the_slow_paths_to_explain() -> None:
    """A line the plan refuses is rejected as before: with its line number, kind and reason."""

    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes]] = []

        def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
            self.sent.append((topic, value))

    good = dict(EXAMPLES["fleet.telemetry.v1"])
    lines = [
        orjson.dumps(good),
        orjson.dumps({**good, "soc_pct": 101}),
        orjson.dumps({**good, "ts": "2099-01-01T00:00:00Z"}),  # valid, but far in the future
        orjson.dumps(good),
    ]
    producer = Producer()
    summary = produce_json_lines("fleet.telemetry.v1", lines, producer, SERDE, now_ms=lambda: 1748812500000)
    assert (summary.produced, summary.rejected) == (2, 2)
    assert [(r.line, r.kind) for r in summary.rejections] == [(2, "VALIDATION"), (3, "FUTURE_TIMESTAMP")]
    assert "soc_pct" in summary.rejections[0].reason and "out of range" in summary.rejections[0].reason
    assert [t for t, _ in producer.sent].count("deadletter.v1") == 2
