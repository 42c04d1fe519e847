"""The consume fast path (streams/avro_json.py): the same JSON line as decode + ``to_json_record`` +
orjson, or None for anything it is not sure of (tests/fuzz has the bulk version on corrupted bytes)."""

from __future__ import annotations

import orjson
import pytest

from schemas import TOPICS
from schemas.examples import EXAMPLES
from streams.avro_codegen import zigzag
from streams.avro_json import compile_json_line
from streams.records import parse_json_record, to_json_record
from streams.serde import AvroSerde

SERDE = AvroSerde()
RAW = AvroSerde(raw_timestamps=True)
TOPIC = "fleet.telemetry.v1"


def slow_line(topic: str, data: bytes) -> bytes:
    return orjson.dumps(to_json_record(topic, RAW.decode(topic, data)))


def encoded(topic: str, **changes: object) -> bytes:
    return SERDE.encode(topic, parse_json_record(topic, {**EXAMPLES[topic], **changes}))


@pytest.mark.parametrize("topic", sorted(t for t in TOPICS if t != "alerts.v1"))
def test_examples_give_the_slow_paths_line(topic: str) -> None:
    data = encoded(topic)
    assert compile_json_line(topic)(data) == slow_line(topic, data)


def test_maps_are_left_to_the_slow_path() -> None:
    with pytest.raises(TypeError):
        compile_json_line("alerts.v1")


def test_nulls_and_unicode() -> None:
    data = encoded(TOPIC, soc_pct=None, at_home=None, software_version="déjà 🚗", scheduled_departure=None)
    assert compile_json_line(TOPIC)(data) == slow_line(TOPIC, data)


def test_what_it_is_not_sure_of_is_none() -> None:
    line = compile_json_line(TOPIC)
    good = encoded(TOPIC)
    vin_end = 10 + 1 + len(EXAMPLES[TOPIC]["vin"])
    assert line(good + b"\x00") is None  # trailing bytes
    assert line(good[:-1]) is None  # cut short
    assert line(b"\xc3\x01" + b"\x00" * 8 + good[10:]) is None  # another writer (fingerprint)
    assert line(b"\x00\x00\x00\x00\x01" + good[10:]) is None  # Confluent framing
    assert line(good[:11] + b"\xff" + good[12:]) is None  # invalid UTF-8 in the vin
    ts = zigzag(2**62)  # a timestamp no ISO date holds: the slow path writes and counts the raw integer
    bad_ts = good[:vin_end] + ts + good[vin_end + len(zigzag(1748812500250)) :]
    assert line(bad_ts) is None
    assert RAW.decode(TOPIC, bad_ts)["ts"] == 2**62
