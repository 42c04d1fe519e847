"""Every knob of a simulation run, as plain data with realistic defaults.

Shares are fractions in [0, 1]; mixes are ``{name: weight}`` dicts (weights need not sum to 1).
The ``expected_*`` ranges are what the statistical tests check a simulated week against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

# A fixed Monday 00:00 UTC, so runs without --start are reproducible.
DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# UTC offsets (hours, standard time; DST is ignored) of the regions cars and sites live in.
REGION_UTC_OFFSET_H: dict[str, int] = {
    "us-west": -8,
    "us-central": -6,
    "us-east": -5,
    "ca-east": -5,
}
# Mean ambient temperature (deg C) per region: drives compute_temp_c.
REGION_AMBIENT_C: dict[str, float] = {"us-west": 18.0, "us-central": 12.0, "us-east": 13.0, "ca-east": 5.0}


def parse_mix(text: str) -> dict[str, float]:
    """``"HW3=35,HW4=55,HW5=10"`` -> ``{"HW3": 35.0, ...}``; raises ValueError on bad input."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=WEIGHT, got {part!r}")
        value = float(weight)
        if value < 0:
            raise ValueError(f"negative weight for {name!r}")
        mix[name.strip()] = value
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("a mix needs at least one positive weight")
    return mix


def parse_slots(text: str) -> tuple[int, int]:
    """``"300"`` -> ``(300, 300)``, ``"200-400"`` -> ``(200, 400)``; raises ValueError on bad input."""
    low, _, high = text.strip().partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"expected N or N-M slots, got {text!r}") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"expected 0 <= N <= M, got {text!r}")
    return lo, hi


@dataclass
class CarNoise:
    """How imperfect telemetry is (per emitted record unless said otherwise)."""

    interval_s: tuple[float, float] = (10.0, 30.0)  # each car's reporting period lies in this range
    skip: float = 0.02  # a report is lost
    weak_wifi_gap: float = 0.002  # a parked car goes silent for 2-15 minutes
    duplicate: float = 0.005  # a report is delivered twice
    delayed: float = 0.01  # a report is delivered 5-120 s late (so out of order)
    missing_field: float = 0.01  # one optional field is not reported
    out_of_enum: float = 0.001  # charge_state outside the documented enum (raw JSON) / UNKNOWN (Avro)


@dataclass
class PowerNoise:
    late: float = 0.01  # delivered 5-60 s late
    duplicate: float = 0.005  # delivered twice
    reorder: float = 0.02  # swapped with the next event of the same burst (a few ms late)


@dataclass(frozen=True)
class Habits:
    """Owner habits beyond the project's original fleet (issue 13). Everything is off by default, so
    runs without habits are byte-identical to before; ``HABIT_PROFILES["realistic"]`` turns all on.

    Per-car traits (who dozes, how punctual an owner is, the Wi-Fi at home and at work) are drawn from a
    stream of their own (``rng_for(seed, "habits", index)``), so they never shift the other draws."""

    # Share of cars that doze off after charging ends, even opted in and idle (without: an idle node keeps
    # its computer awake). A dozing car sends one record with fields not reported, then nothing until woken.
    # It dozes 5-20 minutes after charging completes (15-30 minutes after parking or waking if it is full).
    sleepy_share: float = 0.0
    # The owner walks up (phone key) this many minutes before the drive-off: the emulator abandons work with
    # ``owner_returned`` and refuses new work, while telemetry still says parked and plugged.
    owner_back_min: tuple[float, float] = (0.0, 0.0)
    # Scheduled departures announced with realistic error: per owner a bias and a spread (minutes, the
    # spread log-normal around this median) and a share of announced workdays skipped (home office).
    departure_error: bool = False
    departure_spread_median_min: float = 15.0
    departure_skip_max: float = 0.3  # each owner's skip share is uniform in [0, this]
    # Fast-charge stops (public chargers) end when the battery reaches its limit, 0-5 minutes later.
    fast_charge_to_full: bool = False
    # The erratic profile becomes gig drivers: trips around the clock, short stops, no day-to-day pattern.
    gig_drivers: bool = False
    # Wi-Fi quality per location: each car's home and work get a weak-Wi-Fi gap rate multiplier
    # (log-normal, sigma below), public places a fixed one; 0 = the same rate everywhere (the default).
    wifi_sigma: float = 0.0
    wifi_public_factor: float = 3.0

    @property
    def enabled(self) -> bool:
        return self != Habits()


HABIT_PROFILES: dict[str, Habits] = {
    "off": Habits(),
    "realistic": Habits(
        sleepy_share=0.5,
        owner_back_min=(2.0, 12.0),
        departure_error=True,
        fast_charge_to_full=True,
        gig_drivers=True,
        wifi_sigma=1.2,
    ),
}


def habits_profile(name: str) -> Habits:
    """The named habit profile (``off`` or ``realistic``); raises ValueError for another name."""
    try:
        return HABIT_PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown habits profile {name!r}; choose from {', '.join(HABIT_PROFILES)}"
        ) from None


