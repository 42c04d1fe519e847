"""FAILED_TRANSFER: the transfer to an alternate source failed.

Two ways to know it:

* no alternate carries the load ``failed_transfer_s`` after the normal source was lost (nothing
  reported: batteries bridge the 10-30 s a generator needs, so past 30 s the load is at risk); or
* an alternate takes the load *from NONE* (the switch reports that the load had no source) later than
  the switch's allowance (``ats_transfer_limit_ms``, NFPA 110 Type 10): the first transfer failed and
  the load was dark until, say, generators picked it up. That is opened and resolved at once, at the
  transfer, and is not also a SLOW_TRANSFER: a slow transfer moves a load that some source still fed.

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
            if sig.name == "transferred" and self._dark_too_long(site, sig):
                self._failed_then_restored(site, sig)
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

    def _dark_too_long(self, site: Site, sig: Signal) -> bool:
        e, ep = sig.event, site.ep
        if e is None or ep is None or sig.lost_at is None or ep["failed_for"] == sig.lost_at:
            return False
        dark_ms = (sig.t - sig.lost_at) / 1000
        return e.get("source_from") == "NONE" and dark_ms > self.config.ats_transfer_limit_ms

    def _failed_then_restored(self, site: Site, sig: Signal) -> None:
        ep, e, lost_at = site.ep, sig.event, sig.lost_at
        assert ep is not None and e is not None and lost_at is not None
        ep["failed_for"] = lost_at  # the SLOW_TRANSFER rule, after this one, leaves it to us
        dark = _dur(sig.t - lost_at)
        site.open_incident(
            KEY,
            FAILED_TRANSFER,
            lost_at,
            sig.t,
            f"{site.site_id}: {ep['from']} lost at {_t(lost_at)} and the load had no source for {dark} "
            f"(allowance {_dur(self.config.ats_transfer_limit_ms * 1000)}) until {sig.to} took it via "
            f"{e['device_type']} {e['device_id']}: the first transfer failed; check ATS/STS and batteries",
            parent=site.open_id(FAILOVER),
            device=e["device_id"],
            transfer_ms=(sig.t - lost_at) / 1000,
            source_from=ep["from"],
            source_to=sig.to,
        )
        site.emit(KEY, "RESOLVED", sig.t, f"{site.site_id}: {sig.to} took the load after {dark}", ended=sig.t)
