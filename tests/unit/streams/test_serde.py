"""Avro single-object / Confluent framing, writer-schema lookup and resolution to the current schema."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

import schemas
from core.settings import Settings
from schemas import TOPICS, history
from schemas.examples import EXAMPLES
from streams.exceptions import SerializationError
from streams.records import parse_json_record
from streams.serde import SINGLE_OBJECT_MAGIC, AvroSerde, registry_client, serde_from_settings

TELEMETRY = "fleet.telemetry.v1"


def _single_object(raw_schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Encode like a producer that only knows ``raw_schema`` (independent of AvroSerde)."""
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + schemas.fingerprint_of(raw_schema).to_bytes(8, "little"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(raw_schema, named_schemas={}), record)
    return buf.getvalue()


@pytest.fixture
def serde() -> AvroSerde:
    return AvroSerde()


@pytest.mark.parametrize("topic", TOPICS)
def test_round_trip_every_topic(serde: AvroSerde, topic: str) -> None:
    record = parse_json_record(topic, EXAMPLES[topic])
    data = serde.encode(topic, record)
    assert data[:2] == b"\xc3\x01"
    assert int.from_bytes(data[2:10], "little") == schemas.version_for(topic).fingerprint
    assert serde.decode(topic, data) == record


def test_timestamps_decode_as_utc_datetimes_and_ints_encode(serde: AvroSerde) -> None:
    record = parse_json_record("deadletter.v1", EXAMPLES["deadletter.v1"])
    record["ts"] = 1748812500123  # producers may pass epoch millis directly
    out = serde.decode("deadletter.v1", serde.encode("deadletter.v1", record))
    assert out["ts"].isoformat() == "2025-06-01T21:15:00.123000+00:00"


def test_old_writer_resolves_to_current_reader(serde: AvroSerde) -> None:
    old = history(TELEMETRY)[0]
    assert old.version == 1
    record = parse_json_record(TELEMETRY, EXAMPLES[TELEMETRY])
    old_record = {k: v for k, v in record.items() if k not in ("compute_temp_c", "software_version")}
    out = serde.decode(TELEMETRY, _single_object(old.raw, old_record))
    assert out == {**old_record, "compute_temp_c": None, "software_version": None}
    # cached pair is reused and still right
    assert serde.decode(TELEMETRY, _single_object(old.raw, old_record)) == out


@contextmanager
def _registered(raw: dict[str, Any]) -> Iterator[None]:
    """Temporarily add a writer schema to the registry, as a newer or older producer would have."""
    fp = schemas.fingerprint_of(raw)
    schemas.REGISTRY[fp] = schemas.SchemaVersion(
        TELEMETRY,
        99,
        raw,
        fastavro.parse_schema(raw, named_schemas={}),
        fastavro.schema.to_parsing_canonical_form(raw),
        fp,
        schemas.SCHEMA_DIR,
    )
    try:
        yield
    finally:
        del schemas.REGISTRY[fp]


def test_unknown_future_enum_symbol_reads_as_default(serde: AvroSerde) -> None:
    """A producer on a newer schema sends hw HW6: the reader falls back to the enum default."""
    future = copy.deepcopy(schemas.raw_schema_for(TELEMETRY))
    hw = next(f for f in future["fields"] if f["name"] == "hw")
    hw["type"]["symbols"].append("HW6")
    record = parse_json_record(TELEMETRY, EXAMPLES[TELEMETRY]) | {"hw": "HW6"}
    with _registered(future):
        assert serde.decode(TELEMETRY, _single_object(future, record))["hw"] == "OTHER"


@pytest.mark.parametrize("change", ["drop_optional", "promote", "drop_map_default_field"])
def test_resolution_agrees_with_fastavro(serde: AvroSerde, change: str) -> None:
    """Both the added-defaults fast path and full resolution give fastavro's answer."""
    topic = "alerts.v1" if change == "drop_map_default_field" else TELEMETRY
    old = copy.deepcopy(schemas.raw_schema_for(topic))
    record = parse_json_record(topic, EXAMPLES[topic])
    if change == "drop_optional":
        old["fields"] = [f for f in old["fields"] if f["name"] not in ("soc_pct", "gear", "at_home")]
    elif change == "promote":
        next(f for f in old["fields"] if f["name"] == "compute_temp_c")["type"] = ["null", "float"]
        record["compute_temp_c"] = 41.5
    else:
        old["fields"] = [f for f in old["fields"] if f["name"] != "labels"]
    data = _single_object(old, record)
    expected = fastavro.schemaless_reader(
        io.BytesIO(data[10:]), fastavro.parse_schema(old, named_schemas={}), schemas.schema_for(topic)
    )
    with _registered(old):
        assert serde.decode(topic, data) == expected
        assert serde.decode(topic, data) == expected  # cached plan


def _kind(exc: pytest.ExceptionInfo[SerializationError]) -> str:
    return exc.value.kind


def test_unknown_fingerprint(serde: AvroSerde) -> None:
    data = SINGLE_OBJECT_MAGIC + (42).to_bytes(8, "little") + b"\x00"
    with pytest.raises(SerializationError) as exc:
        serde.decode(TELEMETRY, data)
    assert _kind(exc) == "UNKNOWN_FINGERPRINT"


