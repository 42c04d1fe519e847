"""One insert, one part: a batch is cut where the table's partition key (``toYYYYMM(ts)``) changes.

ClickHouse writes an insert as one part per table partition, and each part lands on its own: a batch
spanning a month boundary is two parts, and a crash between them leaves one. The sink resumes every
Kafka partition at ``max(_offset) + 1``, which is exact only if what landed of each Kafka partition is a
prefix of it. So a batch is inserted as *pieces*, each within one table partition, in an order that
keeps that prefix property: each Kafka partition's rows are cut into runs of one key (in offset order),
and a piece takes, from every Kafka partition whose next run has the piece's key, that run. A batch
within one month is one piece, as before; a batch across a month boundary is two.

The key is read from the Avro body without decoding the record (the sink never decodes well-formed
records in Python): the fields before the key column are skipped, the timestamp is read.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import schemas
from sinks.batches import PartitionRun, TopicBatch

KeyOf = Callable[[bytes], object]  # body -> table partition key (equal keys: one table partition)
_Skip = Callable[[bytes, int], int]

_EXPR = re.compile(r"^\s*(toYYYYMM|toYYYYMMDD|toDate|toStartOfMonth)\(\s*`?(\w+)`?\s*\)\s*$")
_UNITS = {"timestamp-millis": 1_000, "timestamp-micros": 1_000_000}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


class UnsupportedPartitionKey(ValueError):
    """The table's partition key is not one the sink can evaluate on a record."""


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:  # one byte: lengths, indexes, small numbers
        return (b >> 1) ^ -(b & 1), pos + 1
    n, shift, pos = b & 0x7F, 7, pos + 1
    while b & 0x80:
        b = buf[pos]
        n |= (b & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
    return (n >> 1) ^ -(n & 1), pos


def _skip_long(buf: bytes, pos: int) -> int:
    return _long(buf, pos)[1]


def _skip_sized(buf: bytes, pos: int) -> int:
    b = buf[pos]
    if b < 0x80 and not b & 1:  # a length under 64 in one byte
        end = pos + 1 + (b >> 1)
        if end > len(buf):
            raise IndexError("length past the end of the body")
        return end
    n, pos = _long(buf, pos)
    if n < 0 or pos + n > len(buf):
        raise IndexError("length past the end of the body")
    return pos + n


def _fixed(size: int) -> _Skip:
    return lambda buf, pos: pos + size


def _skipper(schema: Any, names: dict[str, Any]) -> _Skip:
    """A function that steps over one value of ``schema``."""
    if isinstance(schema, list):
        branches = [_skipper(s, names) for s in schema]

        def union(buf: bytes, pos: int) -> int:
            i, pos = _long(buf, pos)
            return branches[i](buf, pos)

        return union
    if isinstance(schema, str):
        if schema in names:
            return _skipper(names[schema], names)
        simple: dict[str, _Skip] = {
            "null": _fixed(0), "boolean": _fixed(1), "int": _skip_long, "long": _skip_long,
            "float": _fixed(4), "double": _fixed(8), "string": _skip_sized, "bytes": _skip_sized,
        }  # fmt: skip
        return simple[schema]
    kind = schema["type"]
    if kind in ("record", "enum", "fixed") and "name" in schema:
        names[schema["name"]] = schema
        if "namespace" in schema:
            names[f"{schema['namespace']}.{schema['name']}"] = schema
    if kind == "record":
        fields = [_skipper(f["type"], names) for f in schema["fields"]]

        def record(buf: bytes, pos: int) -> int:
            for skip in fields:
                pos = skip(buf, pos)
            return pos

        return record
    if kind == "enum":
        return _skip_long
    if kind == "fixed":
        return _fixed(int(schema["size"]))
    if kind in ("array", "map"):
        item = _skipper(schema["items" if kind == "array" else "values"], names)
        each: _Skip = item if kind == "array" else (lambda buf, pos: item(buf, _skip_sized(buf, pos)))

        def blocks(buf: bytes, pos: int) -> int:
            while True:
                count, pos = _long(buf, pos)
                if count == 0:
                    return pos
                if count < 0:  # a block with its byte size: skip it whole
                    pos = _skip_sized(buf, pos)
                    continue
                for _ in range(count):
                    pos = each(buf, pos)

        return blocks
    return _skipper(kind, names)  # {"type": "long", "logicalType": ...} and the like


def _bucket(function: str) -> Callable[[datetime], object]:
    return {
        "toYYYYMM": lambda d: d.year * 100 + d.month,
        "toStartOfMonth": lambda d: d.year * 100 + d.month,
        "toYYYYMMDD": lambda d: d.date(),
        "toDate": lambda d: d.date(),
    }[function]


def key_reader(topic: str, partition_key: str, header_len: int) -> KeyOf | None:
    """A body -> table partition key function for ``topic``'s current schema; None: no partition key
    (every insert is one part). Raises UnsupportedPartitionKey for an expression it cannot evaluate."""
    if not partition_key.strip() or partition_key.strip() == "tuple()":
        return None
    m = _EXPR.match(partition_key)
    raw = schemas.raw_schema_for(topic)
    fields = {f["name"]: i for i, f in enumerate(raw["fields"])}
    if m is None or m.group(2) not in fields:
        raise UnsupportedPartitionKey(f"{topic}: cannot evaluate partition key {partition_key!r}")
    index = fields[m.group(2)]
    column_type = raw["fields"][index]["type"]
    unit = _UNITS.get(column_type.get("logicalType", "")) if isinstance(column_type, dict) else None
    if unit is None:
        raise UnsupportedPartitionKey(f"{topic}: partition key column {m.group(2)} is not a timestamp")
    names: dict[str, Any] = {}
    before = [_skipper(f["type"], names) for f in raw["fields"][:index]]
    bucket = _bucket(m.group(1))
    span = _span(m.group(1))
    # The last bucket's timestamps, a second inside its edges: a timestamp there has its key without a
    # datetime (most records of a batch share one month). Near an edge the key is computed as always.
    last: list[Any] = [0, 0, None]

    def key_of(value: bytes) -> object:
        try:
            pos = header_len
            for skip in before:
                pos = skip(value, pos)
            ts, _ = _long(value, pos)
            if last[0] <= ts < last[1]:
                return last[2]
            moment = datetime.fromtimestamp(ts / unit, UTC)
            key = bucket(moment)
            start, end = span(moment)
            last[:] = [((start - _EPOCH) // _SECOND + 1) * unit, ((end - _EPOCH) // _SECOND - 1) * unit, key]
            return key
        except (IndexError, KeyError, OverflowError, ValueError, OSError):
            return object()  # unreadable or beyond datetime: a piece of its own (ClickHouse decides)

    return key_of


def _span(function: str) -> Callable[[datetime], tuple[datetime, datetime]]:
    """The bucket of a moment as [start, end) in UTC."""

    def month(d: datetime) -> tuple[datetime, datetime]:
        start = datetime(d.year, d.month, 1, tzinfo=UTC)
        return start, (start + timedelta(days=32)).replace(day=1)

    def day(d: datetime) -> tuple[datetime, datetime]:
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        return start, start + timedelta(days=1)

    return month if function in ("toYYYYMM", "toStartOfMonth") else day


def split_at_partition_key(batch: TopicBatch, key_of: KeyOf | None) -> list[TopicBatch]:
    """The batch's rows as pieces of one table partition each, in an order that keeps every Kafka
    partition's landed rows a prefix (see the module docstring). Pieces carry rows only."""
    assert batch.schema is not None
    runs: dict[int, deque[tuple[object, list[int]]]] = {}
    for partition, run in sorted(batch.runs.items()):
        segments: deque[tuple[object, list[int]]] = deque()
        for i, payload in enumerate(run.payloads):
            key = None if key_of is None else key_of(payload)
            if segments and segments[-1][0] == key:
                segments[-1][1].append(i)
            else:
                segments.append((key, [i]))
        if segments:
            runs[partition] = segments
    if len({segments[0][0] for segments in runs.values()}) == 1 and all(len(s) == 1 for s in runs.values()):
        return [_rows_of(batch)]  # one table partition (the common case): one piece, the rows as they are
    pieces = []
    while runs:
        key = runs[min(runs)][0][0]
        piece = TopicBatch(batch.topic, batch.table)
        for partition in sorted(runs):
            segments = runs[partition]
            if segments[0][0] != key:
                continue
            run = batch.runs[partition]
            for i in segments.popleft()[1]:
                piece.add(partition, run.offsets[i], batch.schema, run.payloads[i], run.keys[i])
            if not segments:
                del runs[partition]
        pieces.append(piece)
    return pieces


def _rows_of(batch: TopicBatch) -> TopicBatch:
    """The batch's rows as one piece, without copying them row by row (pieces carry rows only)."""
    piece = TopicBatch(batch.topic, batch.table, batch.schema, opened_at=batch.opened_at)
    for partition, run in sorted(batch.runs.items()):
        if run.offsets:
            rows = (list(run.offsets), list(run.payloads), list(run.keys))
            piece.runs[partition] = PartitionRun(
                partition, run.prefix, run.first, run.last, run.offsets[-1], *rows
            )
            piece.rows += len(run.offsets)
    return piece
