"""JSON records <-> Avro-ready dicts, validated against the topic schema.

``parse_json_record`` is the gate for everything producers send as JSON lines: it rejects what the
Avro encoder would silently coerce or crash on, with a message naming the field. Validators are
compiled once per topic from the schema, so validation costs a few microseconds per record.
``to_json_record`` is the inverse for output: timestamps as ISO-8601 UTC with ``Z``, bytes as base64.

Hostile input gets a reason, never an exception other than ValidationError: values are quoted in messages
through a bounded repr (a field nested a thousand levels deep, a ten-thousand-digit integer), timestamps
are held to 2000..2100 whether ISO strings (any offset) or epoch integers, and the free-text fields of
``MAX_CHARS`` have a maximum length.
"""

from __future__ import annotations

import base64
import math
import reprlib
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import schemas
from streams.exceptions import ValidationError
from streams.topics import ACTIONS_TOPIC

__all__ = [
    "MAX_CHARS",
    "PRIVATE_TOPICS",
    "RANGES",
    "parse_json_record",
    "redact_unknown",
    "timestamp_fields",
    "to_json_record",
]

# Value ranges from the SPEC (inclusive; None = unbounded), by field name across all topics.
_PCT = (0.0, 100.0)
RANGES: dict[str, tuple[float | None, float | None]] = {
    "priority": (0, 9),
    "soc_pct": _PCT,
    "charge_limit_pct": _PCT,
    "min_soc_pct": _PCT,
    "battery_soc_pct": _PCT,
    "min_battery_soc_pct": _PCT,
    "reliability": (0.0, 1.0),
    "seq": (0, None),
    "est_duration_s": (0, None),
    "minutes_to_full": (0, None),
    "text_len": (0, None),
    "latency_ms": (0, None),
    "gens_online": (0, None),
    "load_mw": (0, None),
    "frequency_hz": (0, None),
    "voltage_pu": (0, None),
    "transfer_ms": (0, None),
    "capacity": (0, None),
    "running": (0, None),
    "attempt": (0, None),
    "source_partition": (0, None),
    "source_offset": (0, None),
    "line": (1, None),
}
# Maximum lengths (characters) of free-text fields, by topic; longer values are rejected (VALIDATION).
# The emulator's `keys` is a key combination and `error` a short message: anything longer is most likely
# typed text a runtime put in the wrong field, and typed text must never be carried (SPEC).
MAX_CHARS: dict[str, dict[str, int]] = {ACTIONS_TOPIC: {"keys": 64, "error": 1000}}
PRIVATE_TOPICS = frozenset({ACTIONS_TOPIC})
"""Topics whose text is never quoted in a rejection (which lands in the dead-letter topic, then ClickHouse):
messages say how long a text is, not what it says (``redact_unknown`` for the dead letter's value)."""
_QUOTE_TEXT: ContextVar[bool] = ContextVar("carnival_quote_text", default=True)
# Identifier fields that must not be empty strings (they key messages and joins).
_NON_EMPTY = {
    "vin",
    "task_id",
    "session_id",
    "site_id",
    "device_id",
    "assignment_id",
    "incident_id",
    "fingerprint",
    "tenant",
    "source_topic",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {"timestamp-millis": ("milliseconds", 1_000), "timestamp-micros": ("microseconds", 1_000_000)}
# Epoch integers outside 2000..2100 almost always mean a wrong unit (seconds, or micros for millis).
_TS_MIN = datetime(2000, 1, 1, tzinfo=UTC)
_TS_MAX = datetime(2100, 1, 1, tzinfo=UTC)
_INT_BOUNDS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_MISSING = object()


class _Invalid(Exception):
    """Internal: a value failed; the caller adds topic and field to the message."""


class _BoundedRepr(reprlib.Repr):
    """reprlib's depth- and width-limited repr, also for integers too long for ``repr`` (4300+ digits)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:
            return f"<integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = 60


def _short(value: Any) -> str:
    """A repr for messages: bounded in depth and width whatever ``value`` is (no RecursionError)."""
    if not (_QUOTE_TEXT.get() or value is None or type(value) in (bool, int, float)):
        return _placeholder(value)
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _got(value: Any) -> str:
    return f"got {type(value).__name__} {_short(value)}"


Validator = Callable[[Any], Any]


def _ranged(name: str, check: Validator) -> Validator:
    lo, hi = RANGES.get(name, (None, None))
    if lo is None and hi is None:
        return check

    def ranged(v: Any) -> Any:
        v = check(v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(
                f"{_short(v)} out of range [{'' if lo is None else lo}, {'' if hi is None else hi}]"
            )
        return v

    return ranged


def _from_epoch(value: int, per_second: int) -> datetime:
    """Exact epoch-integer -> UTC datetime (no float rounding)."""
    seconds, fraction = divmod(value, per_second)
    return _EPOCH + timedelta(seconds=seconds, microseconds=fraction * 1_000_000 // per_second)


def _timestamp(logical: str) -> Validator:
    unit, per_second = _UNITS[logical]
    label = f"epoch {unit}"

    def check(v: Any) -> datetime:
        if type(v) is str:
            try:
                dt = datetime.fromisoformat(v)
            except ValueError:
                raise _Invalid(f"expected ISO-8601 timestamp or {label}, got {_short(v)}") from None
            try:
                dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
            except OverflowError:  # an offset that moves year 1 or 9999 out of datetime's range
                raise _Invalid(f"{_short(v)} is outside 2000..2100 (UTC)") from None
            if not _TS_MIN <= dt < _TS_MAX:
                raise _Invalid(f"{_short(v)} is {dt.date().isoformat()} (UTC), outside 2000..2100")
            return dt
        if type(v) is int:
            try:
                dt = _from_epoch(v, per_second)
            except OverflowError:
                raise _Invalid(f"{_short(v)} as {label} is outside 2000..2100: wrong unit?") from None
            if not _TS_MIN <= dt < _TS_MAX:
                raise _Invalid(f"{v} as {label} is {dt.date().isoformat()}, outside 2000..2100: wrong unit?")
            return dt
        raise _Invalid(f"expected ISO-8601 string or {label} integer, {_got(v)}")

    return check


def _primitive(type_name: str, name: str) -> Validator:
    if type_name == "string":
        non_empty = name in _NON_EMPTY

        def string(v: Any) -> str:
            if type(v) is not str:
                raise _Invalid(f"expected string, {_got(v)}")
            if non_empty and not v:
                raise _Invalid("must not be empty")
            return v

        return string
    if type_name == "boolean":

        def boolean(v: Any) -> bool:
            if type(v) is not bool:
                raise _Invalid(f"expected boolean, {_got(v)}")
            return v  # type: ignore[no-any-return]

        return boolean
    if type_name in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[type_name]

        def integer(v: Any) -> int:
            if type(v) is not int:
                raise _Invalid(f"expected integer ({type_name}), {_got(v)}")
            if not lo <= v <= hi:
                raise _Invalid(f"{_short(v)} does not fit an Avro {type_name}")
            return v

        return _ranged(name, integer)
    if type_name in ("double", "float"):

        def number(v: Any) -> float:
            t = type(v)
            if t is float:
                if not math.isfinite(v):
                    raise _Invalid(f"expected a finite number, got {v!r}")
                return v  # type: ignore[no-any-return]
            if t is int:
                try:
                    return float(v)
                except OverflowError:
                    raise _Invalid(f"{_short(v)} is too large for a double") from None
            raise _Invalid(f"expected number, {_got(v)}")

        return _ranged(name, number)
    if type_name == "bytes":

        def b64(v: Any) -> bytes:
            if type(v) is not str:
                raise _Invalid(f"expected base64 string, {_got(v)}")
            try:
                return base64.b64decode(v, validate=True)
            except ValueError as exc:  # binascii.Error, or a non-ASCII character in the text
                raise _Invalid(f"invalid base64: {exc}") from None

        return b64
    if type_name == "null":

        def null(v: Any) -> None:
            if v is not None:
                raise _Invalid(f"expected null, {_got(v)}")

        return null
    raise TypeError(f"unsupported Avro type {type_name!r} for field {name!r}")


def _validator(schema: Any, name: str, named: dict[str, Any]) -> Validator:
    """Compile one field type into a validating converter."""
    if isinstance(schema, str):
        if schema in named:
            return _validator(named[schema], name, named)
        return _primitive(schema, name)
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if len(branches) != 1 or len(schema) > 2:
            raise TypeError(f'only ["null", X] unions are supported (field {name!r})')
        inner = _validator(branches[0], name, named)
        return lambda v: None if v is None else inner(v)
    t = schema["type"]
    if isinstance(t, (dict, list)):
        return _validator(t, name, named)
    if schema.get("logicalType") in _UNITS:
        return _timestamp(schema["logicalType"])
    if t == "enum":
        full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', '')}.{schema['name']}"
        named[full] = named[schema["name"].rpartition(".")[2]] = schema
        symbols = frozenset(schema["symbols"])
        allowed = ", ".join(schema["symbols"])

        def enum(v: Any) -> str:
            if type(v) is not str or v not in symbols:
                raise _Invalid(f"{_short(v)} is not one of {allowed}")
            return v  # type: ignore[no-any-return]

        return enum
    if t == "map":
        values = _validator(schema["values"], name, named)

        def mapping(v: Any) -> dict[str, Any]:
            if type(v) is not dict:
                raise _Invalid(f"expected object, {_got(v)}")
            out = {}
            for k, item in v.items():
                try:
                    out[k] = values(item)
                except _Invalid as exc:
                    raise _Invalid(f"[{_short(k)}]: {exc}") from None
            return out

        return mapping
    if t == "array":
        items = _validator(schema["items"], name, named)

        def array(v: Any) -> list[Any]:
            if type(v) is not list:
                raise _Invalid(f"expected array, {_got(v)}")
            return [items(i) for i in v]

        return array
    if t == "record":
        raise TypeError(f"nested records are not supported (field {name!r})")
    return _primitive(t, name)


class _TopicValidator:
    """Compiled per-topic validator: field specs in schema order."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        raw = schemas.raw_schema_for(topic)
        named: dict[str, Any] = {}
        self.fields: list[tuple[str, Validator, Any]] = []  # (name, validator, default or _MISSING)
        limits = MAX_CHARS.get(topic, {})
        for f in raw["fields"]:
            default = f.get("default", _MISSING)
            check = _validator(f["type"], f["name"], named)
            if f["name"] in limits:
                check = _limited(check, limits[f["name"]])
            self.fields.append((f["name"], check, default))
        self.names = frozenset(n for n, _, _ in self.fields)
        self.checks = {n: check for n, check, _ in self.fields}
        self.required = [n for n, _, d in self.fields if d is _MISSING]

    def __call__(self, obj: dict[str, Any]) -> dict[str, Any]:
        if type(obj) is not dict:
            raise ValidationError(f"{self.topic}: expected a JSON object, {_got(obj)}", kind="MALFORMED_JSON")
        out: dict[str, Any] = {}
        seen = 0
        for name, check, default in self.fields:
            v = obj.get(name, _MISSING)
            if v is _MISSING or v is None:
                if v is None:
                    seen += 1
                if default is _MISSING:
                    if v is None:
                        raise ValidationError(f"{self.topic}: field '{name}' must not be null", name)
                    raise ValidationError(f"{self.topic}: missing required field '{name}'", name)
                out[name] = dict(default) if type(default) is dict else default
                continue
            seen += 1
            try:
                out[name] = check(v)
            except _Invalid as exc:
                raise ValidationError(f"{self.topic}: field '{name}': {exc}", name) from None
        if seen != len(obj):
            extra = sorted(k for k in obj if k not in self.names)
            shown = ", ".join(map(_short, extra[:5])) + (
                f" and {len(extra) - 5} more" if len(extra) > 5 else ""
            )
            raise ValidationError(
                f"{self.topic}: unknown field(s) {shown}; allowed: {', '.join(n for n, _, _ in self.fields)}",
                extra[0][:255] if extra else None,
            )
        return out


def _limited(check: Validator, limit: int) -> Validator:
    def limited(v: Any) -> Any:
        v = check(v)
        if v is not None and len(v) > limit:
            raise _Invalid(f"{len(v)} characters, at most {limit}")
        return v

    return limited


@cache
def _validator_for(topic: str) -> _TopicValidator:
    return _TopicValidator(topic)


def parse_json_record(topic: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Validate a decoded JSON object against ``topic``'s schema and return the Avro-ready record.

    The result has every schema field (defaults filled), numbers as int/float per the schema and
    timestamps as timezone-aware UTC datetimes. Raises ValidationError naming the field.
    """
    try:
        validate = _validator_for(topic)
    except KeyError as exc:
        raise ValidationError(str(exc.args[0])) from None
    if topic not in PRIVATE_TOPICS:
        return validate(obj)
    token = _QUOTE_TEXT.set(False)
    try:
        return validate(obj)
    finally:
        _QUOTE_TEXT.reset(token)


def redact_unknown(topic: str, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as it may be kept in a dead letter of a private topic: every field name stays, and so does
    every value that is valid for its field; any other value (a field outside the schema, a text over its
    ``MAX_CHARS`` limit, a text where a number belongs) becomes a placeholder like ``"<redacted 34 chars>"``:
    text a runtime put where it does not belong is not kept."""
    checks = _validator_for(topic).checks
    token = _QUOTE_TEXT.set(False)
    try:
        return {
            name: value if _valid(checks.get(name), value) else _placeholder(value)
            for name, value in obj.items()
        }
    finally:
        _QUOTE_TEXT.reset(token)


def _valid(check: Validator | None, value: Any) -> bool:
    if check is None:
        return False
    if value is None:
        return True
    try:
        check(value)
    except _Invalid:
        return False
    return True


def _placeholder(value: Any) -> str:
    if type(value) is str:
        return f"<redacted {len(value)} chars>"
    kind = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}
    return f"<redacted {kind.get(type(value), 'null' if value is None else type(value).__name__)}>"


@cache
def timestamp_fields(topic: str) -> tuple[str, ...]:
    """The fields of ``topic`` that hold timestamps (any logical timestamp type, nullable or not)."""
    return tuple(f["name"] for f in schemas.raw_schema_for(topic)["fields"] if _is_timestamp(f["type"]))


def _is_timestamp(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(_is_timestamp(branch) for branch in schema)
    return isinstance(schema, dict) and schema.get("logicalType") in _UNITS


# -- output -------------------------------------------------------------------------------------


def _ts_formatter(logical: str) -> Callable[[Any], str | int]:
    unit, per_second = _UNITS[logical]
    spec = unit  # isoformat timespec: "milliseconds" / "microseconds"

    cache: dict[int, str] = {}  # whole second -> "YYYY-MM-DDTHH:MM:SS"; telemetry clusters in seconds
    width = 3 if per_second == 1000 else 6

    def fmt(v: Any) -> str | int:
        if type(v) is int:
            seconds, fraction = divmod(v, per_second)
            head = cache.get(seconds)
            if head is None:
                try:
                    dt = _EPOCH + timedelta(seconds=seconds)
                except OverflowError:
                    return v  # before year 1 or after 9999: no ISO form; the raw epoch integer is shown
                if len(cache) > 100_000:
                    cache.clear()
                head = cache[seconds] = dt.replace(tzinfo=None).isoformat(timespec="seconds")
            return f"{head}.{fraction:0{width}d}Z"
        if v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        return v.isoformat(timespec=spec) + "Z"  # type: ignore[no-any-return]

    return fmt


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode("ascii")


def _output_converter(schema: Any) -> Callable[[Any], Any] | None:
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return _output_converter(branches[0]) if len(branches) == 1 else None
    if isinstance(schema, dict):
        if schema.get("logicalType") in _UNITS:
            return _ts_formatter(schema["logicalType"])
        t = schema["type"]
        return _output_converter(t) if isinstance(t, (dict, list)) else _output_converter(t)
    return _b64 if schema == "bytes" else None


@cache
def _output_plan(topic: str) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    plan = []
    for f in schemas.raw_schema_for(topic)["fields"]:
        conv = _output_converter(f["type"])
        if conv is not None:
            plan.append((f["name"], conv))
    return tuple(plan)


def to_json_record(topic: str, record: dict[str, Any]) -> dict[str, Any]:
    """A record as a JSON-ready dict: timestamps ISO-8601 UTC with ``Z``, bytes base64; rest as is.

    A timestamp (epoch integer) beyond what an ISO date can say (before year 1, after 9999) stays the
    raw integer in its field's unit: a JSON number where every other timestamp is a string."""
    out = dict(record)
    for name, conv in _output_plan(topic):
        v = out.get(name)
        if v is not None:
            out[name] = conv(v)
    return out
