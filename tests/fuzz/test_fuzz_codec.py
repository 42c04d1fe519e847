"""Fuzz the codec paths a producer or a topic can feed anything to: JSON validation (`carnival produce`),
Avro decoding, and consume's JSON formatting.

The properties: nothing raises but the project's own exceptions (streams/exceptions.py), and every rejection
has a kind and a reason (and a dead letter, on the produce path). Two kinds of generators, both seeded so a
run is repeatable: hypothesis strategies (derandomized; they shrink a failure to a small example) and a
seeded bulk mutator for volume. ``CARNIVAL_FUZZ_EXAMPLES`` (default 150) is the number of hypothesis
examples per property; each bulk test runs 60 times as many cases. By default: 6 properties x 150 + 3 bulk
tests x 9000 = 27,900 cases.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from schemas import TOPICS
from schemas.examples import EXAMPLES
from streams import deadletter
from streams.avro_json import compile_json_line
from streams.consume import consume_json_lines
from streams.exceptions import SerializationError, ValidationError
from streams.produce import produce_json_lines
from streams.records import parse_json_record, to_json_record
from streams.serde import AvroSerde
from streams.topics import key_field

EXAMPLES_PER_PROPERTY = int(os.environ.get("CARNIVAL_FUZZ_EXAMPLES", "150"))
BULK_CASES = 60 * EXAMPLES_PER_PROPERTY
FUZZ = settings(
    max_examples=EXAMPLES_PER_PROPERTY,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
TOPIC_NAMES = sorted(TOPICS)
KINDS = {v for k, v in vars(deadletter).items() if isinstance(v, str) and k == v}  # the error kind constants
NOW_MS = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)
SERDE = AvroSerde()
RAW_SERDE = AvroSerde(raw_timestamps=True)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

EXTREME_NUMBERS: list[Any] = [
    0, -1, 1, 2**31, 2**31 - 1, -(2**31) - 1, 2**53 + 1, 2**62, 2**63, 2**63 - 1, -(2**63) - 1, 2**64, 10**40,
    -(10**400), 10**4000, 0.0, -0.0, 5e-324, 1.7976931348623157e308,
    float("nan"), float("inf"), float("-inf"),
    946684799999, 946684800000, 4102444799999, 4102444800000, 1748812500123, 1748812500123456, 1.5e12,
]  # fmt: skip
HUGE = 10**5000  # repr() refuses it (4300+ digits): bulk only, hypothesis could not print a failing example
EXTREME_TEXTS: list[str] = [
    "", " ", "é", "🚗", "\x00", "ＡＢＣ", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
    "2025-06-01T21:15:00Z", "3000-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "2025-13-45", "NaN", "Infinity",
    "P", "HW4", "CHARGING", "KEY", "FIRING", "AAAA", "déjà vu", "x" * 5000, "\u202e", "\\", '"',
]  # fmt: skip


# -- the JSON validation path: hypothesis -------------------------------------------------------------------
numbers = st.one_of(st.integers(), st.floats(), st.sampled_from(EXTREME_NUMBERS))
texts = st.one_of(st.text(max_size=20), st.sampled_from(EXTREME_TEXTS))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


deep_values = st.builds(_nested, st.integers(min_value=500, max_value=1020), scalars)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A topic's example record with a few fields replaced, removed or added."""
    topic = draw(st.sampled_from(TOPIC_NAMES))
    obj = dict(EXAMPLES[topic])
    names = sorted(obj)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["replace", "replace", "deep", "drop", "add"]))
        name = draw(st.sampled_from(names))
        if action == "replace":
            obj[name] = draw(json_values)
        elif action == "deep":
            obj[name] = draw(deep_values)
        elif action == "drop":
            obj.pop(name, None)
        else:
            obj[draw(texts)] = draw(json_values)
    return topic, obj


def _validate(topic: str, obj: Any) -> None:
    try:
        record = parse_json_record(topic, obj)
    except ValidationError as exc:
        assert exc.kind in ("VALIDATION", "MALFORMED_JSON") and exc.message, exc
        return
    try:  # what validation accepts, the encoder encodes (or refuses with its own error)
        SERDE.encode(topic, record)
    except SerializationError as exc:
        assert exc.kind == "ENCODE" and exc.message


@FUZZ
@given(st.sampled_from(TOPIC_NAMES), st.dictionaries(texts, json_values, max_size=6) | json_values)
def test_random_json_values_are_validated_or_rejected_with_a_reason(topic: str, obj: Any) -> None:
    _validate(topic, obj)


@FUZZ
@given(near_valid())
def test_near_valid_records_are_validated_or_rejected_with_a_reason(case: tuple[str, dict[str, Any]]) -> None:
    _validate(*case)


# -- the produce path (bytes in): hypothesis and bulk -------------------------------------------------------
class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        self.sent.append((topic, value))