@pytest.mark.parametrize("data", [b"", b'{"vin": 1}', b"\xc3", b"\x01\x02\x03"])
def test_bad_magic(serde: AvroSerde, data: bytes) -> None:
    with pytest.raises(SerializationError) as exc:
        serde.decode(TELEMETRY, data)
    assert _kind(exc) == "BAD_MAGIC"


def test_truncated_and_trailing_bytes_are_decode_errors(serde: AvroSerde) -> None:
    data = serde.encode(TELEMETRY, parse_json_record(TELEMETRY, EXAMPLES[TELEMETRY]))
    for bad in (data[:15], data + b"\x00"):
        with pytest.raises(SerializationError) as exc:
            serde.decode(TELEMETRY, bad)
        assert _kind(exc) == "DECODE"


def test_writer_schema_unrelated_to_topic_is_decode_error(serde: AvroSerde) -> None:
    data = serde.encode("alerts.v1", parse_json_record("alerts.v1", EXAMPLES["alerts.v1"]))
    with pytest.raises(SerializationError) as exc:
        serde.decode(TELEMETRY, data)
    assert _kind(exc) == "DECODE"


def test_encode_errors(serde: AvroSerde) -> None:
    record = parse_json_record(TELEMETRY, EXAMPLES[TELEMETRY])
    for bad in ({**record, "hw": "HW9"}, {**record, "soc_pct": "lots"}):
        with pytest.raises(SerializationError) as exc:
            serde.encode(TELEMETRY, bad)
        assert _kind(exc) == "ENCODE"
    with pytest.raises(SerializationError) as exc:
        serde.encode("nope.v1", record)
    assert _kind(exc) == "ENCODE"


def test_decode_plans_each_writer_once_and_reads_current_data_without_resolution(
    serde: AvroSerde, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What keeps decoding near raw fastavro speed (measured in bench/bench_produce_consume.py): the
    writer/reader plan is made once per (topic, writer), and data written with the current schema is
    read with the writer schema alone, no per-record schema resolution."""
    data = serde.encode(TELEMETRY, parse_json_record(TELEMETRY, EXAMPLES[TELEMETRY]))
    planned: list[tuple[str, int]] = []
    plan = serde._single_object_pair

    def counting(topic: str, fp: int) -> Any:
        planned.append((topic, fp))
        return plan(topic, fp)

    monkeypatch.setattr(serde, "_single_object_pair", counting)
    for _ in range(100):
        serde.decode(TELEMETRY, data)
    assert len(planned) == 1
    writer, reader, defaults = serde._pairs[planned[0]]
    assert reader is None and defaults == ()


# -- Confluent wire format ------------------------------------------------------------------------


@pytest.fixture
def confluent() -> AvroSerde:
    return AvroSerde(registry_client("mock://carnival-test"))


@pytest.mark.parametrize("topic", TOPICS)
def test_confluent_round_trip(confluent: AvroSerde, topic: str) -> None:
    record = parse_json_record(topic, EXAMPLES[topic])
    data = confluent.encode(topic, record)
    assert data[0] == 0
    schema_id = int.from_bytes(data[1:5], "big")
    registered = confluent.registry.get_latest_version(f"{topic}-value")
    assert registered.schema_id == schema_id
    assert confluent.decode(topic, data) == record


def test_confluent_old_writer_and_single_object_still_decode(confluent: AvroSerde) -> None:
    old = history(TELEMETRY)[0]
    record = parse_json_record(TELEMETRY, EXAMPLES[TELEMETRY])
    old_record = {k: v for k, v in record.items() if k not in ("compute_temp_c", "software_version")}
    old_id = confluent.registry.register_schema(f"{TELEMETRY}-value", Schema(json.dumps(old.raw), "AVRO"))
    buf = io.BytesIO()
    buf.write(b"\x00" + old_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, old.parsed, old_record)
    assert confluent.decode(TELEMETRY, buf.getvalue())["software_version"] is None
    # a topic mid-migration: single-object messages keep decoding
    assert confluent.decode(TELEMETRY, AvroSerde().encode(TELEMETRY, record)) == record


def test_confluent_unknown_schema_id(confluent: AvroSerde) -> None:
    with pytest.raises(SerializationError) as exc:
        confluent.decode(TELEMETRY, b"\x00\x00\x00\x03\xe7\x00")
    assert _kind(exc) == "UNKNOWN_FINGERPRINT"


def test_confluent_framing_without_registry_is_bad_magic(serde: AvroSerde) -> None:
    with pytest.raises(SerializationError) as exc:
        serde.decode(TELEMETRY, b"\x00\x00\x00\x00\x01\x00")
    assert _kind(exc) == "BAD_MAGIC"


def test_serde_from_settings() -> None:
    assert serde_from_settings(Settings(schema_registry_url=None)).registry is None
    serde = serde_from_settings(Settings(schema_registry_url="mock://from-settings"))
    assert serde.registry is not None
    record = parse_json_record("alerts.v1", EXAMPLES["alerts.v1"])
    assert serde.encode("alerts.v1", record)[0] == 0
