"""Sink building blocks without a broker or server: batches, tokens, Avro containers, config, DDL."""

from __future__ import annotations

import io
import re

import fastavro
import pytest

from schemas.examples import EXAMPLES
from sinks.avro_container import WriterSchemas, zigzag
from sinks.batches import TopicBatch
from sinks.config import SINK_TABLES, SinkConfig
from sinks.migrate import Target, load_migrations, render_migration
from streams.exceptions import SerializationError
from streams.records import parse_json_record
from streams.serde import AvroSerde

TOPIC = "fleet.telemetry.v1"


def _encoded(serde: AvroSerde, vin: str) -> bytes:
    rec = parse_json_record(TOPIC, {**EXAMPLES[TOPIC], "vin": vin})
    return serde.encode(TOPIC, rec)


def test_zigzag_matches_avro() -> None:
    for n in (0, 1, -1, 63, 64, 2**31, 2**40 + 5):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert zigzag(n) == buf.getvalue()


def test_container_is_readable_avro_with_source_position() -> None:
    serde = AvroSerde()
    schemas_ = WriterSchemas(serde)
    batch = TopicBatch(TOPIC, "telemetry")
    for partition, offset, vin in ((3, 10, "A"), (3, 11, "B"), (0, 7, "C")):
        ws, payload = schemas_.resolve(TOPIC, _encoded(serde, vin))
        batch.add(partition, offset, ws, payload, vin.encode())
    rows = list(fastavro.reader(io.BytesIO(batch.container())))
    assert [(r["_topic"], r["_partition"], r["_offset"], r["vin"]) for r in rows] == [
        (TOPIC, 0, 7, "C"),
        (TOPIC, 3, 10, "A"),
        (TOPIC, 3, 11, "B"),
    ]
    assert rows[0]["region"] == "us-west" and rows[0]["ts"].year == 2025
    assert batch.token() == f"{TOPIC}:0:7-7,3:10-11"
    assert batch.commit_positions() == {0: 8, 3: 12}


def test_dead_lettered_records_advance_the_commit_but_not_the_token() -> None:
    serde = AvroSerde()
    ws, payload = WriterSchemas(serde).resolve(TOPIC, _encoded(serde, "A"))
    batch = TopicBatch(TOPIC, "telemetry")
    batch.add(1, 5, ws, payload, None)
    batch.skip(1, 6)
    batch.skip(2, 9)  # a partition with only a dead letter
    assert batch.rows == 1 and batch.token() == f"{TOPIC}:1:5-5"
    assert batch.commit_positions() == {1: 7, 2: 10}
    batch.remove_rows(1, {5})
    assert batch.rows == 0 and batch.commit_positions() == {1: 7, 2: 10}
    batch.drop_partitions([1, 2])
    assert batch.empty and batch.schema is None


def test_long_tokens_are_hashed_but_stable() -> None:
    serde = AvroSerde()
    ws, payload = WriterSchemas(serde).resolve(TOPIC, _encoded(serde, "A"))
    batches = []
    for _ in range(2):
        b = TopicBatch(TOPIC, "telemetry")
        for p in range(40):
            b.add(p, 1000 * p, ws, payload, None)
        batches.append(b)
    assert batches[0].token() == batches[1].token() and "sha256" in batches[0].token()


def test_unusable_bytes_raise_with_a_deadletter_kind() -> None:
    resolver = WriterSchemas(AvroSerde())
    with pytest.raises(SerializationError) as info:
        resolver.resolve(TOPIC, b"not avro")
    assert info.value.kind == "BAD_MAGIC"
    with pytest.raises(SerializationError) as info:
        resolver.resolve(TOPIC, b"\xc3\x01" + b"\x01" * 8 + b"x")
    assert info.value.kind == "UNKNOWN_FINGERPRINT"


def test_an_older_writer_version_is_reencoded_to_the_current_schema() -> None:
    import schemas
    from streams.serde import SINGLE_OBJECT_MAGIC

    old = schemas.history(TOPIC)[0]
    assert old.fingerprint != schemas.version_for(TOPIC).fingerprint
    full = parse_json_record(TOPIC, EXAMPLES[TOPIC])
    rec = {f["name"]: full[f["name"]] for f in old.raw["fields"]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old.parsed, rec)
    value = SINGLE_OBJECT_MAGIC + old.fingerprint_bytes + buf.getvalue()
    ws, payload = WriterSchemas(AvroSerde()).resolve(TOPIC, value)
    assert ws.key == f"current:{TOPIC}" and ws.header_len == 0
    current = fastavro.schemaless_reader(io.BytesIO(payload), schemas.schema_for(TOPIC))
    assert current["vin"] == rec["vin"]
    ws2, payload2 = WriterSchemas(AvroSerde()).resolve(TOPIC, _encoded(AvroSerde(), "A"))
    assert ws2.header_len == 10 and payload2[:2] == SINGLE_OBJECT_MAGIC


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARNIVAL_SINK_BATCH_ROWS", "500")
    monkeypatch.setenv("CARNIVAL_SINK_FLUSH_INTERVAL_S", "0.25")
    cfg = SinkConfig.from_env(group_id="g")
    assert (cfg.batch_rows, cfg.flush_interval_s, cfg.group_id) == (500, 0.25, "g")


def test_every_sink_topic_has_a_table_in_the_migrations() -> None:
    ddl = "\n".join(s for m in load_migrations() for s in render_migration(m, Target("carnival")))
    for table in SINK_TABLES.values():
        assert f"CREATE TABLE IF NOT EXISTS carnival.{table}\n" in ddl, table


def test_new_migrations_render_for_a_cluster() -> None:
    cluster = Target("carnival", cluster="prod")
    for mig in load_migrations()[1:]:
        for stmt in render_migration(mig, cluster):
            assert "ON CLUSTER prod" in stmt, stmt[:120]
            assert "{" not in stmt.replace("{shard}", "").replace("{replica}", "").replace(
                "{database}", ""
            ).replace("{table}", ""), stmt[:120]
            if stmt.startswith("CREATE TABLE") and "ENGINE = Distributed" not in stmt:
                assert "ENGINE = Replicated" in stmt and "_local" in stmt, stmt[:120]
    # A column added to a contract-name (Distributed) table is added to its local table too.
    stmts = [s for m in load_migrations()[1:] for s in render_migration(m, cluster)]
    for stmt in stmts:
        m = re.match(r"ALTER TABLE carnival\.(\w+) ON CLUSTER prod(.*)", stmt, re.S)
        if m and not m.group(1).endswith("_local"):
            assert f"ALTER TABLE carnival.{m.group(1)}_local ON CLUSTER prod{m.group(2)}" in stmts, stmt[:120]
    stmts = render_migration(load_migrations()[1], cluster)
    assert any(
        "ENGINE = Distributed(prod, carnival, task_requests_local, cityHash64(task_id))" in s for s in stmts
    )
