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


# -- hostile input: a reason, never another exception (issue 11) -------------------------------------------
def test_a_field_nested_a_thousand_deep_is_a_validation_error() -> None:
    deep = orjson.loads(b"[" * 1000 + b"]" * 1000)  # orjson parses up to 1024 levels
    _reject(TEL, _tel(vin=deep), "vin", "expected string, got list")
    _reject("alerts.v1", dict(EXAMPLES["alerts.v1"]) | {"labels": {"a": deep}}, "labels", "expected string")


def test_integers_too_long_to_print_or_to_convert_are_validation_errors() -> None:
    huge = 10**5000  # repr() refuses more than 4300 digits; float() overflows
    _reject(TEL, _tel(soc_pct=huge), "soc_pct", "too large for a double")
    _reject("tasks.requests.v1", dict(EXAMPLES["tasks.requests.v1"]) | {"priority": huge}, "priority", "bits")
    _reject(TEL, _tel(ts=huge), "ts", "outside 2000..2100")
    _reject(TEL, _tel(vin=[huge]), "vin", "expected string")


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+01:00",  # astimezone(UTC) overflows below year 1
        "9999-12-31T23:59:59-01:00",  # and above year 9999
        "0001-01-01T00:00:00",
        "1999-12-31T23:59:59.999Z",
        "2100-01-01T00:00:00Z",
        "3000-01-01T00:00:00Z",
    ],
)
def test_iso_timestamps_have_the_epoch_integers_bounds(value: str) -> None:
    _reject(TEL, _tel(ts=value), "ts", "outside 2000..2100")


def test_timestamp_bounds_are_the_same_for_both_forms() -> None:
    for iso, epoch_ms in [
        ("2000-01-01T00:00:00Z", 946684800000),
        ("2099-12-31T23:59:59.999Z", 4102444799999),
    ]:
        assert parse_json_record(TEL, _tel(ts=iso))["ts"] == parse_json_record(TEL, _tel(ts=epoch_ms))["ts"]
    _reject(TEL, _tel(ts=946684799999), "ts", "outside 2000..2100")
    _reject(TEL, _tel(ts="1999-12-31T23:59:59.999Z"), "ts", "outside 2000..2100")


def test_non_ascii_text_in_a_bytes_field_is_a_validation_error() -> None:
    dl = dict(EXAMPLES["deadletter.v1"])
    _reject("deadletter.v1", dl | {"value": "é"}, "value", "invalid base64", "ASCII")


ACTIONS = "emulator.actions.v1"


def test_emulator_keys_and_error_have_maximum_lengths() -> None:
    action = dict(EXAMPLES[ACTIONS])
    assert parse_json_record(ACTIONS, action | {"keys": "k" * 64, "error": "e" * 1000})["keys"] == "k" * 64
    _reject(ACTIONS, action | {"keys": "k" * 65}, "keys", "65 characters, at most 64")
    _reject(ACTIONS, action | {"error": "e" * 1001}, "error", "1001 characters, at most 1000")


def test_emulator_rejections_never_quote_text() -> None:
    action = dict(EXAMPLES[ACTIONS])
    secret = "my password is hunter2"
    for bad in ({"text_len": secret}, {"action": secret}, {"x": [secret]}, {"typed": secret}):
        with pytest.raises(ValidationError) as exc:
            parse_json_record(ACTIONS, action | bad)
        assert "hunter2" not in str(exc.value), str(exc.value)
    _reject(ACTIONS, action | {"text_len": secret}, "text_len", f"<redacted {len(secret)} chars>")
    # other topics still quote what they reject
    _reject(TEL, _tel(hw="HW9"), "hw", "'HW9'")


def test_redact_unknown_keeps_field_names_and_drops_out_of_schema_text() -> None:
    from streams.records import redact_unknown

    action = dict(EXAMPLES[ACTIONS])
    obj = action | {"unknown_field": "x" * 34, "keys": "k" * 65, "nested": {"a": "b"}, "extra_n": 5}
    out = redact_unknown(ACTIONS, obj)
    assert list(out) == list(obj)
    assert out["unknown_field"] == "<redacted 34 chars>"
    assert out["keys"] == "<redacted 65 chars>"
    assert out["nested"] == "<redacted object>" and out["extra_n"] == "<redacted number>"
    assert all(out[k] == action[k] for k in action if k != "keys")


def test_timestamps_no_iso_date_can_hold_are_written_as_raw_integers() -> None:
    out = to_json_record(TEL, {"ts": 2**62, "scheduled_departure": -(2**62)})
    assert out == {"ts": 2**62, "scheduled_departure": -(2**62)}
    pe = to_json_record("power.events.v1", {"ts": 2**63 - 1})
    assert pe["ts"] == 2**63 - 1
    # years 1..999 are real ISO dates with four digits
    assert to_json_record(TEL, {"ts": -62135596800000})["ts"] == "0001-01-01T00:00:00.000Z"
