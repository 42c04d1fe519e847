"""JSON line -> validated single-object Avro in one generated function per topic: the fast path of
``carnival produce``.

``records.parse_json_record`` then ``AvroSerde.encode`` cost about 25 us per telemetry line: a validator
call per field, a dict built, datetimes made and taken apart again, then the encoder's own walk. The plan
generated here does the same checks inline, in schema order, and appends each field's encoding as it
goes: no intermediate record, no datetime for an epoch-integer timestamp.

It is a fast path, never a second opinion: it says yes only to a line both steps would take, and then
writes the very bytes they would (tests compare both on valid and hostile input). Anything else (a
missing required field, a wrong type, a value out of range, an ISO timestamp it cannot settle, any
exception) returns None and the caller runs the slow path, which gives the rejection its kind, reason and
line number exactly as before. So the plan never needs to say why.

Shapes: strings, booleans, ints, longs, floats, doubles, bytes (base64), enums, timestamps, and
``["null", X]`` unions of these; a topic with another shape (maps, arrays) gets no plan.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

import schemas
from streams.avro_codegen import CodeBuilder, zigzag
from streams.records import _NON_EMPTY, _TS_MAX, _TS_MIN, MAX_CHARS, RANGES
from streams.topics import key_field

__all__ = ["JsonPlan", "compile_json_plan"]

# raw JSON line -> (value bytes, key, event time in ms of the "ts" field or None), or None: slow path.
JsonPlan = Callable[[bytes], tuple[bytes, str | None, int | None] | None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PER_SECOND = {"timestamp-millis": 1_000, "timestamp-micros": 1_000_000}
_UNIT = {"timestamp-millis": timedelta(milliseconds=1), "timestamp-micros": timedelta(microseconds=1)}
_INT_BOUNDS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_LEN1 = tuple(bytes((n * 2,)) for n in range(64))  # the length prefix of a string under 64 bytes


class _Unsupported(TypeError):
    """A field shape the plan does not generate code for: the topic has no plan."""


class _Gen(CodeBuilder):
    def __init__(self) -> None:
        super().__init__(
            {
                "_loads": orjson.loads,
                "_z": zigzag,
                "_L1": _LEN1,
                "_d": struct.Struct("<d").pack,
                "_f": struct.Struct("<f").pack,
                "_bd": struct.Struct("<Bd").pack,  # a union's branch byte and a double in one call
                "_bf": struct.Struct("<Bf").pack,
                "_isfinite": math.isfinite,
                "_iso": datetime.fromisoformat,
                "_b64": base64.b64decode,
                "_UTC": UTC,
                "_EPOCH": _EPOCH,
                "_TS_MIN": _TS_MIN,
                "_TS_MAX": _TS_MAX,
                "_M": object(),  # a missing field
            }
        )
        self.ts_divisor: int | None = None  # set by the last timestamp emitted: its unit per millisecond

    def value(self, t: Any, field: str, var: str, ind: str, named: dict[str, Any], branch: int = -1) -> None:
        """Code that checks the non-null ``var`` (of Avro type ``t``) as the validator would and appends
        its encoding to ``o``; ``return None`` wherever the validator would refuse it. ``branch``: the
        union branch index byte to write first (-1: not in a union)."""
        if isinstance(t, str) and t in named:
            t = named[t]
        if isinstance(t, list):
            branches = [b for b in t if b != "null"]
            if len(t) != 2 or len(branches) != 1:
                raise _Unsupported(f"union {t}")
            self.value(branches[0], field, var, ind, named, (1 - t.index("null")) * 2)
            return
        if isinstance(t, dict):
            kind = t["type"]
            logical = t.get("logicalType")
            if kind == "enum":
                for name in (
                    t["name"],
                    f"{t.get('namespace', '')}.{t['name']}",
                    t["name"].rpartition(".")[2],
                ):
                    named[name] = t
                head = b"" if branch < 0 else bytes((branch,))
                table = {s: head + zigzag(i) for i, s in enumerate(t["symbols"])}
                self.add(ind, f"_e = {self.const(table)}.get({var}) if type({var}) is str else None")
                self.add(ind, "if _e is None: return None")
                self.add(ind, "o += _e")
                return
            if logical in _PER_SECOND and kind in ("long", "int"):
                self.timestamp(logical, var, ind, branch)
                return
            if isinstance(kind, (dict, list)) or kind in ("record", "map", "array", "fixed"):
                raise _Unsupported(f"field {field!r} of type {kind!r}")
            self.value(kind, field, var, ind, named, branch)
            return
        self.primitive(t, field, var, ind, branch)

    def timestamp(self, logical: str, var: str, ind: str, branch: int) -> None:
        per_second = _PER_SECOND[logical]
        lo = (_TS_MIN - _EPOCH) // _UNIT[logical]  # the epoch integers of 2000..2100, exactly
        hi = (_TS_MAX - _EPOCH) // _UNIT[logical]
        unit = self.const(_UNIT[logical])
        self.add(ind, f"if type({var}) is int:")
        self.add(ind, f"    if not {lo} <= {var} < {hi}: return None")
        self.add(ind, f"    _t = {var}")
        self.add(ind, f"elif type({var}) is str:")
        self.add(ind, f"    _dt = _iso({var})")
        self.add(ind, "    _dt = _dt.replace(tzinfo=_UTC) if _dt.tzinfo is None else _dt.astimezone(_UTC)")
        self.add(ind, "    if not _TS_MIN <= _dt < _TS_MAX: return None")
        self.add(ind, f"    _t = (_dt - _EPOCH) // {unit}")
        self.add(ind, "else: return None")
        if branch >= 0:
            self.add(ind, f"o.append({branch})")
        self.add(ind, "o += _z(_t)")
        self.ts_divisor = per_second // 1000

    def primitive(self, t: str, field: str, var: str, ind: str, branch: int) -> None:
        lo, hi = RANGES.get(field, (None, None))
        head = "" if branch < 0 else f"o.append({branch}); "
        if t == "string":
            self.add(ind, f"if type({var}) is not str: return None")
            if field in _NON_EMPTY:
                self.add(ind, f"if not {var}: return None")
            limit = self.env["_limits"].get(field)
            if limit is not None:
                self.add(ind, f"if len({var}) > {limit}: return None")
            self.add(ind, f"_b = {var}.encode()")
            self.add(ind, head + "o += _L1[len(_b)] if len(_b) < 64 else _z(len(_b))")
            self.add(ind, "o += _b")
        elif t == "boolean":
            self.add(ind, f"if type({var}) is not bool: return None")
            on, off = (b"\x01", b"\x00") if branch < 0 else (bytes((branch, 1)), bytes((branch, 0)))
            self.add(ind, f"o += {on!r} if {var} else {off!r}")
        elif t in _INT_BOUNDS:
            avro_lo, avro_hi = _INT_BOUNDS[t]  # what Avro holds, narrowed by the field's range
            low = avro_lo if lo is None else max(avro_lo, lo)
            high = avro_hi if hi is None else min(avro_hi, hi)
            self.add(ind, f"if type({var}) is not int or not {low!r} <= {var} <= {high!r}: return None")
            self.add(ind, f"{head}o += _z({var})")
        elif t in ("double", "float"):
            self.add(ind, f"if type({var}) is float:")
            self.add(ind, f"    if not _isfinite({var}): return None")
            self.add(ind, f"elif type({var}) is int: {var} = float({var})")
            self.add(ind, "else: return None")
            if lo is not None:
                self.add(ind, f"if {var} < {lo!r}: return None")
            if hi is not None:
                self.add(ind, f"if {var} > {hi!r}: return None")
            if branch < 0:
                self.add(ind, f"o += {'_d' if t == 'double' else '_f'}({var})")
            else:
                self.add(ind, f"o += {'_bd' if t == 'double' else '_bf'}({branch}, {var})")
        elif t == "bytes":
            self.add(ind, f"if type({var}) is not str: return None")
            self.add(ind, f"_b = _b64({var}, validate=True)")
            self.add(ind, f"{head}o += _z(len(_b))")
            self.add(ind, "o += _b")
        else:
            raise _Unsupported(f"field {field!r} of type {t!r}")


def _default_bytes(gen: _Gen, t: Any, field: str, default: Any, named: dict[str, Any]) -> bytes:
    """The encoding of a field's default, as the slow path writes it (the default itself is trusted)."""
    if default is None:
        if not (isinstance(t, list) and "null" in t):
            raise _Unsupported(f"null default of non-nullable field {field!r}")
        return bytes((t.index("null") * 2,))
    sub = _Gen()
    sub.env["_limits"] = {}
    sub.lines.append("def enc(v):")
    sub.lines.append("    o = bytearray()")
    sub.value(t, field, "v", "    ", dict(named))
    sub.lines.append("    return bytes(o)")
    out = sub.build("enc")(default)
    if out is None:
        raise _Unsupported(f"default of field {field!r}")
    return out  # type: ignore[no-any-return]


