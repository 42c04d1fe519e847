"""PQ_EXCURSION: while on an alternate source, a reading outside frequency ``freq_min_hz``..``freq_max_hz``
or in an IEEE 1159 voltage class (sag < 0.9 pu, swell > 1.1 pu, interruption < 0.1 pu). UPDATE when a
new class shows up; resolves after ``pq_clear_s`` without an out-of-bounds reading, or with the episode.
Readings of grid meters are ignored (they measure the lost grid).
"""

from __future__ import annotations

from typing import Any

from processors.power.config import PowerConfig
from processors.power.events import Event
from processors.power.kinds import PQ_EXCURSION
from processors.power.rules.base import EVERY_EVENT, Rule, Signal
from processors.power.rules.site import Site

__all__ = ["PowerQualityRule"]

KEY = "pq"


class PowerQualityRule(Rule):
    kinds = (PQ_EXCURSION,)
    watches = frozenset({EVERY_EVENT})
    signals = frozenset({"episode_end"})

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.clear = config.us(config.pq_clear_s)

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        inc = site.open.get(KEY)
        return None if inc is None else (inc["last"] + self.clear, KEY)

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        inc = site.open[KEY]
        site.emit(KEY, "RESOLVED", due, self._text(site, inc, resolved=True), ended=inc["last"])

    def on_signal(self, site: Site, sig: Signal) -> None:
        inc = site.open.get(KEY)
        if inc is not None:
            self.resolve_with_episode(site, KEY, sig.t, self._text(site, inc, resolved=True))

    def _classes(self, f: float | None, v: float | None) -> list[str]:
        cfg, classes = self.config, []
        if f is not None:
            if f < cfg.freq_min_hz:
                classes.append("underfrequency")
            elif f > cfg.freq_max_hz:
                classes.append("overfrequency")
        if v is not None:
            if v < cfg.voltage_interruption_pu:
                classes.append("interruption")
            elif v < cfg.voltage_sag_pu:
                classes.append("sag")
            elif v > cfg.voltage_swell_pu:
                classes.append("swell")
        return classes

    def on_event(self, site: Site, e: Event) -> None:
        f, v = e.get("frequency_hz"), e.get("voltage_pu")
        if (f is None and v is None) or e["device_type"] == "GRID_METER" or not site.on_alternate_at(e["ts"]):
            return
        classes = self._classes(f, v)
        if not classes:
            return
        t = e["ts"]
        inc = site.open.get(KEY)
        if inc is None:
            inc = site.open_incident(
                KEY, PQ_EXCURSION, t, t, "", device=e["device_id"], last=t, classes=classes,
                f_min=f, f_max=f, v_min=v, v_max=v, emit=False,
            )  # fmt: skip
            site.emit(KEY, "OPEN", t, self._text(site, inc))
            return
        inc["last"] = max(inc["last"], t)
        if f is not None:
            inc["f_min"] = f if inc["f_min"] is None else min(inc["f_min"], f)
            inc["f_max"] = f if inc["f_max"] is None else max(inc["f_max"], f)
        if v is not None:
            inc["v_min"] = v if inc["v_min"] is None else min(inc["v_min"], v)
            inc["v_max"] = v if inc["v_max"] is None else max(inc["v_max"], v)
        new = [c for c in classes if c not in inc["classes"]]
        if new:
            inc["classes"] = inc["classes"] + new
            site.emit(KEY, "UPDATE", t, self._text(site, inc))

    def _text(self, site: Site, inc: dict[str, Any], resolved: bool = False) -> str:
        cfg = self.config
        parts = []
        if inc["f_min"] is not None and (
            "underfrequency" in inc["classes"] or "overfrequency" in inc["classes"]
        ):
            parts.append(
                f"frequency {inc['f_min']:.2f}-{inc['f_max']:.2f} Hz (limits {cfg.freq_min_hz:g}-"
                f"{cfg.freq_max_hz:g})"
            )
        if inc["v_min"] is not None and {"sag", "swell", "interruption"} & set(inc["classes"]):
            parts.append(f"voltage {inc['v_min']:.3f}-{inc['v_max']:.3f} pu")
        what = f"{', '.join(inc['classes'])}: {'; '.join(parts)}"
        if resolved:
            return f"{site.site_id}: power quality back within limits (was {what})"
        on = site.ep["to"] if site.ep is not None and site.ep["to"] else "alternate source"
        return (
            f"{site.site_id}: power-quality excursion while islanded on {on}: {what}; check generator "
            f"governors/AVR and load steps"
        )
