"""A datacenter site as emulator capacity: its slots, its load, its battery, its budget and its price. Pure.

``SiteCapacity`` is what one site is (drawn once from ``SiteCompute`` and the site's own stream); the
functions of ``power_state`` turn the site's power facts into what its controller reports. Invariants:

- on the grid every slot may run (``power_budget_mw`` = every slot's draw); islanded the budget is
  ``islanded_budget_share`` of it, at the battery reserve ``reserve_budget_share``, and 0 once the
  emulator hall is cut (``TRIPPED``): the budget never grows as the site's power gets scarcer;
- the load is the critical load plus ``kw_per_slot`` per running session, so shedding sessions lowers it
  and (``battery_drain_pct``) slows the battery in proportion;
- ``Slots`` never holds more sessions than ``slots_total``; ``free`` is what the capacity report says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from simulator.config import SiteCompute

__all__ = [
    "BATTERY_NORMAL_PCT",
    "BATTERY_RESERVE_PCT",
    "GRID",
    "ISLANDED",
    "RESERVE",
    "TRIPPED",
    "SiteCapacity",
    "Slots",
    "power_state",
]

BATTERY_NORMAL_PCT = 92.0  # the charge a site's battery is kept at on the grid
BATTERY_RESERVE_PCT = 10.0  # never to be crossed while islanded (DOMAIN.md)

# The site's own view of its power (the pipeline derives sites.power_state.v1 from the events instead).
GRID = "GRID"
ISLANDED = "ISLANDED"  # off the grid, on batteries or generators
RESERVE = "RESERVE"  # off the grid, the battery carrying the load at or below its reserve
TRIPPED = "TRIPPED"  # the controller cut the emulator hall to save the critical load


def power_state(on_grid: bool, source: str, battery_pct: float, tripped: bool) -> str:
    """The site's power state from its facts: ``on_grid`` = the grid carries the load (``source`` GRID)."""
    if tripped:
        return TRIPPED
    if on_grid and source == "GRID":
        return GRID
    if source == "BATTERY" and battery_pct <= BATTERY_RESERVE_PCT:
        return RESERVE
    return ISLANDED


@dataclass(frozen=True)
class SiteCapacity:
    site_id: str
    region: str
    slots_total: int
    kw_per_slot: float
    critical_load_mw: float  # at the daily peak; the site's load curve scales it
    battery_mwh: float
    config: SiteCompute = field(repr=False)

    @classmethod
    def draw(cls, config: SiteCompute, rng: random.Random, site_id: str, region: str) -> SiteCapacity:
        slots = rng.randint(*config.slots)
        emulators_mw = slots * config.kw_per_slot / 1000.0
        share = min(max(config.emulator_load_share, 0.01), 1.0)
        critical = emulators_mw * (1.0 - share) / share
        minutes = rng.uniform(*config.battery_full_load_min)
        usable = (BATTERY_NORMAL_PCT - BATTERY_RESERVE_PCT) / 100.0
        battery = max((critical + emulators_mw) * minutes / 60.0 / usable, 1e-6)
        return cls(site_id, region, slots, config.kw_per_slot, critical, battery, config)

    @property
    def slot_mw(self) -> float:
        return self.kw_per_slot / 1000.0

    def emulator_mw(self, sessions: int) -> float:
        return sessions * self.slot_mw

    def power_budget_mw(self, state: str) -> float:
        """What emulator sessions may draw in ``state``, MW (sessions allowed = budget / slot_mw)."""
        full = self.slots_total * self.slot_mw
        share = {
            GRID: 1.0,
            ISLANDED: self.config.islanded_budget_share,
            RESERVE: self.config.reserve_budget_share,
            TRIPPED: 0.0,
        }[state]
        return full * share

    def cost_per_slot_hour(self, state: str) -> float:
        base = self.config.cost_per_slot_hour
        return base if state == GRID else base * self.config.islanded_cost_factor

    def battery_drain_pct(self, load_mw: float, dt_ms: int) -> float:
        """State of charge (percentage points) the battery loses carrying ``load_mw`` for ``dt_ms``."""
        return max(0.0, load_mw) * dt_ms / 3_600_000 / self.battery_mwh * 100.0

    def capacity_record(self, ts_ms: int, free: int, state: str) -> dict[str, Any]:
        """One sites.capacity.v1 record."""
        return {
            "site_id": self.site_id,
            "ts": ts_ms,
            "region": self.region,
            "slots_total": self.slots_total,
            "slots_free": 0 if state == TRIPPED else max(0, min(free, self.slots_total)),
            "power_budget_mw": round(self.power_budget_mw(state), 4),
            "cost_per_slot_hour": round(self.cost_per_slot_hour(state), 4),
            "session_kw": self.kw_per_slot,
        }


class Slots:
    """Slot accounting: which assignment holds which slot (at most ``total`` at once)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held: dict[str, Any] = {}  # assignment id -> its run

    @property
    def used(self) -> int:
        return len(self.held)

    @property
    def free(self) -> int:
        return self.total - len(self.held)

    def take(self, assignment_id: str, run: Any) -> bool:
        """Hold a slot for ``assignment_id``; False when every slot is taken (or it already holds one)."""
        if assignment_id in self.held or len(self.held) >= self.total:
            return False
        self.held[assignment_id] = run
        return True

    def release(self, assignment_id: str) -> Any:
        """Free the slot of ``assignment_id``; its run, or None when it held none."""
        return self.held.pop(assignment_id, None)
