"""FAILOVER: the off-grid episode of a site, and the state machine every other rule hangs off.

Phases (``Site.phase``)::

    NORMAL --source lost--> SOURCE_LOST --alternate on load--> ON_ALTERNATE --load to grid--> RETRANSFER
       ^                        |  (blip / grid back, no transfer)                               |  |
       +------------------------+<------------- stable on grid for retransfer_stable_s ----------+  |
                                 <------------- grid lost again (flapping) -------------------------+

The episode (``site.ep``) opens its incident once an alternate source carries the load and the site has
been off grid for ``blip_ignore_s`` (at once on ISLAND_ENTER); it resolves after the site has been back
on grid, stable, for ``retransfer_stable_s``. What it decides on the way it publishes as signals
(``transferred``, ``grid_back``, ``source_change``, ``flap``, ``episode_end``) for the rules of the
kinds that hang off it.

A late SOE record (``site.late``) older than the last applied source event is superseded: it changes
no source. A late one that is newest is applied in its own event time, so a late TRANSFER still
measures the transfer from the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from processors.power.config import PowerConfig
from processors.power.events import ALTERNATE_SOURCES, Event
from processors.power.kinds import FAILOVER
from processors.power.rules.base import Rule, Signal
from processors.power.rules.base import fmt_duration as _dur
from processors.power.rules.base import fmt_time as _t
from processors.power.rules.site import Site

__all__ = ["FailoverRule"]

KEY = "failover"


def new_episode(start: int, lost_at: int | None, source_from: str) -> dict[str, Any]:
    return {
        "start": start,
        "lost_at": lost_at,
        "from": source_from,
        "to": None,
        "alt_since": None,
        "alt_total": 0,
        "islanded": False,
        "open": False,
        "open_due": None,
        "transfer_ms": None,
        "transfer_device": None,
        "retransfer_at": None,
        "restored_at": None,
        "failed_for": None,  # the lost_at a FAILED_TRANSFER was raised for (FailedTransferRule)
        "min_soc": None,
        "retransfers": 0,
    }


class FailoverRule(Rule):
    kinds = (FAILOVER,)
    watches = frozenset({"SOURCE_LOST", "SOURCE_RESTORED", "TRANSFER", "ISLAND_ENTER", "ISLAND_EXIT"})

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.blip = config.us(config.blip_ignore_s)
        self.stable = config.us(config.retransfer_stable_s)
        self._handlers: dict[str, Callable[[Site, Event], None]] = {
            "SOURCE_LOST": self._source_lost,
            "SOURCE_RESTORED": self._source_restored,
            "TRANSFER": self._transfer,
            "ISLAND_ENTER": self._island_enter,
            "ISLAND_EXIT": lambda site, e: self._back_on_grid(site, e["ts"]),
        }

    # -- interface -----------------------------------------------------------------------------
    def on_event(self, site: Site, e: Event) -> None:
        t = e["ts"]
        if site.source_ts is not None and t < site.source_ts:
            if site.late:
                return  # superseded: a later source change is already applied
        else:
            site.source_ts = t
        self._handlers[e["event_type"]](site, e)

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        ep = site.ep
        if ep is None:
            return None
        if not ep["open"] and ep["open_due"] is not None:
            return ep["open_due"], "open"
        if ep["retransfer_at"] is not None:
            return ep["retransfer_at"] + self.stable, "stable"
        return None

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        if tag == "open":
            self._open(site, due)
        else:
            self._end_episode(site, due)

    # -- records -------------------------------------------------------------------------------
    def _emit(self, site: Site, state: str, t: int, summary: str, ended: int | None = None) -> None:
        ep = site.ep
        assert ep is not None
        alt = ep["alt_total"] + (t - ep["alt_since"] if ep["alt_since"] is not None else 0)
        fields = {
            "transfer_ms": ep["transfer_ms"],
            "source_from": ep["from"] if ep["from"] != "NONE" else "GRID",
            "source_to": ep["to"],
            "time_on_alternate_ms": alt / 1000,
            "device_id": ep["transfer_device"],
        }
        site.emit(KEY, state, t, summary, ended=ended, fields=fields)

    def _open(self, site: Site, t: int) -> None:
        ep = site.ep
        assert ep is not None
        ep["open"] = True
        ep["open_due"] = None
        inc_id = f"{site.site_id}/FAILOVER/{ep['start']}"
        site.open[KEY] = {
            "id": inc_id,
            "kind": FAILOVER.name,
            "start": ep["start"],
            "device": ep["transfer_device"],
            "parent": None,
        }
        if ep["alt_since"] is not None:
            site.publish(Signal("source_change", ep["alt_since"]))
        how = "island entered" if ep["islanded"] else f"{ep['from']} -> {ep['to']}"
        xfer = (
            ""
            if ep["transfer_ms"] is None
            else f", transfer {_dur(ep['transfer_ms'] * 1000)} via {ep['transfer_device']}"
        )
        self._emit(site, "OPEN", t, f"{site.site_id}: failover at {_t(ep['start'])}, {how}{xfer}")
        site.adopt(inc_id)

    def _end_episode(self, site: Site, t: int) -> None:
        ep = site.ep
        assert ep is not None
        site.publish(Signal("episode_end", t))
        if ep["open"]:
            end = ep["retransfer_at"] if ep["retransfer_at"] is not None else t
            soc = "" if ep["min_soc"] is None else f", min battery {ep['min_soc']:.1f} %"
            self._emit(
                site,
                "RESOLVED",
                t,
                f"{site.site_id}: back to normal, on GRID since {_t(end)} and stable; "
                f"{_dur(ep['alt_total'])} on alternate{soc}",
                ended=end,
            )
        site.ep = None

    # -- events --------------------------------------------------------------------------------
    def _source_lost(self, site: Site, e: Event) -> None:
        t, src = e["ts"], e.get("source_from") or "GRID"
        ep = site.ep
        if ep is None:
            if src == "GRID" and site.source == "GRID":
                site.ep = new_episode(t, t, "GRID")
            return
        if ep["retransfer_at"] is not None and src == "GRID":
            # Grid lost again while proving it stable: same incident, and the site is flapping.
            since = t - ep["retransfer_at"]
            ep["retransfer_at"] = None
            ep["lost_at"] = t
            ep["from"] = "GRID"
            self._emit(
                site,
                "UPDATE",
                t,
                f"{site.site_id}: grid lost again {_dur(since)} after retransfer; load has no source",
            )
            site.publish(Signal("flap", t, why=f"grid lost again {_dur(since)} after retransfer"))
        elif ep["alt_since"] is not None and src == site.source:
            ep["alt_total"] += t - ep["alt_since"]
            ep["alt_since"] = None
            ep["lost_at"] = t
            ep["from"] = src
            if ep["open"]:
                self._emit(
                    site,
                    "UPDATE",
                    t,
                    f"{site.site_id}: alternate source {src} lost while islanded; load has no source",
                )

    def _source_restored(self, site: Site, e: Event) -> None:
        if (e.get("source_to") or e.get("source_from") or "GRID") != "GRID":
            return
        ep = site.ep
        if ep is None:
            return
        ep["restored_at"] = e["ts"]
        if ep["alt_since"] is None and ep["retransfer_at"] is None and ep["from"] == "GRID":
            self._back_on_grid(site, e["ts"])

    def _transfer(self, site: Site, e: Event) -> None:
        to, t = e.get("source_to"), e["ts"]
        if to in ALTERNATE_SOURCES:
            self._alternate_on_load(site, t, to, e)
        elif to == "GRID":
            self._back_on_grid(site, t)
        elif to == "NONE":
            self._load_dropped(site, t, e.get("source_from") or site.source)

    def _alternate_on_load(self, site: Site, t: int, to: str, e: Event) -> None:
        ep = site.ep
        if ep is None:
            ep = site.ep = new_episode(
                t, None, site.source if site.source not in ALTERNATE_SOURCES else "GRID"
            )
        if ep["alt_since"] is not None:  # alternate to alternate, e.g. battery bridge -> generators
            if to != ep["to"]:
                previous, ep["to"] = ep["to"], to
                site.source = to
                if ep["open"]:
                    self._emit(site, "UPDATE", t, f"{site.site_id}: load moved {previous} -> {to} at {_t(t)}")
            return
        if ep["lost_at"] is not None:
            lost_at = ep["lost_at"]
            ep["lost_at"] = None
            if ep["transfer_ms"] is None:
                ep["transfer_ms"], ep["transfer_device"] = (t - lost_at) / 1000, e["device_id"]
            site.publish(Signal("transferred", t, event=e, lost_at=lost_at, to=to))
        if ep["retransfer_at"] is not None:  # left the grid again before it proved stable
            since = t - ep["retransfer_at"]
            ep["retransfer_at"] = None
            site.publish(Signal("flap", t, why=f"left grid again {_dur(since)} after retransfer"))
        ep["alt_since"] = t
        ep["to"] = to
        site.source = to
        if ep["open"]:
            site.publish(Signal("source_change", t))
            self._emit(site, "UPDATE", t, f"{site.site_id}: load on {to} again at {_t(t)}")
            return
        due = max(t, ep["start"] + self.blip)
        if due <= t:
            self._open(site, t)
        else:
            ep["open_due"] = due

    def _load_dropped(self, site: Site, t: int, src: str) -> None:
        ep = site.ep
        if ep is None:
            if site.source == "GRID":
                site.ep = new_episode(t, t, "GRID")
                site.source = "NONE"
            return
        if ep["alt_since"] is not None:
            ep["alt_total"] += t - ep["alt_since"]
            ep["alt_since"] = None
            ep["lost_at"] = t
            ep["from"] = src
            site.source = "NONE"
            if ep["open"]:
                self._emit(site, "UPDATE", t, f"{site.site_id}: load dropped from {src}")

    def _back_on_grid(self, site: Site, t: int) -> None:
        ep = site.ep
        site.source = "GRID"
        if ep is None or ep["retransfer_at"] is not None:
            return
        if not ep["open"]:
            # Never a failover: a blip, or grid back before any alternate took the load.
            if t - ep["start"] < self.blip:
                site.stats["blips"] += 1
            self._end_episode(site, t)
            return
        if ep["alt_since"] is not None:
            ep["alt_total"] += t - ep["alt_since"]
            ep["alt_since"] = None
        ep["lost_at"] = None
        ep["retransfer_at"] = t
        ep["retransfers"] += 1
        site.publish(Signal("grid_back", t))
        site.publish(Signal("source_change", t))
        self._emit(
            site,
            "UPDATE",
            t,
            f"{site.site_id}: load back on GRID at {_t(t)} after {_dur(ep['alt_total'])} on alternate; "
            f"resolves after {_dur(self.stable)} stable",
        )

    def _island_enter(self, site: Site, e: Event) -> None:
        t = e["ts"]
        ep = site.ep
        if ep is None:
            ep = site.ep = new_episode(t, None, "GRID")
        ep["islanded"] = True
        if ep["retransfer_at"] is not None:
            since = t - ep["retransfer_at"]
            ep["retransfer_at"] = None
            site.publish(Signal("flap", t, why=f"islanded again {_dur(since)} after retransfer"))
            ep["alt_since"] = t
            site.publish(Signal("source_change", t))
        elif ep["alt_since"] is None and ep["lost_at"] is None:
            ep["alt_since"] = t
        to = e.get("source_to")
        if to in ALTERNATE_SOURCES and ep["alt_since"] is not None:
            ep["to"] = to
            site.source = to
        if not ep["open"]:
            self._open(site, t)
