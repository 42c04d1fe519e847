"""FAILED_TRANSFER: the normal source is lost and no alternate carries the load after ``failed_transfer_s``.

Batteries bridge the 10-30 s a generator needs, so past 30 s with nothing on load the load is at risk.
Resolves when an alternate takes the load (the late transfer is not also a SLOW_TRANSFER) or the load
is back on grid, and with the episode at the latest. Its parent is the FAILOVER only if one was open
when it fired: a failed transfer before the failover is confirmed precedes it.
"""

from __future__ import annotations

from processors.power.config import PowerConfig
from processors.power.kinds import FAILED_TRANSFER, FAILOVER
from processors.power.rules.base import Rule, Signal
from processors.power.rules.base import fmt_duration as _dur
from processors.power.rules.base import fmt_time as _t
from processors.power.rules.site import Site

__all__ = ["FailedTransferRule"]

KEY = "failed"


class FailedTransferRule(Rule):
    kinds = (FAILED_TRANSFER,)
    signals = frozenset({"transferred", "grid_back", "episode_end"})

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.after = config.us(config.failed_transfer_s)

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        ep = site.ep
        if ep is not None and ep["lost_at"] is not None and ep["failed_for"] != ep["lost_at"]:
            return ep["lost_at"] + self.after, KEY
        return None

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        ep = site.ep
        assert ep is not None
        lost_at = ep["failed_for"] = ep["lost_at"]
        site.open_incident(
            KEY,
            FAILED_TRANSFER,
            lost_at,
            due,
            f"{site.site_id}: {ep['from']} lost at {_t(lost_at)} and no alternate source on load "
            f"after {_dur(due - lost_at)}; load may be down: check ATS/STS, batteries and generators now",
            parent=site.open_id(FAILOVER),
            source_from=ep["from"],
        )

    def on_signal(self, site: Site, sig: Signal) -> None:
        if KEY not in site.open:
            return
        if sig.name == "transferred":
            assert site.ep is not None and sig.lost_at is not None
            site.emit(
                KEY,
                "RESOLVED",
                sig.t,
                f"{site.site_id}: {sig.to} took the load {_dur(sig.t - sig.lost_at)} after "
                f"{site.ep['from']} was lost",
                ended=sig.t,
            )
        elif sig.name == "grid_back":
            site.emit(
                KEY, "RESOLVED", sig.t, f"{site.site_id}: load back on GRID at {_t(sig.t)}", ended=sig.t
            )
        else:
            self.resolve_with_episode(site, KEY, sig.t)
