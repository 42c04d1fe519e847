"""The schema files keep the SPEC contract: names, docs, types, and a fingerprint index of every version."""

from __future__ import annotations

from typing import Any

import pytest

import schemas
from schemas import REGISTRY, TOPICS, by_fingerprint, fingerprint_of, history, raw_schema_for, schema_for

INPUT_TOPICS = {
    "fleet.telemetry.v1",
    "tasks.requests.v1",
    "tasks.status.v1",
    "emulator.actions.v1",
    "power.events.v1",
    "sites.capacity.v1",
}
DERIVED_TOPICS = {
    "fleet.nodes.v1",
    "tasks.assignments.v1",
    "tasks.lifecycle.v1",
    "power.incidents.v1",
    "alerts.v1",
    "deadletter.v1",
    "sites.power_state.v1",
    "sites.spillover.v1",
}

# Field names exactly as the SPEC lists them (derived topics: at least these).
SPEC_FIELDS = {
    "fleet.telemetry.v1": "vin ts hw region charge_state gear soc_pct charge_limit_pct minutes_to_full "
    "scheduled_departure at_home opted_in compute_temp_c software_version",
    "tasks.requests.v1": "task_id ts tenant kind priority est_duration_s deadline min_hw region min_soc_pct "
    "placement",
    # session_kw extends the SPEC (optional): the budget in sessions needs what a session draws there.
    "sites.capacity.v1": "site_id ts region slots_total slots_free power_budget_mw cost_per_slot_hour "
    "session_kw",
    "sites.power_state.v1": "site_id ts state since battery_runtime_min incident_id",
    "tasks.status.v1": "task_id assignment_id vin ts status error",
    "emulator.actions.v1": "session_id task_id vin ts seq action x y keys text_len latency_ms ok error",
    "power.events.v1": "site_id device_id device_type ts seq event_type source_from source_to load_mw "
    "frequency_hz voltage_pu battery_soc_pct gens_online detail",
    "fleet.nodes.v1": "vin ts eligible reason region hw",
    "tasks.assignments.v1": "assignment_id command task_id vin ts reason",
    "tasks.lifecycle.v1": "task_id ts state vin assignment_id reason",
    "power.incidents.v1": "incident_id site_id kind state started_at ended_at transfer_ms source_from "
    "source_to min_battery_soc_pct summary",
    "alerts.v1": "fingerprint status severity kind site_id region summary starts_at ends_at labels "
    "incident_id",
    "deadletter.v1": "value key source_topic source_partition source_offset error_kind error ts line "
    "processor value_size value_sha256 truncated",
}


def _walk_named(schema: Any) -> list[dict[str, Any]]:
    """Every record/enum definition inside a raw schema."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, list):
        for s in schema:
            found += _walk_named(s)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            found.append(schema)
        for f in schema.get("fields", []):
            found += _walk_named(f["type"])
        for key in ("items", "values"):
            if key in schema:
                found += _walk_named(schema[key])
        if isinstance(schema.get("type"), (dict, list)):
            found += _walk_named(schema["type"])
    return found


def test_one_schema_file_per_spec_topic() -> None:
    assert set(TOPICS) == INPUT_TOPICS | DERIVED_TOPICS
    for topic in TOPICS:
        assert (schemas.SCHEMA_DIR / f"{topic}.avsc").is_file()


@pytest.mark.parametrize("topic", sorted(SPEC_FIELDS))
def test_spec_field_names_present(topic: str) -> None:
    names = [f["name"] for f in raw_schema_for(topic)["fields"]]
    assert set(SPEC_FIELDS[topic].split()) <= set(names)
    if topic in INPUT_TOPICS:  # inputs are exactly the SPEC
        assert names == SPEC_FIELDS[topic].split()


@pytest.mark.parametrize("topic", sorted(SPEC_FIELDS))
def test_docs_namespaces_and_optionals(topic: str) -> None:
    raw = raw_schema_for(topic)
    assert raw["namespace"].startswith("carnival.")
    for named in _walk_named(raw):
        assert named.get("doc"), f"{named['name']} lacks a doc"
    for f in raw["fields"]:
        assert f.get("doc"), f"{topic}.{f['name']} lacks a doc"
        if isinstance(f["type"], list):
            assert f["type"][0] == "null" and len(f["type"]) == 2, f["name"]
            assert f["default"] is None, f["name"]


@pytest.mark.parametrize("topic", sorted(SPEC_FIELDS))
def test_timestamps_use_the_spec_unit(topic: str) -> None:
    for f in raw_schema_for(topic)["fields"]:
        t = f["type"][1] if isinstance(f["type"], list) else f["type"]
        if f["name"] in (
            "ts",
            "deadline",
            "scheduled_departure",
            "started_at",
            "ended_at",
            "starts_at",
            "ends_at",
        ):
            expected = (
                "timestamp-micros" if (topic, f["name"]) == ("power.events.v1", "ts") else "timestamp-millis"
            )
            assert t == {"type": "long", "logicalType": expected}, f"{topic}.{f['name']}"


def test_open_enums_have_default_symbols() -> None:
    enums = {e["name"]: e for e in _walk_named(raw_schema_for("fleet.telemetry.v1")) if e["type"] == "enum"}
    assert enums["Hardware"]["default"] == "OTHER"
    assert enums["ChargeState"]["default"] == "UNKNOWN"
    assert enums["Gear"]["default"] == "UNKNOWN"
    assert enums["Hardware"]["symbols"] == ["HW3", "HW4", "HW5", "OTHER"]


def test_fingerprint_matches_avro_spec_vectors() -> None:
    # From the Avro spec's schema-tests: CRC-64-AVRO of primitive canonical forms.
    assert fingerprint_of("int") == 8247732601305521295
    assert fingerprint_of("null") == 7195948357588979594


def test_registry_indexes_current_and_historical_versions() -> None:
    versions = history("fleet.telemetry.v1")
    assert [v.version for v in versions] == [1, 2]
    assert len(REGISTRY) == sum(len(history(t)) for t in TOPICS)
    for topic in TOPICS:
        for sv in history(topic):
            assert by_fingerprint(sv.fingerprint) is sv
            assert sv.fingerprint == fingerprint_of(sv.raw)
        assert schema_for(topic) is history(topic)[-1].parsed
    assert by_fingerprint(12345) is None


def test_unknown_topic_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known topics"):
        schema_for("nope.v1")
