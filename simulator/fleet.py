"""Who the cars are: identity (VIN, hardware, region), owner habits and equipment. Pure and seeded."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from simulator.config import REGION_UTC_OFFSET_H, SimConfig
from simulator.rng import rng_for

_VIN_CHARS = "".join(c for c in string.ascii_uppercase + string.digits if c not in "IOQ")
_WMI = ("5YJ", "7SA", "LRW", "XP7")  # Fremont, Austin, Shanghai, Berlin
_MODEL = "3YSX"
_SOFTWARE = ("2024.38.7", "2024.44.25", "2024.45.32.1", "2025.2.6")


def pick(rng: random.Random, mix: dict[str, float]) -> str:
    names = list(mix)
    return rng.choices(names, weights=[mix[n] for n in names])[0]


@dataclass(frozen=True)
class CarSpec:
    index: int
    vin: str
    hw: str
    region: str
    utc_offset_h: int
    opted_in: bool
    profile: str  # commuter, home_worker, night_shift, erratic
    faulty: bool
    capacity_kwh: float
    kwh_per_km: float
    charge_limit_pct: float
    home_charger_kw: float | None  # None: no home charger
    work_charger_kw: float | None
    off_peak_start_h: float | None  # scheduled (off-peak) charging start, local hour
    plug_threshold_pct: float  # plugs in at home when SoC is below this (100: every night)
    departure_setting_h: float | None  # recurring scheduled departure (local hour), if the owner set one
    leave_h: float  # usual departure to work / shift (local hour)
    return_h: float  # usual departure from work (local hour)
    commute_min: float
    interval_s: float  # telemetry period
    reports_at_home: bool
    software_version: str
    ambient_bias_c: float


def make_vin(rng: random.Random, serial: int) -> str:
    """A plausible 17-character VIN; the last six characters are a serial unique within the run."""
    body = "".join(rng.choice(_VIN_CHARS) for _ in range(4))
    return (
        f"{rng.choice(_WMI)}{rng.choice(_MODEL)}{body}{rng.choice('0123456789X')}{rng.choice('LMNPRS')}"
        f"{rng.choice('FABC')}{serial % 1_000_000:06d}"
    )


def make_car(config: SimConfig, index: int, serial_base: int) -> CarSpec:
    rng = rng_for(config.seed, "car", index)
    region = pick(rng, config.region_mix)
    profile = pick(rng, config.profile_mix)
    home_kw = (
        rng.choices([1.9, 7.2, 11.5], weights=[2, 4, 4])[0]
        if rng.random() < config.home_charger_share
        else None
    )
    work_kw = 6.6 if profile == "commuter" and rng.random() < config.work_charger_share else None
    leave_h, return_h, commute = 7.5, 17.25, 25.0
    if profile == "commuter":
        leave_h = rng.gauss(7.6, 0.7)
        return_h = leave_h + rng.gauss(9.0, 0.5)
        commute = max(8.0, rng.lognormvariate(3.2, 0.45))
    elif profile == "night_shift":
        leave_h = rng.gauss(21.5, 0.6)
        return_h = leave_h + rng.gauss(9.0, 0.4) - 24.0
        commute = max(8.0, rng.lognormvariate(3.1, 0.4))
    sets_departure = (
        profile in ("commuter", "night_shift") and rng.random() < config.sets_departure_share / 0.7
    )
    return CarSpec(
        index=index,
        vin=make_vin(rng, serial_base + index),
        hw=pick(rng, config.hw_mix),
        region=region,
        utc_offset_h=REGION_UTC_OFFSET_H.get(region, 0),
        opted_in=rng.random() < config.opt_in_share,
        profile=profile,
        faulty=rng.random() < config.faulty_car_share,
        capacity_kwh=rng.choice([57.5, 75.0, 78.1, 82.0, 100.0]),
        kwh_per_km=rng.uniform(0.14, 0.2),
        charge_limit_pct=rng.choices([80.0, 85.0, 90.0, 100.0], weights=[5, 2, 2, 1])[0],
        home_charger_kw=home_kw,
        work_charger_kw=work_kw,
        off_peak_start_h=rng.choice([23.0, 0.0, 1.0])
        if home_kw and rng.random() < config.off_peak_charging_share
        else None,
        plug_threshold_pct=100.0 if rng.random() < 0.7 else rng.uniform(40.0, 65.0),
        departure_setting_h=round(leave_h * 4) / 4 % 24 if sets_departure else None,
        leave_h=leave_h,
        return_h=return_h,
        commute_min=commute,
        interval_s=rng.uniform(*config.car_noise.interval_s),
        reports_at_home=rng.random() < 0.95,
        software_version=rng.choice(_SOFTWARE),
        ambient_bias_c=rng.gauss(0.0, 2.0),
    )


def make_fleet(config: SimConfig) -> list[CarSpec]:
    base = rng_for(config.seed, "serial").randrange(0, 900_000)
    cars = [make_car(config, i, base) for i in range(config.cars)]
    return cars
