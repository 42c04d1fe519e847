"""The owner habits of issue 13 (``SimConfig.habits``), each on a small deterministic fleet, and that they
are off by default."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace
from typing import Any

import pytest

from simulator import SimConfig, World
from simulator.app import build_config
from simulator.car import PLUGGED_STATES
from simulator.config import HOUR_MS, Habits, habits_profile
from simulator.fleet import make_car
from simulator.habits import HOME, NO_TRAITS, OTHER, WORK, CarTraits, car_traits, plan_day
from simulator.sinks import MemorySink
from simulator.truth import TruthList

NIGHT_UTC = 1736154000000  # Mon 2025-01-06 09:00 UTC: night in North America
MIN = 60_000


def world_for(habits: Habits, **overrides: Any) -> tuple[World, MemorySink, TruthList]:
    config = SimConfig(
        **{
            "cars": 30,
            "sites": 0,
            "tasks_per_hour": 0,
            "start_ms": NIGHT_UTC,
            "duration_ms": 6 * HOUR_MS,
            "opt_in_share": 1.0,
            "faulty_car_share": 0.0,
            "habits": habits,
            **overrides,
        }
    )
    sink, truth = MemorySink(), TruthList()
    return World(config, sink, truth), sink, truth


def telemetry(sink: MemorySink, vin: str) -> list[dict[str, Any]]:
    return [r for t, _, r in sink.records if t == "fleet.telemetry.v1" and r["vin"] == vin]


def statuses(sink: MemorySink, task_id: str) -> list[dict[str, Any]]:
    return [r for t, _, r in sink.records if t == "tasks.status.v1" and r["task_id"] == task_id]


def assign(world: World, car: Any, aid: str, task: str) -> None:
    world.emulators.handle({"assignment_id": aid, "command": "ASSIGN", "task_id": task, "vin": car.spec.vin})


def test_habits_are_off_by_default_and_one_profile_turns_them_all_on() -> None:
    assert not SimConfig().habits.enabled
    assert habits_profile("off") == Habits()
    real = habits_profile("realistic")
    assert real.enabled and real.sleepy_share > 0 and real.owner_back_min[1] > 0
    assert real.departure_error and real.fast_charge_to_full and real.gig_drivers and real.wifi_sigma > 0
    with pytest.raises(ValueError):
        habits_profile("chaotic")
    config = SimConfig()
    assert car_traits(config, make_car(config, 0, 0)) is NO_TRAITS
    opts = {"seed": 1, "cars": 5, "sites": 0, "start": "2025-01-06T00:00:00Z", "habits": "realistic"}
    assert build_config(opts).habits == real


def test_a_sleeping_car_sends_one_not_reported_record_then_nothing_until_it_drives_off() -> None:
    world, sink, truth = world_for(Habits(sleepy_share=1.0), off_peak_charging_share=0.0)
    world.run()
    sleeps = [r for r in truth.items if r["type"] == "sleep" and r["plugged"]]
    assert len(sleeps) >= 3  # opted-in, idle, plugged cars doze off too
    unplugs = {(r["vin"], r["plug_in"]): r["unplug"] for r in truth.items if r["type"] == "charge_session"}
    for s in sleeps:
        recs = telemetry(sink, s["vin"])
        (last,) = [r for r in recs if r["ts"] == s["ts"]]
        assert last["gear"] == "UNKNOWN" and last["soc_pct"] is None and last["at_home"] is None
        later = [r["ts"] for r in recs if r["ts"] > s["ts"]]
        if later:  # woken only by the drive-off (no off-peak start, no work)
            ends = [u for (vin, p), u in unplugs.items() if vin == s["vin"] and p <= s["ts"] <= u]
            assert ends and later[0] >= ends[0]
    # Without the habit an opted-in idle car at home never dozes.
    world, sink, truth = world_for(Habits(), off_peak_charging_share=0.0)
    world.run()
    asleep = [c for c in world.cars if c.plugged and c.loc == HOME and not c.awake]
    assert asleep == []


def test_a_dozing_car_does_not_hear_an_assign() -> None:
    world, sink, _ = world_for(Habits(sleepy_share=1.0), off_peak_charging_share=0.0)
    world.run_until(NIGHT_UTC + 2 * HOUR_MS)
    car = next(c for c in world.cars if c.plugged and not c.awake and c.available(world.now) is None)
    assign(world, car, "as-1", "t-1")
    world.run_until(world.now + 10 * MIN)
    assert statuses(sink, "t-1") == []
    assert world.counters["assignments_asleep"] == 1


def _next_trip(world: World, car: Any) -> tuple[int, Any]:
    """The car's next planned trip (time, Trip) from the event queue."""
    trips = [
        (at, args[0])
        for at, _, fn, args in world.q._heap
        if getattr(fn, "__self__", None) is car and getattr(fn, "__name__", "") == "depart"
    ]
    return min(trips, key=lambda t: t[0])


