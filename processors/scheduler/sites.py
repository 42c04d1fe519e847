"""Datacenter sites as the matcher sees them: emulator slots beside the cars of a pool, and their power.

A site's state comes from two inputs, each judged on its own and applied only if newer than what it
replaces (a replayed or late record changes nothing):

* ``sites.capacity.v1`` (to the pool of its region): slots, slots free, the emulator power budget, cost.
  Free slots now = what the report said, minus the sessions placed on the site since, plus those that
  ended since (``free_slots``). A report older than ``site_capacity_ttl_s`` means the controller is not
  heard from: the site takes no new work.
* ``sites.power_state.v1`` (to every partition: it carries no region, and sites are few): GRID,
  ISLANDED_BATTERY, ISLANDED_GENERATOR, RESERVE, SHEDDING, with the battery runtime and load.

The site is stored like a node (key ``site:<site_id>``, ``kind: "site"``) with the tasks it runs and its
open spillover episode, so it is restored with the partition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from processors.scheduler._time import to_ms
from processors.scheduler.config import SchedulerConfig
from processors.scheduler.exceptions import InvalidRecord
from streams.deadletter import VALIDATION
from streams.sites import site_vin

__all__ = [
    "GRID",
    "ISLANDED",
    "POWER_STATES",
    "SEVERE",
    "Episode",
    "SiteState",
    "check_capacity",
    "check_power_state",
]

GRID = "GRID"
POWER_STATES = ("GRID", "ISLANDED_BATTERY", "ISLANDED_GENERATOR", "RESERVE", "SHEDDING")
ISLANDED = frozenset(POWER_STATES[1:])  # off the grid: no new flexible work
SEVERE = frozenset({"RESERVE", "SHEDDING"})  # running flexible sessions are shed to the budget
SEVERITY = {state: rank for rank, state in enumerate(POWER_STATES)}


def _opt_float(rec: dict[str, Any], name: str) -> float | None:
    value = rec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidRecord(VALIDATION, f"{name} {value!r} is not a finite number >= 0")
    return float(value)


def check_capacity(rec: dict[str, Any]) -> tuple[str, int]:
    """``(site_id, ts)`` of a usable capacity report, else ``InvalidRecord``."""
    site_id, region = rec.get("site_id"), rec.get("region")
    if not site_id or not isinstance(site_id, str) or not region or not isinstance(region, str):
        raise InvalidRecord(VALIDATION, "capacity needs site_id and region")
    total, free = rec.get("slots_total"), rec.get("slots_free")
    if not isinstance(total, int) or not isinstance(free, int) or total < 0 or not 0 <= free <= total:
        raise InvalidRecord(
            VALIDATION, f"slots_total {total!r} / slots_free {free!r}: need 0 <= free <= total"
        )
    _opt_float(rec, "power_budget_mw")
    _opt_float(rec, "cost_per_slot_hour")
    _opt_float(rec, "session_kw")
    return site_id, to_ms(rec["ts"])


def check_power_state(rec: dict[str, Any]) -> tuple[str, int]:
    """``(site_id, ts)`` of a usable power state record, else ``InvalidRecord``."""
    site_id = rec.get("site_id")
    if not site_id or not isinstance(site_id, str):
        raise InvalidRecord(VALIDATION, "power state needs site_id")
    if rec.get("state") not in SEVERITY:
        raise InvalidRecord(VALIDATION, f"unknown power state {rec.get('state')!r}")
    for name in ("battery_runtime_min", "load_mw", "battery_soc_pct"):
        _opt_float(rec, name)
    return site_id, to_ms(rec["ts"])


@dataclass(slots=True)
class Episode:
    """A site's spillover episode so far: from leaving the grid to taking work again."""

    started_at: int
    worst_state: str
    incident_id: str | None = None
    tasks_spilled: int = 0
    sessions_shed: int = 0
    slot_hours_shifted: float = 0.0
    battery_minutes_saved: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Episode:
        return cls(**{k: v for k, v in d.items() if k in cls.__slots__})  # type: ignore[attr-defined]

    @property
    def moved(self) -> int:
        return self.tasks_spilled + self.sessions_shed


