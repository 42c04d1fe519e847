"""BATTERY_RESERVE: a battery's state of charge at or below ``battery_reserve_pct`` while the site runs
on an alternate source. Resolves above reserve + ``battery_hysteresis_pct``, or with the episode.
Readings of grid meters are ignored (they measure the lost grid).
"""

from __future__ import annotations

from processors.power.events import Event
from processors.power.kinds import BATTERY_RESERVE
from processors.power.rules.base import EVERY_EVENT, Rule, Signal
from processors.power.rules.site import Site

__all__ = ["BatteryReserveRule"]

KEY = "battery"


class BatteryReserveRule(Rule):
    kinds = (BATTERY_RESERVE,)
    watches = frozenset({EVERY_EVENT})
    signals = frozenset({"episode_end"})

    def on_signal(self, site: Site, sig: Signal) -> None:
        self.resolve_with_episode(site, KEY, sig.t)

    def on_event(self, site: Site, e: Event) -> None:
        soc = e.get("battery_soc_pct")
        if soc is None or e["device_type"] == "GRID_METER" or not site.on_alternate_at(e["ts"]):
            return
        t, cfg, ep = e["ts"], self.config, site.ep
        assert ep is not None
        inc = site.open.get(KEY)
        if inc is None and soc <= cfg.battery_reserve_pct:
            site.open_incident(
                KEY,
                BATTERY_RESERVE,
                t,
                t,
                f"{site.site_id}: battery {e['device_id']} at {soc:.1f} % (reserve "
                f"{cfg.battery_reserve_pct:g} %) while islanded on {ep['to'] or 'alternate'}; start "
                f"generators or shed load now",
                device=e["device_id"],
            )
        elif inc is not None and soc > cfg.battery_reserve_pct + cfg.battery_hysteresis_pct:
            site.emit(
                KEY,
                "RESOLVED",
                t,
                f"{site.site_id}: battery back to {soc:.1f} % (min {ep['min_soc']:.1f} %)",
                ended=t,
            )
