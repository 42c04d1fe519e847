"""The compute side of one datacenter site (issue 16): its emulator hall on the site's power.

``ComputeSite`` belongs to a ``simulator.power.Site`` when ``SimConfig.site_compute`` is on. It holds the
site's ``SiteCapacity``, the ``SiteController`` that runs sessions on ``site:<site_id>``, and the
``IslandLog`` of its truth. The site calls ``tick`` at every background reading (the battery drains with
the load while it carries the site) and ``changed`` after every power event; ``changed`` works out the
site's power state and reacts as a site controller would:

1. back on generators or the grid, a cut emulator hall is powered again;
2. on a long battery island, the battery at its reserve calls the mobile generators (on load
   ``reserve_gen_delay_min`` later, unless the grid is back first);
3. the battery at ``trip_soc_pct`` cuts the emulator hall (its sessions fail, a LOAD_SHED event);
4. the controller hears the new state (capacity report at once), and the island log records it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from simulator.islands import LONG_BATTERY, Island, IslandLog, long_island_script
from simulator.power_devices import ATS, BESS, CTL, MS, Failover, S, Step, retransfer
from simulator.rng import rng_for
from simulator.site_compute import BATTERY_RESERVE_PCT, SiteCapacity, power_state
from simulator.site_controller import SiteController

if TYPE_CHECKING:
    from simulator.context import WorldContext as World


class Site(Protocol):
    """What the compute side sees of its ``simulator.power.Site`` (which owns it)."""

    site_id: str
    region: str
    gens: int
    state: dict[str, Any]

    def load_mw(self, t_ms: int) -> float: ...
    def total_load_mw(self, t_ms: int) -> float: ...
    def emit(self, ts_us: int, device_id: str, event_type: str, fields: dict[str, Any]) -> None: ...
    def happen(self, step: Step) -> None: ...


class ComputeSite:
    def __init__(self, world: World, site: Site, index: int) -> None:
        self.w = world
        self.site = site
        self.config = world.config.site_compute
        self.rng = rng_for(world.config.seed, "site-compute", index)
        self.capacity = SiteCapacity.draw(self.config, self.rng, site.site_id, site.region)
        self.controller = SiteController(world, self.capacity)
        self.islands = IslandLog(site.site_id, world.truth.write)
        self.scenario: str | None = None  # of the next island: LONG_BATTERY or the scripted fault
        self.long: Failover | None = None  # the long battery island planned or under way
        self.gens_called = False
        self.gens_online = False
        self.tripped = False

    def start(self) -> None:
        self.controller.start()

    def emulator_mw(self) -> float:
        return self.controller.emulator_mw()

    def power_state(self) -> str:
        st = self.site.state
        return power_state(st["grid"], st["source"], st["battery"], self.tripped)

    # -- the site's clock and events --------------------------------------------------------------
    def tick(self, dt_ms: int) -> None:
        """A background reading: the battery gave ``dt_ms`` of the current load if it carried it."""
        st = self.site.state
        if st["source"] == "BATTERY":
            load = self.site.total_load_mw(self.w.q.now)
            st["battery"] = max(0.0, st["battery"] - self.capacity.battery_drain_pct(load, dt_ms))
        self.changed()

    def changed(self) -> None:
        st, now = self.site.state, self.w.q.now
        on_battery = st["source"] == "BATTERY"
        if self.tripped and not on_battery:
            self.tripped = False
        if (
            on_battery
            and self.long is not None
            and not self.gens_called
            and st["battery"] <= BATTERY_RESERVE_PCT
        ):
            self._call_generators()
        cut = on_battery and not self.tripped and st["battery"] <= self.config.trip_soc_pct
        if cut:
            self.tripped = True
        running = self.controller.running
        state = self.power_state()
        self.controller.power_changed(state)
        ended = self.islands.observe(now, state, st["battery"], on_battery, self.scenario)
        if cut:
            self._report_cut(running - self.controller.running)
        if ended is not None and ended.scenario == LONG_BATTERY and self.long is not None:
            self._write_long_truth(ended, self.long)
            self.long = None

    def close(self) -> None:
        """At the run's end: the island still under way goes to the truth (open)."""
        isl = self.islands.close_open(self.w.q.now)
        if isl is not None and isl.scenario == LONG_BATTERY and self.long is not None:
            self._write_long_truth(isl, self.long)

    # -- the long battery island ------------------------------------------------------------------
    def plan_long_island(self, t0_ms: int) -> bool:
        """Maybe make the day's failover at ``t0_ms`` a long battery island; True when it did."""
        rng, config = self.rng, self.config
        if rng.random() >= config.long_failover_share:
            return False
        island_s = rng.uniform(*config.long_island_min) * 60
        delay_s = rng.uniform(*self.w.config.retransfer_delay_s)
        site = self.site
        script = long_island_script(rng, site.site_id, t0_ms * 1000, site.load_mw(t0_ms), island_s, delay_s)
        self.long, self.scenario = script, LONG_BATTERY
        self.gens_called = self.gens_online = False
        self.w.counters["long_islands"] += 1
        for step in script.steps:
            self.w.q.schedule(step.ts_us // 1000, site.happen, step)
        self.w.q.schedule(script.end_us // 1000, self._retransfer)
        return True

    def _call_generators(self) -> None:
        self.gens_called = True
        st, now = self.site.state, self.w.q.now
        delay_min = self.rng.uniform(*self.config.reserve_gen_delay_min)
        soc = round(st["battery"], 1)
        self.site.emit(
            now * 1000,
            BESS,
            "ALARM",
            {
                "battery_soc_pct": soc,
                "detail": f"battery at reserve ({BATTERY_RESERVE_PCT:.0f} %) while islanded",
            },
        )
        self.site.emit(
            now * 1000 + 50 * MS,
            CTL,
            "ALARM",
            {"detail": f"mobile generators called, on load in about {delay_min:.0f} min"},
        )
        self.w.q.schedule(now + int(delay_min * 60_000), self._generators_arrive)

    def _generators_arrive(self) -> None:
        if self.site.state["source"] != "BATTERY":
            return  # the grid came back first
        now_us = self.w.q.now * 1000
        gens = [f"gen-{i + 1}" for i in range(self.site.gens)]
        running = sorted(now_us + int(self.rng.uniform(10.0, 20.0) * S) for _ in gens)
        for i, g in enumerate(gens):
            self._step(now_us + i * 50 * MS, g, "GEN_START", None, {})
            self._step(running[i], g, "GEN_RUNNING", {"gens": i + 1}, {"gens_online": i + 1})
        self.w.q.schedule(running[-1] // 1000 + 1_000, self._generators_take_load, len(gens))

    def _generators_take_load(self, gens: int) -> None:
        if self.site.state["source"] != "BATTERY":
            return
        self.gens_online = True
        now_us = self.w.q.now * 1000
        self._step(
            now_us,
            ATS,
            "TRANSFER",
            {"source": "GENERATOR"},
            {
                "source_from": "BATTERY",
                "source_to": "GENERATOR",
                "gens_online": gens,
                "load_mw": round(self.site.load_mw(self.w.q.now), 2),
            },
        )  # happen() adds the sessions

    def _retransfer(self) -> None:
        st = self.site.state
        if st["source"] == "GRID":
            return
        now_us = self.w.q.now * 1000
        gens = [f"gen-{i + 1}" for i in range(self.site.gens)] if self.gens_online else None

        def add(
            at_us: float, dev: str, event: str, state: dict[str, Any] | None = None, **fields: Any
        ) -> None:
            self._step(now_us + int(at_us), dev, event, state, fields)

        retransfer(add, 0, gens, source_from=st["source"])

    def _step(
        self, ts_us: int, device: str, event: str, state: dict[str, Any] | None, fields: dict[str, Any]
    ) -> None:
        self.w.q.schedule(ts_us // 1000, self.site.happen, Step(ts_us, 0, device, event, fields, state))

    # -- what happened ----------------------------------------------------------------------------
    def _report_cut(self, sessions: int) -> None:
        now = self.w.q.now
        if self.islands.current is not None:
            self.islands.current.sessions_lost += sessions
        self.w.counters["site_hall_cuts"] += 1
        soc = self.site.state["battery"]
        self.site.emit(
            now * 1000,
            CTL,
            "LOAD_SHED",
            {
                "load_mw": round(self.site.total_load_mw(now), 2),
                "battery_soc_pct": round(soc, 1),
                "detail": f"emulator hall cut at battery {soc:.1f} %: {sessions} sessions stopped",
            },
        )

    def _write_long_truth(self, isl: Island, script: Failover) -> None:
        self.w.truth.write(
            {
                "type": "failover",
                "site_id": script.site_id,
                "started_at_us": script.start_us,
                "ended_at_us": script.end_us,
                "fault": None,
                "expected_incidents": ["FAILOVER"]
                + (["BATTERY_RESERVE"] if isl.reserve_at is not None else [])
                + (["LOAD_SHED"] if isl.tripped_at is not None else []),
                **script.detail,
            }
        )