@dataclass(slots=True)
class SiteState:
    site_id: str
    region: str | None = None  # None until a capacity report names it (power state alone)
    slots_total: int = 0
    reported_free: int = 0
    reported_running: int = 0  # our sessions on the site when the report was taken in
    capacity_ts: int = -1
    power_budget_mw: float | None = None
    cost_per_slot_hour: float | None = None
    session_kw: float | None = None  # what one session draws here, as the site reports it
    power_state: str = GRID
    power_since: int = 0
    power_ts: int = -1
    battery_runtime_min: float | None = None
    load_mw: float | None = None
    incident_id: str | None = None
    running: list[str] = field(default_factory=list)  # task ids placed here (ASSIGNED or RUNNING)
    shed_mw: float = 0.0  # emulator load shed since the last power state reading (for runtime estimates)
    episode: Episode | None = None

    @property
    def vin(self) -> str:
        return site_vin(self.site_id)

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        d["kind"] = "site"
        d["running"] = list(self.running)
        d["episode"] = None if self.episode is None else self.episode.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteState:
        kw = {k: v for k, v in d.items() if k in cls.__slots__}  # type: ignore[attr-defined]
        kw["running"] = list(d.get("running") or ())
        kw["episode"] = None if not d.get("episode") else Episode.from_dict(d["episode"])
        return cls(**kw)

    # -- inputs ---------------------------------------------------------------------------------------
    def apply_capacity(self, rec: dict[str, Any], ts: int) -> bool:
        """Take in a capacity report (checked by ``check_capacity``); False if not newer than the last."""
        if ts <= self.capacity_ts:
            return False
        self.region = rec["region"]
        self.slots_total = int(rec["slots_total"])
        self.reported_free = int(rec["slots_free"])
        self.reported_running = len(self.running)
        self.capacity_ts = ts
        self.power_budget_mw = _opt_float(rec, "power_budget_mw")
        self.cost_per_slot_hour = _opt_float(rec, "cost_per_slot_hour")
        self.session_kw = _opt_float(rec, "session_kw")
        return True

    def apply_power(self, rec: dict[str, Any], ts: int) -> bool:
        """Take in a power state record (checked by ``check_power_state``); False if not newer."""
        if ts <= self.power_ts:
            return False
        self.power_ts = ts
        self.power_state = str(rec["state"])
        since = rec.get("since")
        self.power_since = ts if since is None else to_ms(since)
        self.battery_runtime_min = _opt_float(rec, "battery_runtime_min")
        self.load_mw = _opt_float(rec, "load_mw")
        self.incident_id = rec.get("incident_id")
        self.shed_mw = 0.0  # the new reading's load already reflects what was shed before it
        return True

    # -- derived --------------------------------------------------------------------------------------
    def capacity_fresh(self, now: int, cfg: SchedulerConfig) -> bool:
        return self.capacity_ts >= 0 and now - self.capacity_ts <= cfg.site_capacity_ttl_s * 1000

    def free_slots(self) -> int:
        since_report = len(self.running) - self.reported_running  # placed since (minus ended since)
        return max(0, min(self.slots_total - len(self.running), self.reported_free - since_report))

    def cost(self, cfg: SchedulerConfig) -> float:
        return cfg.site_cost_per_slot_hour if self.cost_per_slot_hour is None else self.cost_per_slot_hour

    def on_grid(self) -> bool:
        return self.power_state == GRID

    def session_mw(self, cfg: SchedulerConfig) -> float:
        """What one session draws here, MW (the site's own figure, else the configured default)."""
        return (cfg.site_session_kw if self.session_kw is None else self.session_kw) / 1000.0

    def session_budget(self, cfg: SchedulerConfig) -> int | None:
        """Sessions the site's emulator power budget carries, or None when it is not limited."""
        per_session = self.session_mw(cfg)
        if self.power_budget_mw is None or per_session <= 0:
            return None
        return int(self.power_budget_mw / per_session + 1e-9)
