"""The site power state (``sites.power_state.v1``): follows the other rules and publishes a record when
what a consumer must know changes. The states are derived by ``processors.power.site_state.derive``.

It runs last (``RULES``), on every applied event and after every rule timer (the detector's ``timer``
signal), so it sees what the event or timer led to; it fires no incident. What it keeps itself:

* the retransfer clock ``grid_since``: when utility power came back (SOURCE_RESTORED of the grid, or
  the load back on grid, whichever first) and has stayed; a grid loss, or the load leaving the grid
  again (the FAILOVER's ``flap``), stops it. GRID comes once the load is back on grid and the clock has
  run ``retransfer_stable_s``: a timer (``notify_at``), so a site that is quiet after its retransfer
  still returns to GRID when the detector's clock moves on (ticks);
* the latest battery state of charge of each device that reports one (grid meters excluded, as for
  BATTERY_RESERVE): the site's is the mean of those of the last ``device_forget_s``;
* the last record published, to publish only changes: a new state, incident or ``grid_since``, or a
  battery runtime that moved (``site_state.runtime_moved``: ``runtime_step_min``/``runtime_step_pct``).
  A site that never left the grid has no record: which of its events came first depends on delivery
  (a device first heard late), and records must not.

Records are stamped with the event time that decided them (never before the last record, nor, for a
late SOE event, before the latest applied event time), so a replay publishes the same records.
``since`` is when the state began: leaving GRID, the start of the episode (when the site lost the grid).
"""

from __future__ import annotations

from typing import Any

from processors.power.config import PowerConfig
from processors.power.events import Event, SitePowerState
from processors.power.rules.base import EVERY_EVENT, Rule, Signal
from processors.power.rules.site import Site
from processors.power.site_state import GRID, battery_runtime_min, derive, runtime_moved

__all__ = ["SitePowerRule"]


