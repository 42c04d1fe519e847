"""A site's power state for ``sites.power_state.v1``: what the failover detector knows, in five words.

Pure functions over a detector's ``Site`` (``processors.power.rules.site``); the rule that follows a
site with them and publishes the records is ``processors.power.rules.power_state.SitePowerRule``.

States, in precedence order (the first that holds wins)::

    SHEDDING            a FAILED_TRANSFER is open (the load has no source: all of it is shed), or a
                        LOAD_SHED incident is open while an alternate source carries the load
    RESERVE             the BATTERY_RESERVE incident is open (state of charge <= battery_reserve_pct,
                        until above reserve + battery_hysteresis_pct) while an alternate carries the load
    ISLANDED_BATTERY    the FAILOVER is open and the load is on batteries ...
    ISLANDED_GENERATOR  ... or on generators (the last alternate while the load is back on grid and
                        the retransfer clock runs, and while the load has no source at all)
    GRID                no FAILOVER open (never left the grid, a blip, or not confirmed yet), or the load
                        is back on grid and utility power has been back and stable for
                        ``retransfer_stable_s``

SHEDDING and RESERVE are the severe states: both say "move work away now"; SHEDDING wins because the
site is already dropping load, while RESERVE still shows in ``battery_soc_pct``. Neither applies once the
load is back on grid: nothing more needs shedding then, but nothing comes back before GRID either.

Leaving GRID follows the FAILOVER incident (alternate on load and off grid for ``blip_ignore_s``, or
ISLAND_ENTER), so a blip never moves work. An island entry that names no source counts as battery (sites
island onto their batteries first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from processors.power.events import ALTERNATE_SOURCES

if TYPE_CHECKING:
    from processors.power.rules.site import Site

__all__ = [
    "GRID",
    "ISLANDED_BATTERY",
    "ISLANDED_GENERATOR",
    "RESERVE",
    "SHEDDING",
    "STATES",
    "battery_runtime_min",
    "derive",
    "runtime_moved",
]

GRID = "GRID"
ISLANDED_BATTERY = "ISLANDED_BATTERY"
ISLANDED_GENERATOR = "ISLANDED_GENERATOR"
RESERVE = "RESERVE"
SHEDDING = "SHEDDING"
STATES = (GRID, ISLANDED_BATTERY, ISLANDED_GENERATOR, RESERVE, SHEDDING)
"""The ``PowerState`` enum of ``sites.power_state.v1``, in its order."""

# The keys the FAILOVER, FAILED_TRANSFER, LOAD_SHED and BATTERY_RESERVE rules keep their incidents under.
_FAILOVER, _FAILED, _SHED, _RESERVE = "failover", "failed", "shed", "battery"


def derive(site: Site) -> tuple[str, str | None, bool]:
    """``(state, incident_id, on_grid_again)`` of a site as its rules see it now. ``on_grid_again``: the
    FAILOVER is open but the load is back on grid (the retransfer clock decides when it is GRID: the
    caller's business, see ``SitePowerRule``); the state is then the islanded state it came back from."""
    ep, open_ = site.ep, site.open
    failed = open_.get(_FAILED)
    if ep is None or not ep["open"]:
        return (SHEDDING, failed["id"], False) if failed is not None else (GRID, None, False)
    incident_id = open_[_FAILOVER]["id"]
    source = site.source if site.source in ALTERNATE_SOURCES else ep["to"]
    islanded = ISLANDED_GENERATOR if source == "GENERATOR" else ISLANDED_BATTERY
    if ep["retransfer_at"] is not None:
        return islanded, incident_id, True
    if failed is not None:
        return SHEDDING, incident_id, False
    if ep["alt_since"] is None:
        return islanded, incident_id, False  # the alternate dropped the load; FAILED_TRANSFER if it lasts
    if _SHED in open_:
        return SHEDDING, incident_id, False
    if _RESERVE in open_:
        return RESERVE, incident_id, False
    return islanded, incident_id, False


def battery_runtime_min(
    battery_mwh: float, soc_pct: float | None, reserve_pct: float, load_mw: float | None
) -> float | None:
    """Minutes the battery carries ``load_mw`` before it reaches its reserve: energy above the reserve
    over the load, to 0.1 min. None when the state of charge or a positive load is not known."""
    if soc_pct is None or load_mw is None or load_mw <= 0:
        return None
    above_mwh = battery_mwh * max(0.0, soc_pct - reserve_pct) / 100.0
    return round(above_mwh / load_mw * 60.0, 1)


def runtime_moved(published: float | None, now: float | None, step_min: float, step_pct: float) -> bool:
    """Whether a runtime estimate ``now`` is worth a record after ``published``: known <-> unknown, or
    moved by at least ``step_min`` minutes and ``step_pct`` percent of the published value."""
    if published is None or now is None:
        return published is not now
    return abs(now - published) >= max(step_min, published * step_pct / 100.0)
