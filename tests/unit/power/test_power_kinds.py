"""Incident kinds are declared once (processors/power/kinds.py): that declaration agrees with the Avro
enum of power.incidents.v1, with the simulator's injected faults, with the rules and with the copies
the rest of the package exposes."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from processors.power import alerts, events, kinds
from processors.power.rules import RULES
from schemas import raw_schema_for
from simulator.power import FAULT_KINDS


def _enum(topic: str, field: str) -> list[str]:
    (f,) = [f for f in raw_schema_for(topic)["fields"] if f["name"] == field]
    t: Any = f["type"]
    return list(t["symbols"])


def test_declared_kinds_are_the_avro_enum_in_its_order() -> None:
    assert list(kinds.KINDS) == _enum("power.incidents.v1", "kind")


def test_severities_are_alert_severities() -> None:
    allowed = set(_enum("alerts.v1", "severity"))
    assert {k.severity for k in kinds.ALL} <= allowed
    assert {k.severity_for("parent") for k in kinds.ALL} <= allowed


def test_every_injected_fault_is_an_incident_kind() -> None:
    assert set(FAULT_KINDS) <= set(kinds.KINDS)
    # what the simulator's truth expects besides the fault itself
    assert {"FAILOVER", "LOAD_SHED"} <= set(kinds.KINDS)


def test_every_kind_is_fired_by_exactly_one_rule() -> None:
    fired = Counter(k.name for rule in RULES for k in rule.kinds)
    assert fired == Counter(kinds.KINDS)


def test_package_copies_derive_from_the_declaration() -> None:
    assert events.KINDS is kinds.KINDS
    assert alerts.SEVERITY is kinds.SEVERITY
    for k in kinds.ALL:
        assert alerts.severity_for(k.name, None) == k.severity


def test_episode_grouping() -> None:
    roots = [k.name for k in kinds.ALL if k.episode == "root"]
    assert roots == ["FAILOVER"]
    children = {k.name for k in kinds.ALL if k.episode == "child"}
    assert children == {"FAILED_TRANSFER", "SLOW_TRANSFER", "BATTERY_RESERVE", "PQ_EXCURSION", "LOAD_SHED"}
    assert [k.name for k in kinds.ALL if k.episode == "child" and not k.adopted] == ["FAILED_TRANSFER"]
    assert [k.name for k in kinds.ALL if k.critical_in_episode] == ["SITE_SILENT"]


def test_every_kind_has_its_runbook_section() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "power.md").read_text()
    slugs = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in docs.splitlines()
        if line.startswith("### ")
    }
    assert {k.anchor for k in kinds.ALL} <= slugs
