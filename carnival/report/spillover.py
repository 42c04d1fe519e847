"""Spillover: each episode of a site off the grid, and what moved from it to the car fleet.

The episodes come from ``sites.spillover.v1`` (the latest record of each), the moves from the lifecycle
(records with a spillover reason). Both are the scheduler's account of the same moves, so the section
shows them side by side.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from carnival.report.model import Section

MOVE_REASONS = ("SPILLOVER_ISLANDED", "SHED_RESERVE", "SHED_LOAD")
SPILLED = "SPILLOVER_ISLANDED"


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _episode_line(e: dict[str, Any]) -> str:
    if e["ended_ms"] is None:
        span = f"{_clock(e['started_ms'])} -> still open"
    else:
        minutes = (e["ended_ms"] - e["started_ms"]) / 60_000
        span = f"{_clock(e['started_ms'])} -> {_clock(e['ended_ms'])} ({minutes:.1f} min)"
    battery = e["battery_minutes_saved"]
    return (
        f"  {e['site_id']:10} {span}  worst {e['worst_state']}: "
        f"{e['tasks_spilled'] + e['sessions_shed']} tasks moved ({e['tasks_spilled']} spilled, "
        f"{e['sessions_shed']} shed), {e['slot_hours_shifted']:.2f} slot-hours, "
        f"{'n/a' if battery is None else f'{battery:.1f}'} battery min saved"
    )


def spillover_section(episodes: list[dict[str, Any]], moves: list[dict[str, Any]]) -> Section:
    """``episodes``: the latest record of each episode of the run (site_id, started_ms, ended_ms,
    worst_state, tasks_spilled, sessions_shed, slot_hours_shifted, battery_minutes_saved); ``moves``:
    lifecycle rows (task_id, site_id, reason) of this run's tasks with a spillover reason."""
    section = Section("Spillover: work moved from sites to the fleet")
    by_reason: dict[str, set[str]] = defaultdict(set)
    for m in moves:
        by_reason[m["reason"]].add(m["task_id"])
    spilled = sum(e["tasks_spilled"] for e in episodes)
    shed = sum(e["sessions_shed"] for e in episodes)
    if not episodes:
        section.lines.append("No spillover episodes in this run: no site stopped taking work.")
    else:
        battery = [e["battery_minutes_saved"] for e in episodes if e["battery_minutes_saved"] is not None]
        still_open = sum(e["ended_ms"] is None for e in episodes)
        section.lines.append(
            f"{len(episodes)} episodes at {len({e['site_id'] for e in episodes})} sites ({still_open} still "
            f"open): {spilled + shed} tasks moved ({spilled} spilled, {shed} shed), "
            f"{sum(e['slot_hours_shifted'] for e in episodes):.2f} slot-hours shifted to the fleet, "
            + (f"{sum(battery):.1f} battery minutes saved" if battery else "battery minutes saved not known")
        )
        ordered = sorted(episodes, key=lambda e: (e["started_ms"], e["site_id"]))
        section.lines += [_episode_line(e) for e in ordered]
    if episodes or moves:
        counts = ", ".join(f"{r} {len(by_reason[r])}" for r in MOVE_REASONS if by_reason[r]) or "none"
        lifecycle_shed = len(set().union(*(by_reason[r] for r in MOVE_REASONS if r != SPILLED)))
        agree = (len(by_reason[SPILLED]), lifecycle_shed) == (spilled, shed)
        section.lines.append(
            f"lifecycle: tasks moved off sites by reason: {counts}"
            + ("" if agree else f" (the episodes count {spilled} spilled, {shed} shed)")
        )
    return section