class SitePowerRule(Rule):
    watches = frozenset({EVERY_EVENT})
    signals = frozenset({"grid_back", "flap", "episode_end", "timer"})
    state_key = "power_state"

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.stable = config.us(config.retransfer_stable_s)
        self.soc_horizon = config.us(config.device_forget_s)
        self.battery_mwh: float | None = None  # of the site: known at the first call
        self.last: dict[str, Any] | None = None  # the last record published (``SitePowerState`` fields)
        self.grid_since: int | None = None
        self.soc: dict[str, list[float]] = {}  # device -> [event time, state of charge]
        self.due: int | None = None  # when the retransfer clock makes the site GRID

    # -- interface -----------------------------------------------------------------------------
    def on_event(self, site: Site, e: Event) -> None:
        soc = e.get("battery_soc_pct")
        if soc is not None and e["device_type"] != "GRID_METER":
            known = self.soc.get(e["device_id"])
            if known is None or e["ts"] >= known[0]:  # a late reading never overwrites a newer one
                self.soc[e["device_id"]] = [e["ts"], soc]
                horizon = e["ts"] - self.soc_horizon
                for device in [d for d, v in self.soc.items() if v[0] < horizon]:
                    del self.soc[device]
        event_type = e["event_type"]
        if event_type == "SOURCE_LOST" or event_type == "SOURCE_RESTORED":
            self._grid_clock(site, e)
        last = self.last
        if site.ep is None and (last is None or last["state"] == GRID):
            return  # on grid and published as such (or never off it): nothing to decide
        if (
            event_type == "MEASUREMENT"
            and soc is None
            and (site.source != "BATTERY" or "load_mw" not in e)
            and last is not None
        ):
            return  # a reading that moves neither the state (timers come as signals) nor the runtime
        self._update(site, e["ts"])

    def on_signal(self, site: Site, sig: Signal) -> None:
        name = sig.name
        if name == "grid_back":
            if self.grid_since is None:
                self.grid_since = sig.t
        elif name == "timer":
            self._update(site, sig.t)
        else:  # flap, episode_end: the retransfer clock stops
            self.grid_since = None

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        due = self.due
        return None if due is None else (due, "grid")

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        self._update(site, due)

    def snapshot(self) -> Any:
        return {"last": self.last, "grid_since": self.grid_since, "soc": self.soc, "due": self.due}

    def restore(self, data: Any) -> None:
        if data is None:  # a state of a release before the power state: publish it if it is not GRID
            return
        self.last = None if data["last"] is None else dict(data["last"])
        self.grid_since = data["grid_since"]
        self.soc = {device: list(v) for device, v in data["soc"].items()}
        self.due = data["due"]

    # -- state ---------------------------------------------------------------------------------
    def _grid_clock(self, site: Site, e: Event) -> None:
        """Utility power lost or back, as the grid meter says (even while the load stays on alternate)."""
        t = e["ts"]
        if site.late and site.source_ts is not None and t < site.source_ts:
            return  # superseded by a later source event (the FAILOVER rule ignores it too)
        if e["event_type"] == "SOURCE_LOST":
            if (e.get("source_from") or "GRID") == "GRID":
                self.grid_since = None
        elif (e.get("source_to") or e.get("source_from") or "GRID") == "GRID" and site.ep is not None:
            self.grid_since = t if self.grid_since is None else self.grid_since

    def _update(self, site: Site, t: int) -> None:
        """Derive the state at event time ``t`` and publish a record if a consumer should know."""
        state, incident_id, on_grid_again = derive(site)
        grid_since = self.grid_since
        self.due = None
        if on_grid_again:
            if grid_since is None:  # a state stored before this rule existed: the retransfer starts it
                assert site.ep is not None
                grid_since = self.grid_since = site.ep["retransfer_at"]
            due = grid_since + self.stable
            if t >= due:
                state, incident_id = GRID, None
            else:
                self.due = due
        if state == GRID:
            grid_since = None
        runtime = self._runtime(site, t) if site.source == "BATTERY" and state != GRID else None
        last = self.last
        cfg = self.config
        if last is None and state == GRID:
            return  # a site that never left the grid has no record (consumers take it as GRID)
        if (
            last is not None
            and last["state"] == state
            and last["incident_id"] == incident_id
            and last["grid_since"] == grid_since
            and not runtime_moved(last["runtime"], runtime, cfg.runtime_step_min, cfg.runtime_step_pct)
        ):
            return
        ts = t if site.floor_us is None else max(t, site.floor_us)
        if last is not None:
            ts = max(ts, last["ts"])
        if last is not None and last["state"] == state:
            since = last["since"]
        else:
            since = ts
            ep = site.ep
            # Leaving GRID: since the episode began (the grid loss), unless the episode already had a
            # GRID record (utility back early, then lost again before the FAILOVER resolved).
            if (
                state != GRID
                and ep is not None
                and (last is None or (last["state"] == GRID and ep["start"] >= last["since"]))
            ):
                since = min(ts, ep["start"])
        soc = self._soc(t)
        self.last = {"state": state, "ts": ts, "since": since, "incident_id": incident_id,
                     "grid_since": grid_since, "runtime": runtime}  # fmt: skip
        site.out.append(
            SitePowerState(
                site_id=site.site_id,
                ts_us=ts,
                state=state,
                since_us=since,
                battery_runtime_min=runtime,
                incident_id=incident_id,
                load_mw=site.load_mw,
                battery_soc_pct=soc,
                grid_since_us=grid_since,
            )
        )

    def _soc(self, t: int) -> float | None:
        """The mean of the devices' latest readings, those of the last ``device_forget_s`` before ``t``
        (event time, not the reorder buffer's forgetting, which depends on what has arrived)."""
        horizon = t - self.soc_horizon
        readings = [v[1] for v in self.soc.values() if v[0] >= horizon]
        return round(sum(readings) / len(readings), 2) if readings else None

    def _runtime(self, site: Site, t: int) -> float | None:
        if self.battery_mwh is None:
            self.battery_mwh = self.config.battery_mwh_of(site.site_id)
        cfg = self.config
        return battery_runtime_min(self.battery_mwh, self._soc(t), cfg.battery_reserve_pct, site.load_mw)