def test_the_owner_walks_up_minutes_before_the_drive_off() -> None:
    world, sink, truth = world_for(Habits(owner_back_min=(5.0, 10.0)), duration_ms=12 * HOUR_MS)
    world.run_until(NIGHT_UTC + 1000)
    leaving = [
        c
        for c in world.cars
        if c.available(world.now) is None
        and c.next_departure(world.now)
        and _next_trip(world, c)[1].dest != c.loc
    ]
    car = min(leaving, key=lambda c: c.next_departure(world.now))
    drive_off = car.next_departure(world.now)
    world.task_durations["t-long"] = 20 * 3600.0
    assign(world, car, "as-long", "t-long")
    world.run_until(drive_off - 4 * MIN)
    assign(world, car, "as-2", "t-2")  # the owner is there: refused
    world.run()
    vin = car.spec.vin
    (back,) = [
        r for r in truth.items if r["type"] == "owner_back" and r["vin"] == vin and r["ts"] <= drive_off
    ]
    assert 5 * MIN - 1000 <= drive_off - back["ts"] <= 10 * MIN + 1000
    failed = [r for r in statuses(sink, "t-long") if r["status"] == "FAILED"]
    assert failed and failed[0]["error"] == "abandoned: owner_returned"
    assert back["ts"] <= failed[0]["ts"] < drive_off
    (refused,) = statuses(sink, "t-2")
    assert refused["status"] == "FAILED" and refused["error"] == "node_unavailable: owner_returned"
    window = [r for r in telemetry(sink, vin) if back["ts"] < r["ts"] < drive_off]
    assert window and all(r["gear"] == "P" and r["charge_state"] in PLUGGED_STATES for r in window)
    session = next(r for r in truth.items if r["type"] == "charge_session" and r["vin"] == vin)
    assert session["unplug"] == drive_off


def _commuter(**changes: Any) -> Any:
    config = SimConfig()
    spec = make_car(config, 0, 0)
    return replace(spec, profile="commuter", leave_h=7.5, return_h=16.5, **changes)


def test_announced_departures_come_with_per_owner_error_and_skips() -> None:
    spec = _commuter(departure_setting_h=7.5)
    traits = CarTraits(departure_bias_min=10.0, departure_spread_min=20.0, departure_skip=0.3)
    rng = random.Random(5)
    days = [plan_day(spec, rng, 1, Habits(departure_error=True), traits) for _ in range(600)]
    worked = [d[0].depart_min - 450 for d in days if d and d[0].dest == WORK]
    skipped = 1 - len(worked) / len(days)
    assert 0.24 < skipped < 0.36
    assert 8.0 < statistics.fmean(worked) < 12.0  # this owner is usually a bit late
    assert 22.0 < statistics.pstdev(worked) < 34.0  # 20 minutes, a tenth of the days three times that
    assert sum(abs(e) > 60 for e in worked) / len(worked) > 0.02
    rng = random.Random(5)
    plain = [plan_day(spec, rng, 1)[0].depart_min - 450 for _ in range(600)]
    assert statistics.pstdev(plain) < 20.0  # the original habit: 0.3 h around the usual time, no skips


def test_owners_differ_in_punctuality() -> None:
    config = SimConfig(habits=habits_profile("realistic"))
    traits = [car_traits(config, make_car(config, i, 0)) for i in range(200)]
    spreads = [t.departure_spread_min for t in traits]
    assert min(spreads) < 8.0 and max(spreads) > 35.0
    assert max(t.departure_skip for t in traits) > 0.2 > min(t.departure_skip for t in traits)
    assert 0.3 < sum(t.sleepy for t in traits) / len(traits) < 0.7


def test_a_fast_charge_stop_ends_when_the_battery_is_full() -> None:
    def fast_charge(habits: Habits) -> tuple[World, TruthList, Any, int]:
        world, _, truth = world_for(habits)
        world.run_until(NIGHT_UTC + 1000)
        now = world.now
        car = max(world.cars, key=lambda c: c.next_departure(now) or 0)
        assert (car.next_departure(now) or 0) > now + 3 * HOUR_MS
        if car.plugged:
            car.unplug(now)
        car.loc, car.soc = OTHER, 20.0
        car.plug(now, 150.0)
        world.run_until(now + 3 * HOUR_MS)
        return world, truth, car, now

    world, truth, car, plugged = fast_charge(Habits(fast_charge_to_full=True))
    (session,) = [r for r in truth.items if r["type"] == "charge_session" and r["plug_in"] == plugged]
    assert session["vin"] == car.spec.vin and session["location"] == OTHER
    assert session["soc_at_unplug"] >= car.limit - 0.1
    assert session["unplug"] - plugged < 2 * HOUR_MS
    world, truth, car, plugged = fast_charge(Habits())
    assert car.plugged and not [
        r for r in truth.items if r["type"] == "charge_session" and r["plug_in"] == plugged
    ]


def test_gig_drivers_have_no_daily_pattern() -> None:
    spec = replace(_commuter(), profile="erratic")
    rng = random.Random(3)
    days = [plan_day(spec, rng, d % 7, Habits(gig_drivers=True)) for d in range(60)]
    firsts = [d[0].depart_min / 60 for d in days]
    hours = [t.depart_min / 60 % 24 for d in days for t in d]
    assert statistics.pstdev(firsts) > 4.0
    assert any(h < 5 for h in hours) and any(h >= 22 for h in hours)
    assert statistics.fmean(len(d) for d in days) > 6  # many short stops
    rng = random.Random(3)
    plain = [plan_day(spec, rng, d % 7) for d in range(60)]
    assert statistics.fmean(len(d) for d in plain) < 4


def test_wifi_quality_depends_on_the_place() -> None:
    config = SimConfig(habits=Habits(wifi_sigma=1.2))
    traits = [car_traits(config, make_car(config, i, 0)) for i in range(200)]
    homes = [t.wifi_home for t in traits]
    assert max(homes) / min(homes) > 20 and 0.6 < statistics.fmean(homes) < 1.6
    world, _, truth = world_for(Habits(wifi_sigma=1.2))
    car = world.cars[0]
    for loc, want in ((HOME, car.traits.wifi_home), (WORK, car.traits.wifi_work), (OTHER, 3.0)):
        car.loc = loc
        assert car.wifi_factor() == want
    world, _, truth = world_for(Habits(wifi_sigma=1.2), cars=40)
    world.run()
    gaps = [r for r in truth.items if r["type"] == "wifi_gap"]
    assert gaps and all(r["end"] > r["start"] for r in gaps)
    assert world_for(Habits())[0].cars[0].wifi_factor() == 1.0