def _line(obj: Any) -> bytes:
    """As a hand-written file would have it: stdlib JSON (NaN/Infinity literals, integers of any length)."""
    try:
        return json.dumps(obj, ensure_ascii=False).encode()
    except RecursionError:  # deeper than json.dumps goes (orjson reads at most 1024 levels anyway)
        return b'{"vin": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    except ValueError:  # an integer of more than 4300 digits
        return b'{"vin": ' + b"9" * 5000 + b"}"


def _damaged(rng: random.Random, raw: bytes) -> bytes:
    """A cut, an inserted byte or a flipped byte (or the line as it is)."""
    if not raw or rng.random() < 0.4:
        return raw
    at = rng.randrange(len(raw))
    op = rng.choice(["cut", "insert", "flip"])
    if op == "cut":
        return raw[:at]
    if op == "insert":
        return raw[:at] + rng.randbytes(rng.randint(1, 3)) + raw[at:]
    return raw[:at] + bytes([raw[at] ^ (1 << rng.randrange(8))]) + raw[at + 1 :]


def _check_produce(topic: str, lines: list[bytes]) -> int:
    producer = _Producer()
    summary = produce_json_lines(topic, lines, producer, SERDE, now_ms=lambda: NOW_MS)
    assert summary.read == summary.produced + summary.rejected == sum(1 for line in lines if line.strip())
    assert all(r.kind in KINDS and r.reason for r in summary.rejections)
    dead = [SERDE.decode("deadletter.v1", v) for t, v in producer.sent if t == "deadletter.v1"]
    assert len(dead) == summary.rejected + (summary.produced if topic == "deadletter.v1" else 0)
    by_line = {(d["line"], d["error_kind"]): d for d in dead}
    assert all(by_line[(r.line, r.kind)]["error"] for r in summary.rejections)  # one dead letter, with why
    return summary.read


@FUZZ
@given(near_valid(), st.randoms(use_true_random=False), st.binary(max_size=30))
def test_produce_rejects_every_bad_line_with_a_kind_a_reason_and_a_dead_letter(
    case: tuple[str, dict[str, Any]], rng: random.Random, noise: bytes
) -> None:
    topic, obj = case
    _check_produce(topic, [_line(EXAMPLES[topic]), _damaged(rng, _line(obj)), noise])


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice([*EXTREME_NUMBERS, HUGE])
    if roll < 0.55:
        return rng.choice(EXTREME_TEXTS)
    if roll < 0.65:
        return (
            "".join(chr(rng.randrange(1, 0x10FFFF)) for _ in range(rng.randint(0, 8)))
            .encode("utf-8", "replace")
            .decode("utf-8", "replace")
        )
    if roll < 0.75:
        return rng.choice([None, True, False])
    if roll < 0.8:
        return _nested(rng.randint(900, 1100), None)
    if depth > 3:
        return None
    if roll < 0.9:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(EXTREME_TEXTS[:12]): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _mutated_example(rng: random.Random, topic: str) -> dict[str, Any]:
    obj = dict(EXAMPLES[topic])
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(sorted(EXAMPLES[topic]))
        op = rng.random()
        if op < 0.7:
            obj[name] = _random_value(rng)
        elif op < 0.85:
            obj.pop(name, None)
        else:
            obj[rng.choice(EXTREME_TEXTS)] = _random_value(rng)
    return obj


def test_bulk_mutated_lines_through_produce() -> None:
    rng = random.Random(11)
    cases = 0
    while cases < BULK_CASES:
        topic = rng.choice(TOPIC_NAMES)
        lines = [_damaged(rng, _line(_mutated_example(rng, topic))) for _ in range(50)]
        cases += _check_produce(topic, lines)
    assert cases >= BULK_CASES


# -- the produce fast path (streams/json_plan.py) agrees with the slow path -------------------------------
def _slow_path(topic: str, raw: bytes) -> tuple[bytes, str | None, int | None] | None:
    """What validation + encoding make of a line (None: refused), with the key and the ts in ms."""
    try:
        obj = orjson.loads(raw)
        record = parse_json_record(topic, obj)
        value = SERDE.encode(topic, record)
    except (orjson.JSONDecodeError, ValidationError, SerializationError):
        return None
    key = record[key_field(topic)]
    ts = record.get("ts")
    ms = (ts - EPOCH) // timedelta(milliseconds=1) if isinstance(ts, datetime) else None
    return value, None if key is None else str(key), ms


def _check_plan_agrees(topic: str, raw: bytes) -> bool:
    """The fast path takes a line only if the slow path does, and then gives the very same bytes."""
    plan = SERDE.json_plan(topic)
    fast = None if plan is None else plan(raw)
    if fast is not None:
        assert fast == _slow_path(topic, raw), raw[:300]
    return fast is not None


