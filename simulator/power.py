"""Datacenter sites: grid peaks trigger failover to batteries then generators, with injected faults.

``failover_script`` is pure: it turns one failover (and its fault, if any) into a list of timed device
events. ``Site`` runs scripts and background measurements on the world's queue, numbers events per
device, and delivers some of them late, out of order or twice. Timestamps are microseconds.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from simulator.config import DAY_MS, HOUR_MS, REGION_UTC_OFFSET_H
from simulator.fleet import pick
from simulator.power_devices import (
    ATS,
    BESS,
    BRK_UTIL,
    CTL,
    GM,
    MS,
    STS,
    Failover,
    S,
    Step,
    device_type,
    retransfer,
)
from simulator.rng import rng_for
from simulator.site import ComputeSite
from simulator.site_compute import BATTERY_NORMAL_PCT, BATTERY_RESERVE_PCT
from streams.topics import POWER_EVENTS_TOPIC

if TYPE_CHECKING:
    from simulator.context import WorldContext as World

POWER = POWER_EVENTS_TOPIC
FAULT_KINDS = (
    "FAILED_TRANSFER",
    "SLOW_TRANSFER",
    "GEN_START_FAILURE",
    "FLAPPING",
    "BATTERY_RESERVE",
    "PQ_EXCURSION",
)


def failover_script(
    rng: random.Random,
    site_id: str,
    t0_us: int,
    gens: int,
    load_mw: float,
    battery_soc: float,
    fault: str | None,
    retransfer_delay_s: float,
) -> Failover:
    """The device events of one peak-shaving failover from ``t0_us`` (grid lost) back to grid."""
    steps: list[Step] = []
    detail: dict[str, Any] = {}

    def add(at_us: float, dev: str, event: str, state: dict[str, Any] | None = None, **fields: Any) -> None:
        steps.append(Step(t0_us + int(at_us), len(steps), dev, event, fields, state))

    add(
        -2 * S,
        CTL,
        "ALARM",
        detail=f"grid peak: site load {load_mw:.1f} MW; islanding for peak shave",
        load_mw=round(load_mw, 2),
    )
    add(0, BRK_UTIL, "BREAKER_OPEN", detail="utility breaker open")
    add(
        300,
        GM,
        "SOURCE_LOST",
        {"grid": False},
        source_from="GRID",
        voltage_pu=0.0,
        detail="utility source lost (planned peak shave)",
    )
    gen_ids = [f"gen-{i + 1}" for i in range(gens)]
    if fault == "FAILED_TRANSFER":
        add(20 * MS, STS, "ALARM", {"source": "NONE"}, detail="transfer inhibited: battery inverter fault")
        add(40 * MS, CTL, "ALARM", detail="critical load unpowered: no alternate source")
    else:
        transfer_ms = rng.uniform(30.0, 120.0) if fault == "SLOW_TRANSFER" else rng.uniform(1.8, 4.0)
        detail["transfer_ms"] = round(transfer_ms, 3)
        add(
            300 + transfer_ms * MS,
            STS,
            "TRANSFER",
            {"source": "BATTERY"},
            source_from="GRID",
            source_to="BATTERY",
            load_mw=round(load_mw, 2),
            detail=f"static transfer {transfer_ms:.1f} ms",
        )
        add(300 + transfer_ms * MS + 5 * MS, CTL, "ISLAND_ENTER", source_to="BATTERY")
    running_at = []
    failed_gen = gen_ids[-1] if fault == "GEN_START_FAILURE" else None
    for i, g in enumerate(gen_ids):
        add(0.5 * S + i * 50 * MS, g, "GEN_START")
        if g == failed_gen:
            add(rng.uniform(20, 40) * S, g, "GEN_FAIL", detail="fail to start: overcrank")
        else:
            at = rng.uniform(9.0, 25.0) * S
            running_at.append(at)
            add(at, g, "GEN_RUNNING", {"gens": len(running_at)}, gens_online=len(running_at))
    online = len(running_at)
    t_gen = max(running_at) + 1 * S
    if fault == "FAILED_TRANSFER":
        detail["alternate_source_after_ms"] = round(t_gen / MS, 1)
        add(
            t_gen,
            ATS,
            "TRANSFER",
            {"source": "GENERATOR"},
            source_from="NONE",
            source_to="GENERATOR",
            gens_online=online,
            detail="load restored on generators after failed transfer",
        )
        add(t_gen + 5 * MS, CTL, "ISLAND_ENTER", source_to="GENERATOR")
    else:
        add(
            t_gen,
            ATS,
            "TRANSFER",
            {"source": "GENERATOR"},
            source_from="BATTERY",
            source_to="GENERATOR",
            gens_online=online,
            load_mw=round(load_mw, 2),
        )
    soc = battery_soc - rng.uniform(1.0, 4.0)
    add(t_gen + 2 * S, BESS, "MEASUREMENT", {"battery": soc}, battery_soc_pct=round(soc, 1))
    island_s = rng.uniform(1.5, 3.0) * 3600
    mid = t_gen + rng.uniform(0.2, 0.5) * island_s * S
    if fault == "PQ_EXCURSION":
        low = rng.uniform(57.5, 58.4)
        detail["min_frequency_hz"] = round(low, 3)
        for j in range(8):
            f = 60.0 - (60.0 - low) * math.sin(math.pi * j / 7)
            v = 1.0 - (1.0 - rng.uniform(0.86, 0.9)) * math.sin(math.pi * j / 7)
            add(
                mid + j * 0.5 * S,
                gen_ids[0],
                "MEASUREMENT",
                frequency_hz=round(f, 3),
                voltage_pu=round(v, 3),
                gens_online=online,
            )
        add(mid + 1.6 * S, CTL, "ALARM", detail=f"underfrequency {low:.2f} Hz while islanded")
    if fault == "BATTERY_RESERVE":
        for g in gen_ids[:online]:
            add(mid, g, "GEN_FAIL", {"gens": 0}, detail="trip: high coolant temperature")
        add(
            mid + 15 * MS,
            ATS,
            "TRANSFER",
            {"source": "BATTERY"},
            source_from="GENERATOR",
            source_to="BATTERY",
        )
        k = 0
        while soc > BATTERY_RESERVE_PCT - 1.0:
            k += 1
            soc -= rng.uniform(2.5, 4.5)
            add(
                mid + k * 60 * S,
                BESS,
                "MEASUREMENT",
                {"battery": soc},
                battery_soc_pct=round(max(soc, 0.0), 1),
                load_mw=round(load_mw, 2),
            )
        detail["min_battery_soc_pct"] = round(soc, 1)
        t_res = mid + k * 60 * S
        add(
            t_res + 100 * MS,
            BESS,
            "ALARM",
            battery_soc_pct=round(soc, 1),
            detail=f"battery at reserve ({BATTERY_RESERVE_PCT:.0f} %) while islanded",
        )
        add(t_res + 1 * S, CTL, "LOAD_SHED", load_mw=round(load_mw * 0.6, 2), detail="shed 40 % of load")
        for i, g in enumerate(gen_ids[:online]):
            add(t_res + 30 * S + i * 50 * MS, g, "GEN_START")
            add(t_res + 45 * S + i * S, g, "GEN_RUNNING", {"gens": i + 1}, gens_online=i + 1)
        add(
            t_res + 47 * S + online * S,
            ATS,
            "TRANSFER",
            {"source": "GENERATOR"},
            source_from="BATTERY",
            source_to="GENERATOR",
            gens_online=online,
        )
    t1 = t_gen + island_s * S
    add(t1, GM, "SOURCE_RESTORED", {"grid": True}, source_to="GRID", voltage_pu=1.0, frequency_hz=60.0)
    back = t1 + retransfer_delay_s * S
    if fault == "FLAPPING":
        # Retransfer too soon, the grid drops again minutes later, then comes back for good.
        back = t1 + rng.uniform(60, 120) * S
        retransfer(add, back, stop_gens=None)
        lost = back + rng.uniform(120, 360) * S
        add(
            lost, GM, "SOURCE_LOST", {"grid": False}, source_from="GRID", voltage_pu=0.0, detail="utility sag"
        )
        add(lost + 3.1 * MS, STS, "TRANSFER", {"source": "BATTERY"}, source_from="GRID", source_to="BATTERY")
        add(lost + 8 * MS, CTL, "ISLAND_ENTER", source_to="BATTERY")
        add(
            lost + 2 * S,
            ATS,
            "TRANSFER",
            {"source": "GENERATOR"},
            source_from="BATTERY",
            source_to="GENERATOR",
            gens_online=online,
        )
        restored = lost + rng.uniform(60, 300) * S
        add(restored, GM, "SOURCE_RESTORED", {"grid": True}, source_to="GRID", voltage_pu=1.0)
        back = restored + retransfer_delay_s * S
        detail["source_changes_30min"] = 4
    retransfer(add, back, stop_gens=gen_ids if fault != "BATTERY_RESERVE" else gen_ids[:online])
    steps.sort()
    return Failover(site_id, t0_us, int(t0_us + back), fault, steps, detail)


class Site:
    def __init__(self, index: int, world: World) -> None:
        self.w = world
        config = world.config
        self.rng = rng_for(config.seed, "site", index)
        self.noise_rng = rng_for(config.seed, "site-noise", index)
        self.index = index
        self.region = pick(self.rng, config.region_mix)
        self.site_id = f"dc-{self.region}-{index + 1:02d}"
        self.offset_ms = REGION_UTC_OFFSET_H.get(self.region, 0) * HOUR_MS
        self.gens = self.rng.randint(2, 4)
        self.base_load = self.rng.uniform(20.0, 80.0)
        self.seq: dict[str, int] = {}
        self.state: dict[str, Any] = {
            "grid": True,
            "source": "GRID",
            "gens": 0,
            "battery": BATTERY_NORMAL_PCT,
        }
        self.failovers = 0
        self.faults = 0
        self.compute: ComputeSite | None = None  # emulator slots (issue 16), with SimConfig.site_compute
        if config.site_compute.enabled:
            self.compute = ComputeSite(world, self, index)
            self.base_load = self.compute.capacity.critical_load_mw

    def start(self) -> None:
        now = self.w.q.now
        local_midnight = (now + self.offset_ms) // DAY_MS * DAY_MS - self.offset_ms
        self.w.q.schedule(local_midnight, self.plan_day, local_midnight)
        self.w.q.schedule(now + self.rng.randint(0, 10_000), self.measure, 0)
        if self.compute is not None:
            self.compute.start()

    def load_mw(self, t_ms: int) -> float:
        """The site's load without emulator sessions (its daily curve)."""
        local_h = ((t_ms + self.offset_ms) % DAY_MS) / HOUR_MS
        return self.base_load * (0.8 + 0.2 * math.sin((local_h - 10.0) / 24.0 * 2 * math.pi))

    def total_load_mw(self, t_ms: int) -> float:
        """What the site draws at ``t_ms``: its load curve plus the emulator sessions running now."""
        return self.load_mw(t_ms) + (self.compute.emulator_mw() if self.compute is not None else 0.0)

    def plan_day(self, local_midnight: int) -> None:
        q, rng, config = self.w.q, self.rng, self.w.config
        q.schedule(local_midnight + DAY_MS, self.plan_day, local_midnight + DAY_MS)
        t0_ms = local_midnight + int(rng.uniform(16.0, 19.0) * HOUR_MS)
        with_fault = rng.random() < config.fault_share
        if t0_ms - 5_000 < q.now or t0_ms >= config.end_ms:
            return  # a failover must fit inside the run
        if self.compute is not None and self.compute.plan_long_island(t0_ms):
            self.failovers += 1
            self.w.counters["failovers"] += 1
            return
        fault = None
        if with_fault:  # kinds rotate across the whole world, so every kind shows up in a short run
            fault = FAULT_KINDS[self.w.counters["faults_injected"] % len(FAULT_KINDS)]
            self.w.counters["faults_injected"] += 1
            self.faults += 1
        script = failover_script(
            rng,
            self.site_id,
            t0_ms * 1000,
            self.gens,
            self.load_mw(t0_ms),
            self.state["battery"],
            fault,
            rng.uniform(*config.retransfer_delay_s),
        )
        self.failovers += 1
        self.w.counters["failovers"] += 1
        if fault:
            self.w.counters[f"fault_{fault}"] += 1
        self.w.truth.write(
            {
                "type": "failover",
                "site_id": self.site_id,
                "started_at_us": script.start_us,
                "ended_at_us": script.end_us,
                "fault": fault,
                "expected_incidents": ["FAILOVER"]
                + ([fault] if fault else [])
                + (["LOAD_SHED"] if fault == "BATTERY_RESERVE" else []),
                **script.detail,
            }
        )
        if self.compute is not None:
            self.compute.scenario = fault or "failover"
        for step in script.steps:
            q.schedule(step.ts_us // 1000, self.happen, step)

    def happen(self, step: Step) -> None:
        if step.state:
            self.state.update(step.state)
        fields = step.fields
        if self.compute is not None:
            if "load_mw" in fields:  # scripted at the plan's load: add the sessions running now
                fields = {**fields, "load_mw": round(fields["load_mw"] + self.compute.emulator_mw(), 2)}
            self.compute.changed()
        self.emit(step.ts_us, step.device_id, step.event_type, fields)

    def emit(self, ts_us: int, device_id: str, event_type: str, fields: dict[str, Any]) -> None:
        n = self.seq.get(device_id, 0) + 1
        self.seq[device_id] = n
        rec = {
            "site_id": self.site_id,
            "device_id": device_id,
            "device_type": device_type(device_id),
            "ts": ts_us,
            "seq": n,
            "event_type": event_type,
            "source_from": None,
            "source_to": None,
            "load_mw": None,
            "frequency_hz": None,
            "voltage_pu": None,
            "battery_soc_pct": None,
            "gens_online": None,
            "detail": None,
        }
        rec.update(fields)
        w, rng, noise = self.w, self.noise_rng, self.w.config.power_noise
        delay = 0
        r = rng.random()
        if r < noise.late:
            delay = rng.randint(5_000, 60_000)
            w.counters["power_late"] += 1
            w.truth.write(
                {
                    "type": "power_late",
                    "site_id": self.site_id,
                    "device_id": device_id,
                    "seq": n,
                    "ts_us": ts_us,
                    "delay_ms": delay,
                }
            )
        elif r < noise.late + noise.reorder:
            delay = rng.randint(1, 50)
            w.counters["power_reordered"] += 1
        w.emit(POWER, self.site_id, rec, delay)
        if rng.random() < noise.duplicate:
            w.counters["power_duplicated"] += 1
            w.emit(POWER, self.site_id, rec, delay + rng.randint(0, 5_000))

    def measure(self, k: int) -> None:
        q, rng, st = self.w.q, self.noise_rng, self.state
        now = q.now
        interval = int(self.w.config.measurement_interval_s * 1000)
        compute = self.compute
        if compute is not None:
            compute.tick(interval)
        if self.w.emitting:
            ts = now * 1000 + rng.randrange(1000)
            load = round(self.total_load_mw(now) * rng.uniform(0.98, 1.02), 2)
            if st["grid"]:
                self.emit(
                    ts,
                    GM,
                    "MEASUREMENT",
                    {
                        "load_mw": load,
                        "frequency_hz": round(rng.gauss(60.0, 0.01), 3),
                        "voltage_pu": round(rng.gauss(1.0, 0.006), 3),
                    },
                )
            else:
                self.emit(ts, GM, "MEASUREMENT", {"voltage_pu": 0.0})
            if st["source"] == "GENERATOR" and st["gens"]:
                self.emit(
                    ts + 200,
                    "gen-1",
                    "MEASUREMENT",
                    {
                        "load_mw": load,
                        "frequency_hz": round(rng.gauss(60.0, 0.04), 3),
                        "voltage_pu": round(rng.gauss(1.0, 0.01), 3),
                        "gens_online": st["gens"],
                    },
                )
            on_battery = compute is not None and st["source"] == "BATTERY"
            if on_battery:  # a battery carrying the site reports its charge and load at every reading
                self.emit(
                    ts + 400,
                    BESS,
                    "MEASUREMENT",
                    {"battery_soc_pct": round(st["battery"], 1), "load_mw": load},
                )
            elif k % 6 == 0:
                if st["source"] == "GRID" and st["battery"] < BATTERY_NORMAL_PCT:
                    st["battery"] = min(BATTERY_NORMAL_PCT, st["battery"] + 0.5)
                self.emit(ts + 400, BESS, "MEASUREMENT", {"battery_soc_pct": round(st["battery"], 1)})
        q.schedule(now + interval, self.measure, k + 1)