def compile_json_plan(topic: str) -> JsonPlan:
    """The plan of ``topic`` (single-object framing). Raises TypeError for a shape it does not cover."""
    raw = schemas.raw_schema_for(topic)
    prefix = b"\xc3\x01" + schemas.version_for(topic).fingerprint_bytes
    key_name = key_field(topic)
    gen = _Gen()
    gen.env["_limits"] = MAX_CHARS.get(topic, {})
    names = frozenset(f["name"] for f in raw["fields"])
    add = gen.lines.append
    add("def plan(raw):")
    add("    obj = _loads(raw)")
    add(f"    if type(obj) is not dict or not obj.keys() <= {gen.const(names)}: return None")
    add(f"    o = bytearray({gen.const(prefix)})")
    add("    g = obj.get")
    add("    ts = None")
    named: dict[str, Any] = {}
    key_var = None
    for i, f in enumerate(raw["fields"]):
        var, name, t = f"v{i}", f["name"], f["type"]
        add(f"    {var} = g({name!r}, _M)")
        add(f"    if {var} is _M or {var} is None:")
        if "default" in f:
            add(f"        o += {gen.const(_default_bytes(gen, t, name, f['default'], named))}")
        else:
            add("        return None")  # required: "missing required field" or "must not be null"
        add("    else:")
        gen.ts_divisor = None
        gen.value(t, name, var, "        ", named)
        if name == "ts" and gen.ts_divisor is not None:  # the future-timestamp check's input, in ms
            add(f"        ts = _t // {gen.ts_divisor}")
        if name == key_name:
            key_var = var
    if key_var is None or not _is_string(raw, key_name):
        raise _Unsupported(f"{topic}: key field {key_name!r} is not a string field")
    add(f"    return bytes(o), (None if {key_var} is _M else {key_var}), ts")
    # Any exception (orjson's, an ISO parse, a float overflow, ...) is a doubt: the slow path says why.
    body = ["    " + line for line in gen.lines[1:]]
    source = "\n".join([gen.lines[0], "    try:", *body, "    except Exception:", "        return None"])
    exec(source, gen.env)  # noqa: S102 - code generated from our own schema files
    return gen.env["plan"]  # type: ignore[no-any-return]


def _is_string(raw: dict[str, Any], name: str) -> bool:
    (t,) = (f["type"] for f in raw["fields"] if f["name"] == name)
    return t == "string" or (isinstance(t, list) and sorted(map(str, t)) == ["null", "string"])
