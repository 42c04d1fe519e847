"""Islanding when sites are compute: the long battery-only island, and the truth of every island. Pure.

``long_island_script`` is the start of a failover that the batteries carry alone (the site's generators
are out of service): grid lost, static transfer to battery, island entered, and the grid back after
``island_s``. What follows depends on the load, so the site plays it live: the battery drains with the
load; at the reserve the controller calls mobile generators (on load ``reserve_gen_delay_min`` later);
at the trip floor it cuts the emulator hall; the retransfer to grid leaves from whatever then carries the
load. Shedding sessions before the reserve is what keeps a site off it.

``IslandLog`` turns the site's power states, in time order, into ``island`` truth rows: one per island
(grid lost -> back on grid), with whether and when the battery reached its reserve, the minutes it spent
there carrying the load, the lowest charge, and whether (when) the hall was cut and how many sessions that
cost. Rows are written when the island ends, or open (``end`` null) when the run ends first.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulator.power_devices import BRK_UTIL, CTL, GM, MS, STS, Failover, S, Step
from simulator.site_compute import BATTERY_RESERVE_PCT, GRID, TRIPPED

LONG_BATTERY = "long_battery"


def long_island_script(
    rng: random.Random, site_id: str, t0_us: int, load_mw: float, island_s: float, retransfer_delay_s: float
) -> Failover:
    """The scripted part of a battery-only island from ``t0_us`` (grid lost) to the grid's return."""
    steps: list[Step] = []

    def add(at_us: float, dev: str, event: str, state: dict[str, Any] | None = None, **fields: Any) -> None:
        steps.append(Step(t0_us + int(at_us), len(steps), dev, event, fields, state))

    transfer_ms = rng.uniform(1.8, 4.0)
    add(
        -2 * S,
        CTL,
        "ALARM",
        load_mw=round(load_mw, 2),
        detail=f"grid peak: site load {load_mw:.1f} MW; islanding on batteries (generators out of service)",
    )
    add(0, BRK_UTIL, "BREAKER_OPEN", detail="utility breaker open")
    add(
        300,
        GM,
        "SOURCE_LOST",
        {"grid": False},
        source_from="GRID",
        voltage_pu=0.0,
        detail="utility source lost (planned peak shave)",
    )
    add(
        300 + transfer_ms * MS,
        STS,
        "TRANSFER",
        {"source": "BATTERY"},
        source_from="GRID",
        source_to="BATTERY",
        load_mw=round(load_mw, 2),
        detail=f"static transfer {transfer_ms:.1f} ms",
    )
    add(300 + transfer_ms * MS + 5 * MS, CTL, "ISLAND_ENTER", source_to="BATTERY")
    add(
        island_s * S,
        GM,
        "SOURCE_RESTORED",
        {"grid": True},
        source_to="GRID",
        voltage_pu=1.0,
        frequency_hz=60.0,
    )
    end_us = t0_us + int((island_s + retransfer_delay_s) * S)
    detail = {
        "scenario": LONG_BATTERY,
        "transfer_ms": round(transfer_ms, 3),
        "island_min": round(island_s / 60, 1),
    }
    return Failover(site_id, t0_us, end_us, None, steps, detail)


@dataclass
class Island:
    start: int
    end: int | None = None
    reserve_at: int | None = None
    reserve_ms: int = 0
    reserve_since: int | None = None
    min_battery_pct: float | None = None
    tripped_at: int | None = None
    sessions_lost: int = 0
    scenario: str | None = None  # LONG_BATTERY, or the injected fault / "failover" of a scripted one
    extra: dict[str, Any] = field(default_factory=dict)

    def reserve_minutes(self, now: int) -> float:
        held = self.reserve_ms + (now - self.reserve_since if self.reserve_since is not None else 0)
        return held / 60_000

    def row(self, site_id: str, now: int) -> dict[str, Any]:
        return {
            "type": "island",
            "site_id": site_id,
            "start": self.start,
            "end": self.end,
            "scenario": self.scenario,
            "reached_reserve": self.reserve_at is not None,
            "reserve_at": self.reserve_at,
            "reserve_minutes": round(self.reserve_minutes(self.end if self.end is not None else now), 2),
            "min_battery_soc_pct": None if self.min_battery_pct is None else round(self.min_battery_pct, 1),
            "hall_cut": self.tripped_at is not None,
            "hall_cut_at": self.tripped_at,
            "sessions_lost": self.sessions_lost,
            **self.extra,
        }


class IslandLog:
    """Follows one site's power states in time order and writes an ``island`` row per island."""

    def __init__(self, site_id: str, write: Callable[[dict[str, Any]], None]) -> None:
        self.site_id = site_id
        self.write = write
        self.current: Island | None = None
        self.closed: list[Island] = []

    def observe(
        self, now: int, state: str, battery_pct: float, on_battery: bool, scenario: str | None = None
    ) -> Island | None:
        """Apply the site's state at ``now`` (``on_battery``: the battery carries the load); the island
        that ended with it, if one did."""
        at_reserve = state != GRID and on_battery and battery_pct <= BATTERY_RESERVE_PCT
        isl = self.current
        if isl is None:
            if state == GRID:
                return None
            isl = self.current = Island(start=now, scenario=scenario)
        if isl.reserve_since is not None and not at_reserve:
            isl.reserve_ms += now - isl.reserve_since
            isl.reserve_since = None
        if state == GRID:
            isl.end = now
            self.current = None
            self.closed.append(isl)
            self.write(isl.row(self.site_id, now))
            return isl
        if isl.min_battery_pct is None or battery_pct < isl.min_battery_pct:
            isl.min_battery_pct = battery_pct
        if at_reserve:
            if isl.reserve_at is None:
                isl.reserve_at = now
            if isl.reserve_since is None:
                isl.reserve_since = now
        if state == TRIPPED and isl.tripped_at is None:
            isl.tripped_at = now
        return None

    def close_open(self, now: int) -> Island | None:
        """At the run's end: write the island still under way (``end`` null)."""
        isl = self.current
        if isl is not None:
            self.write(isl.row(self.site_id, now))
        return isl
