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
from processors.power.scenario import rich_failover_timeline

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "detector_state_v1.json").read_text())
CASES = {c["name"]: c for c in FIXTURE["cases"]}


def _plain(outputs: list[Any]) -> list[dict[str, Any]]:
    return [
        dataclasses.asdict(o) if isinstance(o, Incident) else {"late": o.event, "reason": o.reason}
        for o in outputs
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
