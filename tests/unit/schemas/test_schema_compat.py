"""Schema evolution stays backward compatible: a new reader reads everything old writers wrote."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import pytest
from fastavro.utils import generate_many

from schemas import TOPICS, history, raw_schema_for
from schemas.compat import backward_problems

PAIRS = [
    pytest.param(old, new, id=f"{old.topic}:v{old.version}->v{new.version}")
    for topic in TOPICS
    for i, new in enumerate(history(topic))
    for old in history(topic)[:i]  # every older version, consecutive ones included
]


def test_some_topic_has_history() -> None:
    assert PAIRS, "at least one topic must have an older version under schemas/history/"


@pytest.mark.parametrize(("old", "new"), PAIRS)
def test_structurally_backward_compatible(old: Any, new: Any) -> None:
    assert backward_problems(old.raw, new.raw) == []


@pytest.mark.parametrize(("old", "new"), PAIRS)
def test_new_reader_reads_old_writer_data(old: Any, new: Any) -> None:
    new_fields = {f["name"]: f for f in new.raw["fields"]}
    for record in generate_many(old.raw, 200):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, old.parsed, record)
        buf.seek(0)
        out = fastavro.schemaless_reader(buf, old.parsed, new.parsed)
        for name, field in new_fields.items():
            if name not in record:
                assert out[name] == field["default"]


@pytest.mark.parametrize("topic", TOPICS)
def test_current_schema_compatible_with_itself(topic: str) -> None:
    raw = raw_schema_for(topic)
    assert backward_problems(raw, raw) == []


# -- the checker catches what it should ---------------------------------------------------------


def _telemetry() -> dict[str, Any]:
    return copy.deepcopy(raw_schema_for("fleet.telemetry.v1"))


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_added_field_without_default() -> None:
    new = _telemetry()
    new["fields"].append({"name": "odometer_km", "type": "double", "doc": "x"})
    assert backward_problems(_telemetry(), new) == ["Telemetry.odometer_km: added without a default"]


def test_removed_field_without_default() -> None:
    new = _telemetry()
    new["fields"] = [f for f in new["fields"] if f["name"] != "region"]
    assert backward_problems(_telemetry(), new) == ["Telemetry.region: removed but had no default"]
    # removing a field that had a default is fine
    new["fields"] = [f for f in _telemetry()["fields"] if f["name"] != "soc_pct"]
    assert backward_problems(_telemetry(), new) == []


def test_type_changes_only_promotions() -> None:
    new = _telemetry()
    _field(new, "region")["type"] = "int"
    assert backward_problems(_telemetry(), new) == ["Telemetry.region: type changed from string to int"]
    old, new = _telemetry(), _telemetry()
    _field(old, "compute_temp_c")["type"] = ["null", "float"]
    assert backward_problems(old, new) == []  # float -> double promotes
    _field(old, "compute_temp_c")["type"] = ["null", "string"]
    assert backward_problems(old, new) == ["Telemetry.compute_temp_c: writer type string not in reader union"]
    ts_old = _telemetry()
    _field(ts_old, "ts")["type"] = {"type": "long", "logicalType": "timestamp-micros"}
    assert "logicalType changed" in backward_problems(ts_old, _telemetry())[0]


def test_enum_symbols_not_removed() -> None:
    old, new = _telemetry(), _telemetry()
    _field(old, "hw")["type"]["symbols"].append("HW6")
    # the reader's enum default (OTHER) absorbs it
    assert backward_problems(old, new) == []
    del _field(new, "hw")["type"]["default"]
    assert backward_problems(old, new) == [
        "Telemetry.hw: enum symbols removed ['HW6'] and reader enum has no default"
    ]


def test_optional_to_required_is_caught() -> None:
    new = _telemetry()
    _field(new, "soc_pct")["type"] = "double"
    del _field(new, "soc_pct")["default"]
    problems = backward_problems(_telemetry(), new)
    assert problems == ["Telemetry.soc_pct: writer union branch null unreadable"]


def test_named_reference_reuse_is_followed() -> None:
    raw = copy.deepcopy(raw_schema_for("power.events.v1"))
    new = copy.deepcopy(raw)
    _field(new, "source_from")["type"][1]["symbols"].remove("NONE")
    problems = backward_problems(raw, new)
    assert problems and all("NONE" in p for p in problems)
    # and the fastavro resolution agrees: the reader cannot read NONE written by the old writer
    record = next(generate_many(raw, 1)) | {"source_from": "NONE", "source_to": None}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(raw, named_schemas={}), record)
    buf.seek(0)
    with pytest.raises(Exception, match="NONE"):
        fastavro.schemaless_reader(
            buf, fastavro.parse_schema(raw, named_schemas={}), fastavro.parse_schema(new, named_schemas={})
        )
