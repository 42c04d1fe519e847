"""GEN_START_FAILURE: a generator reported GEN_FAIL, or no GEN_RUNNING ``gen_start_timeout_s`` after
GEN_START. One incident per generator (``gen:<device>``); resolves when that generator reports
GEN_RUNNING or GEN_STOP. Keeps the site's generator facts (``site.gens``) up to date. A late generator
event older than one already applied for that generator changes nothing.

Bounded per site: a generator's last event time is dropped when the device is forgotten; at most
``max_devices`` generators count as running and ``max_devices`` start failures are open (past it, the
oldest start failure is resolved as "too many", an overload no real site reaches).
"""

from __future__ import annotations

from processors.power.config import PowerConfig
from processors.power.events import Event
from processors.power.kinds import GEN_START_FAILURE
from processors.power.rules.base import Rule
from processors.power.rules.base import fmt_duration as _dur
from processors.power.rules.base import fmt_time as _t
from processors.power.rules.site import Site

__all__ = ["GeneratorRule"]


class GeneratorRule(Rule):
    kinds = (GEN_START_FAILURE,)
    watches = frozenset({"GEN_START", "GEN_RUNNING", "GEN_STOP", "GEN_FAIL"})

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.timeout = config.us(config.gen_start_timeout_s)

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for dev, start in site.gens["starts"].items():
            if best is None or start + self.timeout < best[0]:
                best = (start + self.timeout, dev)
        return best

    def forget(self, site: Site, devices: list[str]) -> None:
        last = site.gens["last"]
        for dev in devices:
            last.pop(dev, None)

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        start = site.gens["starts"].pop(tag)
        self._fail(site, tag, due, f"no GEN_RUNNING {_dur(due - start)} after GEN_START at {_t(start)}")

    def on_event(self, site: Site, e: Event) -> None:
        t, dev, kind = e["ts"], e["device_id"], e["event_type"]
        gens = site.gens
        last = gens["last"]  # device -> event time of its last applied generator event
        if site.late and last.get(dev, t) > t:
            return  # superseded: e.g. a GEN_START uploaded after that generator already stopped
        last[dev] = t
        gens["seen"] = True
        key = "gen:" + dev
        if kind == "GEN_START":
            if dev not in gens["running"]:
                gens["starts"].setdefault(dev, t)
            return
        start = gens["starts"].pop(dev, None)
        if kind == "GEN_RUNNING":
            if dev not in gens["running"]:
                gens["running"].append(dev)
                del gens["running"][: -self.config.max_devices]
            if key in site.open:
                site.emit(key, "RESOLVED", t, f"{site.site_id}: generator {dev} running at {_t(t)}", ended=t)
            return
        if dev in gens["running"]:
            gens["running"].remove(dev)
        if kind == "GEN_STOP":
            if key in site.open:
                site.emit(
                    key, "RESOLVED", t, f"{site.site_id}: generator {dev} stopped/reset at {_t(t)}", ended=t
                )
        elif key not in site.open:  # GEN_FAIL
            why = f"GEN_FAIL{': ' + e['detail'] if e.get('detail') else ''}"
            if start is not None:
                why += f" {_dur(t - start)} after GEN_START"
            self._fail(site, dev, t, why)

    def _fail(self, site: Site, dev: str, t: int, why: str) -> None:
        key = "gen:" + dev
        if key in site.open:
            return
        failures = [k for k in site.open if k.startswith("gen:")]
        if len(failures) >= self.config.max_devices:
            oldest = min(failures, key=lambda k: (site.open[k]["start"], k))
            site.emit(
                oldest, "RESOLVED", t, f"{site.site_id}: more than {self.config.max_devices} generator "
                "start failures open at once; the oldest is closed", ended=t,
            )  # fmt: skip
        site.open_incident(
            key,
            GEN_START_FAILURE,
            t,
            t,
            f"{site.site_id}: generator {dev} failed to start ({why}); "
            f"{site.gens_online() or 0} generators online, dispatch a technician",
            device=dev,
            id_suffix=dev,
        )