@dataclass(frozen=True)
class SiteCompute:
    """Datacenter sites as emulator capacity (issue 16). Off by default (no slots), so runs without it are
    byte-identical to before; ``SITE_COMPUTE_PROFILES["realistic"]`` (``--site-compute realistic``) turns
    it on at realistic scale and ``small`` scales it down for tests and short runs.

    Each site gets emulator slots and runs the tasks the scheduler places on ``site:<site_id>``; its load
    is its other (critical) load plus ``kw_per_slot`` per running session, its battery drains with that
    load while it carries the site, and it reports ``sites.capacity.v1``. Its draws come from streams of
    their own (``rng_for(seed, "site-compute", index)``, ``"placement"``), never shifting the others."""

    slots: tuple[int, int] = (0, 0)  # slots_total of each site, uniform in this range; 0 = off
    kw_per_slot: float = 8.0  # one emulator session: the desktop VM and its share of the model's GPUs
    # At full occupancy emulators are this share of the site's load; the rest (cooling, storage, the
    # network, other tenants) is critical load that is never shed.
    emulator_load_share: float = 0.5
    # The battery is sized so that at full load it falls from its normal charge to the reserve in this many
    # minutes (drawn per site); while it carries the site it drains in proportion to the load.
    battery_full_load_min: tuple[float, float] = (40.0, 60.0)
    # Power the emulator sessions may draw, as a share of what every slot draws: on the grid, islanded,
    # and islanded with the battery at its reserve (so the scheduler has a budget to shed to).
    islanded_budget_share: float = 0.6
    reserve_budget_share: float = 0.2
    cost_per_slot_hour: float = 0.12  # on the grid, in the fleet's cost unit
    islanded_cost_factor: float = 3.0  # batteries and generators make a slot-hour dearer
    report_interval_s: float = 30.0  # capacity reports on this cadence, and at once on a power change
    # Long battery islands: a share of the daily failovers runs on batteries alone (the generators are out
    # of service) for this many minutes; at the reserve the controller calls generators, which take the
    # load after ``reserve_gen_delay_min``; at ``trip_soc_pct`` it cuts the emulator hall (sessions lost).
    long_failover_share: float = 0.5
    long_island_min: tuple[float, float] = (45.0, 75.0)
    reserve_gen_delay_min: tuple[float, float] = (3.0, 8.0)
    trip_soc_pct: float = 5.0
    # Task placement preference (tasks.requests.v1 ``placement``) and a share of long tasks (est x factor)
    # so that work at a site outlasts a failover.
    placement_mix: dict[str, float] = field(
        default_factory=lambda: {"ANY": 80.0, "FLEET": 10.0, "DATACENTER": 10.0}
    )
    long_task_share: float = 0.15
    long_task_factor: float = 6.0
    actions: bool = True  # site sessions stream emulator.actions.v1 like cars do

    @property
    def enabled(self) -> bool:
        return self.slots[1] > 0


PLACEMENTS = ("ANY", "FLEET", "DATACENTER")  # tasks.requests.v1 placement

SITE_COMPUTE_PROFILES: dict[str, SiteCompute] = {
    "off": SiteCompute(),
    # 200-400 sessions a site: their action traces (~300 actions/s a site) are left out at this scale
    "realistic": SiteCompute(slots=(200, 400), actions=False),
    "small": SiteCompute(slots=(8, 16)),
}


def site_compute_profile(name: str) -> SiteCompute:
    """The named site compute profile (``off``, ``realistic``, ``small``); ValueError for another name."""
    try:
        return SITE_COMPUTE_PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown site compute profile {name!r}; choose from {', '.join(SITE_COMPUTE_PROFILES)}"
        ) from None


@dataclass
class SimConfig:
    seed: int = 42
    start_ms: int = int(DEFAULT_START.timestamp() * 1000)
    duration_ms: int = DAY_MS

    # Cars
    cars: int = 100
    hw_mix: dict[str, float] = field(default_factory=lambda: {"HW3": 35, "HW4": 55, "HW5": 10})
    region_mix: dict[str, float] = field(
        default_factory=lambda: {"us-west": 35, "us-east": 30, "us-central": 20, "ca-east": 15}
    )
    profile_mix: dict[str, float] = field(
        default_factory=lambda: {"commuter": 55, "home_worker": 20, "night_shift": 8, "erratic": 17}
    )
    opt_in_share: float = 0.6
    home_charger_share: float = 0.8
    work_charger_share: float = 0.3
    sets_departure_share: float = 0.35
    off_peak_charging_share: float = 0.25
    faulty_car_share: float = 0.02
    car_noise: CarNoise = field(default_factory=CarNoise)
    telemetry: bool = True  # False: simulate habits and charging without emitting telemetry (fast stats)
    habits: Habits = field(default_factory=Habits)  # issue-13 owner habits, all off by default

    # Tasks
    tasks_per_hour: float = 400.0  # mean arrival rate over a weekday
    bursts_per_day: float = 1.5
    tenants: int = 12
    task_duration_scale: float = 1.0  # multiplies every kind's median est_duration_s (benches: longer work)
    self_assign: bool = False  # run tasks on idle simulated cars without a matcher (load / demos)

    # Emulator
    faulty_fail_rate: float = 0.8
    healthy_fail_rate: float = 0.06
    action_interval_s: float = 1.2  # median time between actions

    # Power
    sites: int = 2
    fault_share: float = 0.4  # share of failovers that carry an injected fault
    power_noise: PowerNoise = field(default_factory=PowerNoise)
    retransfer_delay_s: tuple[float, float] = (300.0, 900.0)
    measurement_interval_s: float = 10.0
    site_compute: SiteCompute = field(default_factory=SiteCompute)  # issue-16 emulator slots, off by default

    # Statistical expectations checked by the tests (share of all cars idle = parked, plugged, home/work).
    expected_idle_night: tuple[float, float] = (0.35, 0.8)  # local 01:00-05:00
    expected_idle_workday_midday: tuple[float, float] = (0.1, 0.42)  # local 10:00-15:00 Mon-Fri
    expected_session_hours_median: tuple[float, float] = (3.0, 14.0)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms
