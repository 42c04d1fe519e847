"""LOAD_SHED: the site controller shed load (a LOAD_SHED event). Inside a failover it is the failover's
child and resolves with it; outside one it resolves after ``load_shed_hold_s`` without further shedding.
"""

from __future__ import annotations

from typing import Any

from processors.power.config import PowerConfig
from processors.power.events import Event
from processors.power.kinds import LOAD_SHED
from processors.power.rules.base import Rule, Signal
from processors.power.rules.site import Site

__all__ = ["LoadShedRule"]

KEY = "shed"


class LoadShedRule(Rule):
    kinds = (LOAD_SHED,)
    watches = frozenset({"LOAD_SHED"})
    signals = frozenset({"episode_end"})

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.hold = config.us(config.load_shed_hold_s)

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        inc = site.open.get(KEY)
        return None if inc is None or site.ep is not None else (inc["last"] + self.hold, KEY)

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        inc = site.open[KEY]
        site.emit(KEY, "RESOLVED", due, self._text(site, inc, resolved=True), ended=inc["last"])

    def on_signal(self, site: Site, sig: Signal) -> None:
        inc = site.open.get(KEY)
        if inc is not None:
            self.resolve_with_episode(site, KEY, sig.t, self._text(site, inc, resolved=True))

    def on_event(self, site: Site, e: Event) -> None:
        t = e["ts"]
        inc = site.open.get(KEY)
        if inc is None:
            inc = site.open_incident(
                KEY, LOAD_SHED, t, t, "", device=e["device_id"], count=1, last=t, detail=e.get("detail"),
                emit=False,
            )  # fmt: skip
            site.emit(KEY, "OPEN", t, self._text(site, inc))
            return
        inc["count"] += 1
        inc["last"] = max(inc["last"], t)
        if e.get("detail"):
            inc["detail"] = e["detail"]
        site.emit(KEY, "UPDATE", t, self._text(site, inc))

    @staticmethod
    def _text(site: Site, inc: dict[str, Any], resolved: bool = False) -> str:
        load = "" if site.load_mw is None else f", load now {site.load_mw:g} MW"
        detail = f" ({inc['detail']})" if inc.get("detail") else ""
        if resolved:
            return f"{site.site_id}: load shedding over after {inc['count']} shed event(s){load}"
        where = f" while on {site.ep['to'] or 'alternate'}" if site.ep is not None else ""
        return (
            f"{site.site_id}: load shed{where}: {inc['count']} shed event(s){detail}{load}; "
            f"check which workloads were dropped"
        )