@FUZZ
@given(near_valid())
def test_fast_path_takes_only_what_the_slow_path_takes_and_encodes_it_the_same(
    case: tuple[str, dict[str, Any]],
) -> None:
    topic, obj = case
    _check_plan_agrees(topic, _line(obj))


def test_bulk_mutated_lines_fast_path_agrees_with_the_slow_path() -> None:
    rng = random.Random(12)
    taken = 0
    for i in range(BULK_CASES):
        topic = TOPIC_NAMES[i % len(TOPIC_NAMES)]
        obj = _mutated_example(rng, topic) if i % 3 else dict(EXAMPLES[topic])
        taken += _check_plan_agrees(topic, _damaged(rng, _line(obj)))
    assert taken > BULK_CASES // 10  # the fast path is exercised, not just refused


# -- the Avro decode path -----------------------------------------------------------------------------------
@dataclass
class _Msg:
    data: bytes | None

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self.data

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


class _Consumer:
    """Hands over the given values as one batch (a fake: no broker in the fuzz suite)."""

    def __init__(self, values: list[bytes | None]) -> None:
        self.batches = [[_Msg(v) for v in values]]

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def assign(self, partitions: list[Any]) -> None:
        pass

    def consume(self, n: int, timeout: float) -> list[_Msg]:
        return self.batches.pop(0) if self.batches else []


def _consume(topic: str, values: list[bytes | None]) -> tuple[list[Any], list[str]]:
    out, errors = io.BytesIO(), []
    summary = consume_json_lines(
        _Consumer(values), topic, RAW_SERDE, out, from_beginning=True, timeout_s=0,  # type: ignore[arg-type]
        on_error=errors.append,
    )  # fmt: skip
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert summary.records == len(rows) and summary.records + summary.undecodable == len(values)
    assert len([e for e in errors if "raw epoch integer" not in e]) == summary.undecodable  # one line each
    assert all(errors)
    return rows, errors


def _decode(topic: str, data: bytes) -> None:
    for serde in (SERDE, RAW_SERDE):
        try:
            serde.decode(topic, data)
        except SerializationError as exc:
            assert exc.kind in ("UNKNOWN_FINGERPRINT", "DECODE", "BAD_MAGIC") and exc.message


def _valid_encoding(topic: str) -> bytes:
    return SERDE.encode(topic, parse_json_record(topic, EXAMPLES[topic]))


@FUZZ
@given(st.sampled_from(TOPIC_NAMES), st.binary(max_size=200))
def test_random_bytes_decode_or_raise_serialization_errors(topic: str, data: bytes) -> None:
    candidates = [data, _valid_encoding(topic)[:10] + data]  # random framing; a known writer, a random body
    for candidate in candidates:
        _decode(topic, candidate)
    _consume(topic, [*candidates, None])


