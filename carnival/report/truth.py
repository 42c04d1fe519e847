"""The simulator's ground truth (``truth.jsonl``), loaded into the few shapes the checks need.

The rows are documented in docs/simulator.md ("Ground truth"); times are epoch ms (``_us``: µs).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ELIGIBLE_HW = frozenset({"HW4", "HW5"})


@dataclass
class GroundTruth:
    config: dict[str, Any] = field(default_factory=dict)
    cars: dict[str, dict[str, Any]] = field(default_factory=dict)  # vin -> car row
    tasks: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)  # emulator sessions
    late_power: list[dict[str, Any]] = field(default_factory=list)  # power events delivered late
    plugged: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    """vin -> [(plug_in, unplug)] charge sessions; a session open at the end closes at the run's end."""

    @property
    def start_ms(self) -> int:
        return int(self.config.get("start", 0))

    @property
    def end_ms(self) -> int:
        return int(self.config.get("end", 0))

    def add(self, row: dict[str, Any]) -> None:
        kind = row.get("type")
        if kind == "config":
            self.config = row
        elif kind == "car":
            self.cars[row["vin"]] = row
        elif kind == "task":
            self.tasks.append(row)
        elif kind == "failover":
            self.failovers.append(row)
        elif kind == "session":
            self.sessions.append(row)
        elif kind == "power_late":
            self.late_power.append(row)
        elif kind == "charge_session":
            self.plugged[row["vin"]].append((int(row["plug_in"]), int(row["unplug"])))
        elif kind == "charge_open":
            self.plugged[row["vin"]].append((int(row["plug_in"]), int(row["at"])))

    def can_compute(self, vin: str) -> bool:
        """Opted in and HW4 or newer: the static half of eligibility."""
        car = self.cars.get(vin)
        return car is not None and bool(car.get("opted_in")) and car.get("hw") in ELIGIBLE_HW


def load_truth(path: Path) -> GroundTruth:
    truth = GroundTruth()
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                truth.add(orjson.loads(line))
    for intervals in truth.plugged.values():
        intervals.sort()
    return truth


def from_rows(rows: list[dict[str, Any]]) -> GroundTruth:
    """A GroundTruth from rows in memory (tests)."""
    truth = GroundTruth()
    for row in rows:
        truth.add(row)
    for intervals in truth.plugged.values():
        intervals.sort()
    return truth
