"""Cutting batches at the table's partition key: the key read from raw Avro bodies equals ClickHouse's
``toYYYYMM`` of the decoded timestamp for every partitioned table (fuzzed records), and the pieces keep
each Kafka partition's rows in offset order (a crash between any two inserts leaves prefixes).

``CARNIVAL_FUZZ_EXAMPLES`` sets the examples per property (default 200: about 2,600 cases)."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from schemas.examples import EXAMPLES
from sinks.avro_container import WriterSchemas
from sinks.batches import TopicBatch
from sinks.config import SINK_TABLES
from sinks.migrate import MIGRATIONS_DIR
from sinks.table_partitions import UnsupportedPartitionKey, key_reader, split_at_partition_key
from streams.records import parse_json_record
from streams.serde import AvroSerde

EXAMPLES_PER_PROPERTY = int(os.environ.get("CARNIVAL_FUZZ_EXAMPLES", "200"))
SERDE = AvroSerde()
FUZZ = settings(
    derandomize=True,
    max_examples=EXAMPLES_PER_PROPERTY,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MIN_MS, MAX_MS = -2_208_988_800_000, 10_413_792_000_000  # 1900-01-01 .. 2300-01-01


def _partition_keys() -> dict[str, str]:
    """table -> PARTITION BY expression, as the migrations create them."""
    sql = "\n".join(p.read_text() for p in sorted(MIGRATIONS_DIR.glob("*.sql")))
    keys = {}
    for m in re.finditer(r"CREATE TABLE IF NOT EXISTS \{table:(\w+)\}(.*?);", sql, re.S):
        part = re.search(r"PARTITION BY (.+)", m.group(2))
        keys[m.group(1)] = part.group(1).strip() if part else ""
    return keys


KEYS = _partition_keys()
PARTITIONED = sorted(t for t, table in SINK_TABLES.items() if KEYS[table])


def _field_strategy(schema: Any) -> st.SearchStrategy[Any] | None:
    """Variable-length values for the fields before the key column (the reader must step over them)."""
    if schema == "string":
        return st.text(max_size=40)
    if schema == "bytes":
        return st.binary(max_size=300)
    if isinstance(schema, list) and schema[0] == "null" and len(schema) == 2:
        inner = _field_strategy(schema[1])
        if inner is not None:
            return st.none() | inner
        if schema[1] in ("int", "long"):
            return st.none() | st.integers(-(2**31), 2**31 - 1)
    return None


def _record(topic: str) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    base = parse_json_record(topic, EXAMPLES[topic])
    column = re.search(r"\((\w+)\)", KEYS[SINK_TABLES[topic]]).group(1)  # type: ignore[union-attr]
    fields = {}
    for f in schemas.raw_schema_for(topic)["fields"]:
        if f["name"] == column:
            break
        strategy = _field_strategy(f["type"])
        if strategy is not None:
            fields[f["name"]] = strategy
    key_field = next(f for f in schemas.raw_schema_for(topic)["fields"] if f["name"] == column)
    per_ms = 1 if key_field["type"]["logicalType"] == "timestamp-millis" else 1000
    ts = st.integers(MIN_MS, MAX_MS).map(lambda ms: ms * per_ms)
    return st.tuples(st.fixed_dictionaries(fields), ts).map(
        lambda d: ({**base, **d[0], column: d[1]}, column)
    )


@pytest.mark.parametrize("topic", PARTITIONED)
def test_key_read_from_the_body_is_the_month_of_the_decoded_timestamp(topic: str) -> None:
    ws_cache = WriterSchemas(SERDE)

    @FUZZ
    @given(_record(topic))
    def check(record_column: tuple[dict[str, Any], str]) -> None:
        record, column = record_column
        value = SERDE.encode(topic, record)
        ws, payload = ws_cache.resolve(topic, value)
        key_of = key_reader(topic, KEYS[SINK_TABLES[topic]], ws.header_len)
        assert key_of is not None
        decoded = SERDE.decode(topic, value)[column]
        assert key_of(payload) == decoded.year * 100 + decoded.month
        # One reader for every record (it remembers the last month's span): the same keys.
        assert shared(payload) == decoded.year * 100 + decoded.month

    shared = key_reader(
        topic, KEYS[SINK_TABLES[topic]], ws_cache.resolve(topic, _example(topic))[0].header_len
    )
    assert shared is not None
    check()


def _example(topic: str) -> bytes:
    return SERDE.encode(topic, parse_json_record(topic, EXAMPLES[topic]))


def test_one_reader_across_month_edges_gives_each_records_month() -> None:
    topic = "fleet.telemetry.v1"
    key_of = key_reader(topic, "toYYYYMM(ts)", 10)
    assert key_of is not None
    edge = 1_769_904_000_000  # 2026-02-01T00:00:00Z
    record = parse_json_record(topic, EXAMPLES[topic])
    for ts in [edge - 5000, edge - 1, edge, edge + 1, edge - 1001, edge + 999, edge - 2000, edge + 5000, 0]:
        expected = 202602 if ts >= edge else 202601 if ts > 0 else 197001
        assert key_of(SERDE.encode(topic, {**record, "ts": ts})) == expected, ts


def test_tables_without_a_partition_key_need_no_cut_and_unknown_keys_are_refused() -> None:
    assert key_reader("fleet.nodes.v1", KEYS["nodes"], 10) is None
    with pytest.raises(UnsupportedPartitionKey):
        key_reader("fleet.telemetry.v1", "cityHash64(vin) % 8", 10)
    with pytest.raises(UnsupportedPartitionKey):
        key_reader("fleet.telemetry.v1", "toYYYYMM(soc_pct)", 10)
    key_of = key_reader("fleet.telemetry.v1", "toYYYYMM(ts)", 10)
    assert key_of is not None and key_of(b"\xc3\x01" + b"\x00" * 8 + b"\x02") != key_of(b"short")


@FUZZ
@given(
    st.dictionaries(
        st.integers(0, 5),
        st.lists(
            st.tuples(st.integers(1, 3), st.sampled_from([202601, 202602, 202603])), min_size=1, max_size=30
        ),
        min_size=1,
        max_size=4,
    )
)
def test_pieces_hold_one_key_each_and_keep_every_partition_in_offset_order(
    runs: dict[int, list[tuple[int, int]]],
) -> None:
    topic = "fleet.telemetry.v1"
    record = parse_json_record(topic, EXAMPLES[topic])
    ws, payload = WriterSchemas(SERDE).resolve(topic, SERDE.encode(topic, record))
    batch = TopicBatch(topic, "telemetry")
    month_of: dict[bytes, int] = {}
    for partition, rows in runs.items():
        offset = 0
        for gap, month in rows:
            offset += gap
            body = payload + f"|{partition}:{offset}".encode()
            month_of[body] = month
            batch.add(partition, offset, ws, body, None)
    pieces = split_at_partition_key(batch, month_of.__getitem__)
    assert all(len({month_of[v] for *_, v, _k in p.rows_in_order()}) == 1 for p in pieces)
    landed: dict[int, list[int]] = {}
    for piece in pieces:
        for partition, offset, *_ in piece.rows_in_order():
            landed.setdefault(partition, []).append(offset)
    assert landed == {p: r.offsets for p, r in batch.runs.items()}  # all rows, in offset order
    for piece in pieces:
        if piece.rows > 1:
            left, right = piece.halves()
            assert left.rows_in_order() + right.rows_in_order() == piece.rows_in_order()
