"""Avro single-object record -> JSON line in one generated function per topic: the fast path of
``carnival consume``.

fastavro's ``schemaless_reader`` reads every field through a file object (about 10 us per telemetry
record here), then ``records.to_json_record`` copies the dict to format its timestamps. The function
generated here reads the body by index from the bytes, in schema order, formats timestamps (with the very
formatters ``to_json_record`` uses) and bytes as it goes, and dumps the dict with orjson.

A fast path, never a second opinion: it handles only records written with the topic's current schema
version in single-object framing, and returns None for anything it is not sure of: another writer version,
a varint longer than ten bytes or beyond 64 bits, an ``int`` beyond 32 bits, a boolean byte other than 0 or
1, a union or enum index out of range, a length past the end, invalid UTF-8, trailing bytes, a timestamp
no ISO date can hold, anything that raises. The caller then takes the slow path, which decodes the same
bytes the same way, or says why it cannot, as before (tests compare both on valid and corrupted bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import orjson

import schemas
from streams.avro_codegen import CodeBuilder
from streams.records import _b64, _output_converter

__all__ = ["JsonLine", "compile_json_line"]

JsonLine = Callable[[bytes], bytes | None]

_HEADER = 10  # C3 01 + 8-byte fingerprint


def _varint(b: bytes, p: int) -> tuple[int, int]:
    """A zigzag varint at ``p`` of ``b``: (value, next position). At most ten bytes and 64 bits."""
    x = b[p]
    n = x & 0x7F
    shift = 7
    p += 1
    while x & 0x80:
        if shift > 63:
            raise ValueError("varint longer than ten bytes")
        x = b[p]
        n |= (x & 0x7F) << shift
        shift += 7
        p += 1
    if n >> 64:
        raise ValueError("varint beyond 64 bits")
    return (n >> 1) ^ -(n & 1), p


class _Gen(CodeBuilder):
    def __init__(self) -> None:
        super().__init__(
            {
                "_v": _varint,
                "_ud": struct.Struct("<d").unpack_from,
                "_uf": struct.Struct("<f").unpack_from,
                "_b64": _b64,
                "_dumps": orjson.dumps,
            }
        )

    def long(self, var: str, ind: str) -> None:
        """Read a varint of any length into ``var`` inline (timestamps are six bytes): as ``_varint``."""
        self.add(ind, "x = b[p]")
        self.add(ind, "p += 1")
        self.add(ind, "n = x & 0x7F")
        self.add(ind, "s = 7")
        self.add(ind, "while x & 0x80:")
        self.add(ind, "    x = b[p]")
        self.add(ind, "    p += 1")
        self.add(ind, "    n |= (x & 0x7F) << s")
        self.add(ind, "    s += 7")
        self.add(ind, "if s > 70 or n >> 64: raise ValueError")  # more than ten bytes, or beyond 64 bits
        self.add(ind, f"{var} = (n >> 1) ^ -(n & 1)")

    def varint(self, var: str, ind: str) -> None:
        """Read a varint into ``var``: one byte inline (lengths, small numbers), longer ones by call."""
        self.add(ind, "x = b[p]")
        self.add(ind, "if x < 0x80:")
        self.add(ind, f"    {var} = (x >> 1) ^ -(x & 1)")
        self.add(ind, "    p += 1")
        self.add(ind, "else:")
        self.add(ind, f"    {var}, p = _v(b, p)")

    def value(self, t: Any, var: str, ind: str, named: dict[str, Any]) -> None:
        """Code that reads one value of Avro type ``t`` at ``p`` into ``var`` (JSON-ready) and moves ``p``
        past it; it raises (the caller returns None) wherever it is not sure."""
        if isinstance(t, str) and t in named:
            t = named[t]
        if isinstance(t, list):
            branches = [b for b in t if b != "null"]
            if len(t) != 2 or len(branches) != 1:
                raise TypeError(f"unsupported union {t}")
            null_byte, value_byte = t.index("null") * 2, (1 - t.index("null")) * 2
            self.add(ind, "x = b[p]")
            self.add(ind, "p += 1")
            self.add(ind, f"if x == {null_byte}:")
            self.add(ind, f"    {var} = None")
            self.add(ind, f"elif x == {value_byte}:")
            self.value(branches[0], var, ind + "    ", named)
            self.add(ind, "else: raise ValueError")
            return
        if isinstance(t, dict):
            kind = t["type"]
            if kind == "enum":
                for name in (t["name"], f"{t.get('namespace', '')}.{t['name']}"):
                    named[name] = t
                symbols = self.const(tuple(t["symbols"]))
                self.add(ind, "x = b[p]")  # one byte: index < 64, never negative
                self.add(ind, "p += 1")
                self.add(ind, "if x & 0x81: raise ValueError")
                self.add(ind, f"{var} = {symbols}[x >> 1]")
                return
            convert = _output_converter(t)
            if convert is not None and kind in ("long", "int"):  # a timestamp
                fmt = self.const(convert)
                self.long("x", ind)
                self.add(ind, f"{var} = {fmt}(x)")
                self.add(ind, f"if type({var}) is int: raise ValueError")  # outside years 1..9999
                return
            if isinstance(kind, (dict, list)) or kind in ("record", "map", "array", "fixed"):
                raise TypeError(f"unsupported Avro type {kind!r}")
            self.value(kind, var, ind, named)
            return
        if t == "string" or t == "bytes":
            self.varint("n", ind)
            self.add(ind, "e = p + n")
            self.add(ind, "if n < 0 or e > end: raise ValueError")
            if t == "string":
                self.add(ind, f"{var} = b[p:e].decode()")
            else:
                self.add(ind, f"{var} = _b64(b[p:e])")
            self.add(ind, "p = e")
        elif t == "long":
            self.varint(var, ind)
        elif t == "int":
            self.varint(var, ind)
            self.add(ind, f"if not -0x80000000 <= {var} <= 0x7FFFFFFF: raise ValueError")
        elif t == "double":
            self.add(ind, f"{var} = _ud(b, p)[0]")
            self.add(ind, "p += 8")
        elif t == "float":
            self.add(ind, f"{var} = _uf(b, p)[0]")
            self.add(ind, "p += 4")
        elif t == "boolean":
            self.add(ind, "x = b[p]")
            self.add(ind, "p += 1")
            self.add(ind, "if x > 1: raise ValueError")
            self.add(ind, f"{var} = x == 1")
        elif t == "null":
            self.add(ind, f"{var} = None")
        else:
            raise TypeError(f"unsupported Avro type {t!r}")


def compile_json_line(topic: str) -> JsonLine:
    """The fast path of ``topic`` (its current schema version). Raises TypeError for a shape it does not
    cover (maps, arrays: those take the slow path always)."""
    raw = schemas.raw_schema_for(topic)
    header = b"\xc3\x01" + schemas.version_for(topic).fingerprint_bytes
    gen = _Gen()
    add = gen.lines.append
    add("def line(b):")
    add(f"    if b[:{_HEADER}] != {gen.const(header)}: return None")
    add("    try:")  # any doubt (IndexError, UnicodeDecodeError, struct.error, ...) goes to the slow path
    add(f"        p = {_HEADER}")
    add("        end = len(b)")
    named: dict[str, Any] = {}
    items = []
    for i, f in enumerate(raw["fields"]):
        gen.value(f["type"], f"v{i}", "        ", named)
        items.append(f"{f['name']!r}: v{i}")
    add("        if p != end: raise ValueError")
    add(f"        return _dumps({{{', '.join(items)}}})")
    add("    except Exception:")
    add("        return None")
    return gen.build("line")  # type: ignore[no-any-return]
