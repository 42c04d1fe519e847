"""A detector state in the Kafka changelog survives an upgrade: states written by the Detector before
the rules refactor (``fixtures/detector_state_v1.json``, produced by commit 324aedc) are read by
``Detector.from_dict`` and continue exactly as the old code continued them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from processors.power import Detector, Incident, PowerConfig
from processors.power.events import SitePowerState
from processors.power.scenario import rich_failover_timeline

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "detector_state_v1.json").read_text())
CASES = {c["name"]: c for c in FIXTURE["cases"]}


def _plain(outputs: list[Any]) -> list[dict[str, Any]]:
    """The outputs the old detector had: incidents and late events (site power states came later)."""
    return [
        dataclasses.asdict(o) if isinstance(o, Incident) else {"late": o.event, "reason": o.reason}
        for o in outputs
        if not isinstance(o, SitePowerState)
    ]


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_state_resumes_as_the_old_detector_did(name: str) -> None:
    case = CASES[name]
    config = PowerConfig.from_mapping(case["config"])
    det = Detector.from_dict(case["state"], config)
    events = case["events_after"]
    if events is None:
        events = rich_failover_timeline()[case["rich_cut"] :]
    got: list[Any] = []
    for e in events:
        got += det.on_event(e, arrival_us=e["ts"])
    for t in case["ticks_after"]:
        got += det.on_tick(t)
    got += det.flush()
    assert _plain(got) == case["expected"]


def test_fixture_covers_open_incidents_of_most_rules() -> None:
    keys = {k.split(":")[0] for c in CASES.values() for k in c["state"]["open"]}
    assert keys >= {"failover", "gen", "battery", "pq", "shed", "gap", "silent", "flap"}


def test_an_old_state_mid_failover_publishes_its_power_state_at_its_first_event() -> None:
    case = CASES["flapping_open"]
    assert "power_state" not in case["state"] and case["state"]["ep"] is not None
    det = Detector.from_dict(case["state"], PowerConfig.from_mapping(case["config"]))
    events = case["events_after"] or rich_failover_timeline()[case["rich_cut"] :]
    first = [o for o in det.on_event(events[0], arrival_us=events[0]["ts"]) if isinstance(o, SitePowerState)]
    assert len(first) == 1 and first[0].state != "GRID"
    assert first[0].incident_id == case["state"]["open"]["failover"]["id"]
