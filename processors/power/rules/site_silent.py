"""SITE_SILENT: no event from the site for ``silent_after_s`` of processing time (the one rule on
processing time: ``idle`` signals from ``Detector.on_tick``). Its parent is the open FAILOVER (or
FAILED_TRANSFER), which makes it critical; resolves on the site's next event.
"""

from __future__ import annotations

from processors.power.config import PowerConfig
from processors.power.kinds import FAILED_TRANSFER, FAILOVER, SITE_SILENT
from processors.power.rules.base import Rule, Signal
from processors.power.rules.base import fmt_duration as _dur
from processors.power.rules.base import fmt_time as _t
from processors.power.rules.site import Site

__all__ = ["SiteSilentRule"]

KEY = "silent"


class SiteSilentRule(Rule):
    kinds = (SITE_SILENT,)
    signals = frozenset({"arrival", "idle"})

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.after = config.us(config.silent_after_s)

    def on_signal(self, site: Site, sig: Signal) -> None:
        inc = site.open.get(KEY)
        if sig.name == "arrival":
            if inc is not None:
                t = max(sig.t, inc["start"])
                silence = _dur(t - inc["start"])
                text = f"{site.site_id}: events flowing again after {silence} of silence"
                site.emit(KEY, "RESOLVED", t, text, ended=t)
            return
        if inc is not None or sig.idle < self.after:
            return
        last = sig.last_ts
        assert last is not None
        parent = site.open_id(FAILOVER) or site.open_id(FAILED_TRANSFER)
        during = f" during open incident {parent}" if parent else ""
        site.open_incident(
            KEY,
            SITE_SILENT,
            last,
            sig.t,
            f"{site.site_id}: no events for {_dur(sig.idle)} (last event at {_t(last)}){during}; "
            f"check the site controller and its uplink",
            parent=parent,
        )
