"""JSON-lines validation: every failure class names its field; output JSON is ISO-8601 UTC + base64."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas import TOPICS
from schemas.examples import EXAMPLES
from streams.exceptions import ValidationError
from streams.records import parse_json_record, to_json_record

TEL = "fleet.telemetry.v1"


def _tel(**changes: Any) -> dict[str, Any]:
    obj = dict(EXAMPLES[TEL])
    for k, v in changes.items():
        if v is ...:
            obj.pop(k)
        else:
            obj[k] = v
    return obj


def _reject(topic: str, obj: dict[str, Any], field: str | None, *fragments: str) -> ValidationError:
    with pytest.raises(ValidationError) as exc:
        parse_json_record(topic, obj)
    assert exc.value.field == field
    assert exc.value.kind == "VALIDATION"
    for fragment in fragments:
        assert fragment in str(exc.value)
    return exc.value


@pytest.mark.parametrize("topic", TOPICS)
def test_examples_are_valid_and_survive_json_round_trip(topic: str) -> None:
    record = parse_json_record(topic, EXAMPLES[topic])
    again = parse_json_record(topic, orjson.loads(orjson.dumps(to_json_record(topic, record))))
    assert again == record


def test_output_is_avro_ready() -> None:
    r = parse_json_record(TEL, EXAMPLES[TEL])
    assert r["ts"] == datetime(2025, 6, 1, 21, 15, 0, 250000, tzinfo=UTC)
    assert r["charge_limit_pct"] == 80.0 and type(r["charge_limit_pct"]) is float


def test_missing_required_field() -> None:
    _reject(TEL, _tel(vin=...), "vin", "missing required field 'vin'")
    _reject(TEL, _tel(opted_in=None), "opted_in", "must not be null")


def test_defaults_fill_missing_optional_fields() -> None:
    r = parse_json_record(TEL, _tel(soc_pct=..., charge_state=..., gear=None))
    assert r["soc_pct"] is None and r["charge_state"] == "UNKNOWN" and r["gear"] == "UNKNOWN"
    assert list(r) == list(EXAMPLES[TEL])  # schema order, every field
    alert = dict(EXAMPLES["alerts.v1"])
    del alert["labels"]
    assert parse_json_record("alerts.v1", alert)["labels"] == {}


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("vin", 12345, "expected string, got int"),
        ("vin", "", "must not be empty"),
        ("soc_pct", "55", "expected number, got str"),
        ("soc_pct", True, "expected number, got bool"),
        ("soc_pct", float("nan"), "finite"),
        ("opted_in", "true", "expected boolean"),
        ("opted_in", 1, "expected boolean"),
        ("ts", 1.5e12, "epoch milliseconds integer"),
        ("ts", "yesterday", "expected ISO-8601"),
    ],
)
def test_wrong_types_are_not_coerced(field: str, value: Any, fragment: str) -> None:
    _reject(TEL, _tel(**{field: value}), field, f"'{field}'", fragment)


def test_int_fields_reject_floats_and_overflow() -> None:
    req = dict(EXAMPLES["tasks.requests.v1"])
    _reject("tasks.requests.v1", req | {"priority": 5.0}, "priority", "expected integer")
    _reject("tasks.requests.v1", req | {"est_duration_s": 2**31}, "est_duration_s", "does not fit")


def test_enum_symbols_listed() -> None:
    _reject(TEL, _tel(hw="HW9"), "hw", "'HW9' is not one of HW3, HW4, HW5, OTHER")
    _reject(TEL, _tel(gear="p"), "gear", "P, R, N, D, UNKNOWN")


@pytest.mark.parametrize(
    ("topic", "field", "value"),
    [
        ("tasks.requests.v1", "priority", 10),
        ("tasks.requests.v1", "priority", -1),
        ("tasks.requests.v1", "min_soc_pct", 100.5),
        (TEL, "soc_pct", -0.1),
        (TEL, "charge_limit_pct", 101),
        ("emulator.actions.v1", "seq", -1),
        ("power.events.v1", "seq", -5),
        ("power.events.v1", "battery_soc_pct", 120.0),
    ],
)
def test_ranges(topic: str, field: str, value: Any) -> None:
    _reject(topic, dict(EXAMPLES[topic]) | {field: value}, field, "out of range")


def test_range_bounds_inclusive() -> None:
    req = dict(EXAMPLES["tasks.requests.v1"])
    assert parse_json_record("tasks.requests.v1", req | {"priority": 9})["priority"] == 9
    assert parse_json_record("tasks.requests.v1", req | {"priority": 0})["priority"] == 0
    assert parse_json_record(TEL, _tel(soc_pct=100))["soc_pct"] == 100.0


def test_unknown_fields_rejected() -> None:
    err = _reject(
        TEL, _tel(speed_kph=3, color="red"), "color", "unknown field(s) 'color', 'speed_kph'", "allowed:"
    )
    assert "vin" in err.message


def test_not_an_object_and_unknown_topic() -> None:
    with pytest.raises(ValidationError) as exc:
        parse_json_record(TEL, [1, 2])  # type: ignore[arg-type]
    assert exc.value.kind == "MALFORMED_JSON"
    with pytest.raises(ValidationError, match="known topics"):
        parse_json_record("nope.v1", {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-01T21:15:00Z", datetime(2025, 6, 1, 21, 15, tzinfo=UTC)),
        ("2025-06-01T23:15:00+02:00", datetime(2025, 6, 1, 21, 15, tzinfo=UTC)),
        ("2025-06-01T21:15:00", datetime(2025, 6, 1, 21, 15, tzinfo=UTC)),  # naive = UTC
        ("2025-06-01T21:15:00.123Z", datetime(2025, 6, 1, 21, 15, 0, 123000, tzinfo=UTC)),
        (1748812500123, datetime(2025, 6, 1, 21, 15, 0, 123000, tzinfo=UTC)),
    ],
)
def test_timestamp_forms(value: Any, expected: datetime) -> None:
    got = parse_json_record(TEL, _tel(ts=value))["ts"]
    assert got == expected and got.tzinfo is UTC


def test_timestamp_units() -> None:
    # power events are micros: the integer is epoch microseconds
    pe = dict(EXAMPLES["power.events.v1"])
    got = parse_json_record("power.events.v1", pe | {"ts": 1748812500123456})["ts"]
    assert got == datetime(2025, 6, 1, 21, 15, 0, 123456, tzinfo=UTC)
    # a wrong unit (seconds, or micros in a millis field) is caught, not stored as 1970 or year 57000
    _reject(TEL, _tel(ts=1748812500), "ts", "wrong unit")
    _reject(TEL, _tel(ts=1748812500123456), "ts", "wrong unit")
    _reject("power.events.v1", pe | {"ts": 1748812500123}, "ts", "wrong unit")


def test_bytes_and_maps() -> None:
    dl = dict(EXAMPLES["deadletter.v1"])
    assert parse_json_record("deadletter.v1", dl)["value"] == b'{"vin": 1'
    _reject("deadletter.v1", dl | {"value": "not base64!"}, "value", "base64")
    alert = dict(EXAMPLES["alerts.v1"])
    _reject("alerts.v1", alert | {"labels": {"a": 1}}, "labels", "['a']", "expected string")
    _reject("alerts.v1", alert | {"labels": ["a"]}, "labels", "expected object")


def test_to_json_record_formats() -> None:
    r = parse_json_record(TEL, EXAMPLES[TEL])
    out = to_json_record(TEL, r)
    assert out["ts"] == "2025-06-01T21:15:00.250Z"
    assert out["scheduled_departure"] == "2025-06-02T07:30:00.000Z"
    assert out["soc_pct"] == 62.5 and r["ts"] != out["ts"]  # input record untouched
    pe = to_json_record("power.events.v1", parse_json_record("power.events.v1", EXAMPLES["power.events.v1"]))
    assert pe["ts"] == "2025-06-01T21:15:00.123456Z"
    dl = to_json_record("deadletter.v1", {"value": b"\x00\xff", "key": None, "ts": 1748812500123})
    assert dl == {"value": "AP8=", "key": None, "ts": "2025-06-01T21:15:00.123Z"}


def test_validation_plan_is_built_once_per_topic() -> None:
    """Validation speed is measured in bench/bench_produce_consume.py; here: the per-topic plan (field
    list, converters) is cached, so a record costs only its own fields."""
    from streams.records import _validator_for

    _validator_for.cache_clear()
    for _ in range(50):
        parse_json_record(TEL, EXAMPLES[TEL])
    info = _validator_for.cache_info()
    assert info.misses == 1 and info.hits == 49
