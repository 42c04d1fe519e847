"""FLAPPING: the power source changes again before the grid proved stable.

Fires when grid is lost (or left) again inside the retransfer delay (``flap`` signal from the FAILOVER
rule), or on ``flap_changes`` grid <-> alternate changes within ``flap_window_s`` (``source_change``);
resolves after ``retransfer_stable_s`` without a change. Its own state: the times of recent changes
(``changes`` in the stored state).
"""

from __future__ import annotations

from typing import Any

from processors.power.config import PowerConfig
from processors.power.kinds import FLAPPING
from processors.power.rules.base import Rule, Signal
from processors.power.rules.base import fmt_duration as _dur
from processors.power.rules.site import Site

__all__ = ["FlappingRule"]

KEY = "flap"
_MAX_CHANGES = 1_000  # a bound on the window's list: far more than ``flap_changes`` can ever need


class FlappingRule(Rule):
    kinds = (FLAPPING,)
    signals = frozenset({"flap", "source_change"})
    state_key = "changes"

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.window = config.us(config.flap_window_s)
        self.stable = config.us(config.retransfer_stable_s)
        self.changes: list[int] = []  # times of grid<->alternate changes within the flap window

    def snapshot(self) -> list[int]:
        return list(self.changes)

    def restore(self, data: Any) -> None:
        self.changes = list(data or [])

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        inc = site.open.get(KEY)
        return None if inc is None else (inc["last"] + self.stable, KEY)

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        inc = site.open[KEY]
        site.emit(
            KEY,
            "RESOLVED",
            due,
            f"{site.site_id}: power source stable for {_dur(self.stable)} after flapping "
            f"({inc['count']} source changes)",
            ended=inc["last"],
        )

    def on_signal(self, site: Site, sig: Signal) -> None:
        if sig.name == "flap":
            self._flap(site, sig.t, sig.why)
        else:
            self._count_change(site, sig.t)

    def _flap(self, site: Site, t: int, why: str) -> None:
        inc = site.open.get(KEY)
        if inc is None:
            site.open_incident(
                KEY,
                FLAPPING,
                t,
                t,
                f"{site.site_id}: power source flapping: {why}; "
                f"hold the site on its alternate source until grid is stable",
                last=t,
                count=1,
            )
        else:
            inc["last"] = t
            inc["count"] += 1
            site.emit(KEY, "UPDATE", t, f"{site.site_id}: still flapping: {why}")

    def _count_change(self, site: Site, t: int) -> None:
        changes = self.changes
        changes.append(t)
        horizon = t - self.window
        while changes and changes[0] < horizon:
            changes.pop(0)
        del changes[:-_MAX_CHANGES]
        if len(changes) < self.config.flap_changes:
            return
        inc = site.open.get(KEY)
        if inc is None:
            site.open_incident(
                KEY,
                FLAPPING,
                changes[0],
                t,
                f"{site.site_id}: power source changed {len(changes)} times in "
                f"{_dur(t - changes[0])}; hold the site on one source until grid is stable",
                last=t,
                count=len(changes),
            )
        elif inc["last"] != t:
            inc["last"] = t
            inc["count"] += 1