def _mutated_bytes(rng: random.Random, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        at = rng.randrange(len(data))
        op = rng.random()
        if op < 0.6:
            data[at] = rng.randrange(256)
        elif op < 0.8:
            del data[at:]
        else:
            data[at:at] = rng.randbytes(rng.randint(1, 9))
    return bytes(data)


@FUZZ
@given(st.sampled_from(TOPIC_NAMES), st.randoms(use_true_random=False))
def test_mutated_valid_encodings_decode_or_raise_serialization_errors(topic: str, rng: random.Random) -> None:
    data = _mutated_bytes(rng, _valid_encoding(topic))
    _decode(topic, data)
    _consume(topic, [data])


def test_bulk_mutated_encodings_through_decode_and_consume() -> None:
    rng = random.Random(12)
    valid = {topic: _valid_encoding(topic) for topic in TOPIC_NAMES}
    for start in range(0, BULK_CASES, 100):
        topic = TOPIC_NAMES[start // 100 % len(TOPIC_NAMES)]
        batch = [_mutated_bytes(rng, valid[topic]) for _ in range(100)]
        for data in batch:
            _decode(topic, data)
        _consume(topic, list(batch))


# -- the consume fast path (streams/avro_json.py) agrees with the slow path -------------------------------
FAST_LINES = {t: compile_json_line(t) for t in TOPIC_NAMES if t != "alerts.v1"}  # alerts: a map, slow only


def _check_line_agrees(topic: str, data: bytes) -> bool:
    """The fast path writes a line only for bytes the slow path decodes, and the very same line."""
    fast = FAST_LINES[topic](data) if topic in FAST_LINES else None
    if fast is not None:
        assert fast == orjson.dumps(to_json_record(topic, RAW_SERDE.decode(topic, data))), data
    return fast is not None


def test_bulk_mutated_encodings_fast_path_agrees_with_the_slow_path() -> None:
    rng = random.Random(14)
    valid = {topic: _valid_encoding(topic) for topic in TOPIC_NAMES}
    taken = 0
    for i in range(BULK_CASES):
        topic = TOPIC_NAMES[i % len(TOPIC_NAMES)]
        taken += _check_line_agrees(topic, _mutated_bytes(rng, valid[topic]) if i % 4 else valid[topic])
    assert taken > BULK_CASES // 5


def test_bulk_extreme_records_fast_path_agrees_with_the_slow_path() -> None:
    rng = random.Random(15)
    taken = 0
    for i in range(BULK_CASES):
        topic = TOPIC_NAMES[i % len(TOPIC_NAMES)]
        taken += _check_line_agrees(topic, SERDE.encode(topic, _extreme_record(rng, topic)))
    assert taken > BULK_CASES // 5  # a timestamp beyond years 1..9999 (common here) is the slow path


# -- the consume formatting path: valid records with extreme values ---------------------------------------
INT32, INT64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
DOUBLES = [0.0, -0.0, 5e-324, -1.7976931348623157e308, float("nan"), float("inf"), float("-inf"), 1e-300]


def _extreme(rng: random.Random, schema: Any, named: dict[str, Any]) -> Any:
    """A valid Avro datum of ``schema`` with extreme values (timestamps as raw epoch integers)."""
    if isinstance(schema, list):
        return _extreme(rng, rng.choice(schema), named)
    if isinstance(schema, str) and schema.rpartition(".")[2] in named:  # a named type used again
        return _extreme(rng, named[schema.rpartition(".")[2]], named)
    if isinstance(schema, dict):
        t = schema["type"]
        if t == "enum":
            return rng.choice(schema["symbols"])
        if t == "map":
            return {_text(rng): _extreme(rng, schema["values"], named) for _ in range(rng.randint(0, 3))}
        if t == "array":
            return [_extreme(rng, schema["items"], named) for _ in range(rng.randint(0, 2))]
        return _extreme(rng, t, named)
    if schema == "null":
        return None
    if schema == "boolean":
        return rng.random() < 0.5
    if schema in ("int", "long"):
        lo, hi = INT32 if schema == "int" else INT64
        return rng.choice([lo, hi, 0, -1, rng.randint(lo, hi)])
    if schema in ("float", "double"):
        return rng.choice([*DOUBLES, rng.uniform(-1e308, 1e308)])
    if schema == "string":
        return _text(rng)
    if schema == "bytes":
        return rng.randbytes(rng.randint(0, 30))
    raise AssertionError(f"unexpected Avro type {schema!r}")


def _text(rng: random.Random) -> str:
    # Any code point but lone surrogates (Avro strings are UTF-8)
    chars = (chr(rng.choice([rng.randrange(0, 0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(8))
    return rng.choice(["", "".join(chars), rng.choice(EXTREME_TEXTS)])


def _named_types(schema: Any, named: dict[str, Any]) -> dict[str, Any]:
    """Every enum defined in ``schema`` by its short name: a later field may refer to it by name."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, named)
    elif isinstance(schema, dict):
        if schema.get("type") == "enum":
            named[schema["name"].rpartition(".")[2]] = schema
        for key in ("type", "items", "values", "fields"):
            if key in schema and not isinstance(schema[key], str):
                _named_types(schema[key] if key != "fields" else [f["type"] for f in schema[key]], named)
    return named


def _extreme_record(rng: random.Random, topic: str) -> dict[str, Any]:
    raw = schemas.raw_schema_for(topic)
    named = _named_types(raw, {})
    return {f["name"]: _extreme(rng, f["type"], named) for f in raw["fields"]}


def _check_formatted(topic: str, records: list[dict[str, Any]]) -> None:
    encoded = [SERDE.encode(topic, record) for record in records]
    rows, errors = _consume(topic, list(encoded))
    assert len(rows) == len(records), errors  # valid Avro is always written
    for data, row in zip(encoded, rows, strict=True):
        assert orjson.loads(orjson.dumps(to_json_record(topic, RAW_SERDE.decode(topic, data)))) == row


@FUZZ
@given(st.sampled_from(TOPIC_NAMES), st.randoms(use_true_random=False))
def test_valid_records_with_extreme_values_are_always_written_as_json(topic: str, rng: random.Random) -> None:
    _check_formatted(topic, [_extreme_record(rng, topic)])


def test_bulk_extreme_records_through_consume() -> None:
    rng = random.Random(13)
    for start in range(0, BULK_CASES, 100):
        topic = TOPIC_NAMES[start // 100 % len(TOPIC_NAMES)]
        _check_formatted(topic, [_extreme_record(rng, topic) for _ in range(100)])


@pytest.mark.parametrize("topic", TOPIC_NAMES)
def test_the_fuzzed_examples_are_valid(topic: str) -> None:
    """The near-valid strategy starts from records that do validate."""
    parse_json_record(topic, EXAMPLES[topic])
