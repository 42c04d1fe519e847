"""Owner habits as trips: where each car goes on a given day, in local time. Pure and seeded.

A plan is a list of ``Trip`` (departure as minutes after the day's local midnight, may exceed 24 h for
overnight shifts; drive minutes; destination HOME, WORK or OTHER).

With ``SimConfig.habits`` on (see ``config.Habits``), each car also has ``CarTraits`` (drawn from a stream
of their own): whether it dozes off when idle, how punctual its owner is against the announced departure,
and the Wi-Fi quality at home and at work; the erratic profile becomes gig drivers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulator.config import Habits, SimConfig
from simulator.fleet import CarSpec
from simulator.rng import rng_for

HOME, WORK, OTHER = "HOME", "WORK", "OTHER"


@dataclass(frozen=True)
class Trip:
    depart_min: float
    drive_min: float
    dest: str


@dataclass(frozen=True)
class CarTraits:
    """One car's habits beyond its spec; the defaults are the original fleet's (no effect)."""

    sleepy: bool = False  # dozes off when idle, even opted in
    departure_bias_min: float = 0.0  # owner leaves this much after the announced departure, on average
    departure_spread_min: float = 0.0  # standard deviation around that (0: the original 0.3 h habit)
    departure_skip: float = 0.0  # share of announced workdays skipped
    wifi_home: float = 1.0  # weak-Wi-Fi gap rate multiplier at home
    wifi_work: float = 1.0


NO_TRAITS = CarTraits()


def car_traits(config: SimConfig, spec: CarSpec) -> CarTraits:
    """The car's habit traits under ``config.habits`` (``NO_TRAITS`` when habits are off)."""
    h = config.habits
    if not h.enabled:
        return NO_TRAITS
    rng = rng_for(config.seed, "habits", spec.index)
    sleepy = rng.random() < h.sleepy_share
    bias = rng.gauss(0.0, 8.0)
    spread = h.departure_spread_median_min * rng.lognormvariate(0.0, 0.6)
    skip = rng.uniform(0.0, h.departure_skip_max)
    wifi = [math.exp(rng.gauss(-0.5 * h.wifi_sigma**2, h.wifi_sigma)) for _ in range(2)]
    return CarTraits(
        sleepy=sleepy,
        departure_bias_min=bias if h.departure_error else 0.0,
        departure_spread_min=spread if h.departure_error else 0.0,
        departure_skip=skip if h.departure_error else 0.0,
        wifi_home=wifi[0] if h.wifi_sigma > 0 else 1.0,
        wifi_work=wifi[1] if h.wifi_sigma > 0 else 1.0,
    )


def _announced_leave(car: CarSpec, rng: random.Random, traits: CarTraits, usual_h: float) -> float | None:
    """Minutes after midnight an owner with an announced departure really leaves; None: the day is skipped.
    A tenth of the days the error is three times the owner's usual spread (a late night, a rush)."""
    if rng.random() < traits.departure_skip:
        return None
    announced = car.departure_setting_h if car.departure_setting_h is not None else usual_h
    if announced < usual_h - 12:  # a night-shift setting past midnight
        announced += 24
    spread = traits.departure_spread_min * (3.0 if rng.random() < 0.1 else 1.0)
    return announced * 60 + traits.departure_bias_min + rng.gauss(0.0, spread)


def _gig_day(rng: random.Random) -> list[Trip]:
    """A gig driver's day: one or two shifts at any hour, short stops, no pattern from day to day."""
    trips: list[Trip] = []
    t = rng.uniform(0, 20) * 60
    for _ in range(1 if rng.random() < 0.6 else 2):
        end = t + rng.uniform(3, 9) * 60
        while t < end:
            drive = max(5.0, rng.lognormvariate(2.9, 0.6))
            trips.append(Trip(t, drive, OTHER))
            t += drive + max(5.0, rng.lognormvariate(3.0, 0.9))
        drive = max(5.0, rng.lognormvariate(3.0, 0.5))
        trips.append(Trip(t, drive, HOME))
        t += drive + rng.uniform(1, 6) * 60
    return trips


def _outings(rng: random.Random, mean: float, first_h: float, last_h: float) -> list[Trip]:
    """Errands and visits: leave home, stay a while, come back."""
    trips: list[Trip] = []
    n = min(4, _poisson(rng, mean))
    starts = sorted(rng.uniform(first_h, last_h) for _ in range(n))
    free_from = first_h * 60
    for h in starts:
        depart = max(h * 60, free_from)
        drive = max(5.0, rng.lognormvariate(2.8, 0.6))
        stay = max(15.0, rng.lognormvariate(4.2, 0.7))
        back = depart + drive + stay
        trips.append(Trip(depart, drive, OTHER))
        trips.append(Trip(back, drive * rng.uniform(0.8, 1.2), HOME))
        free_from = back + drive + 10
    return trips


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth; means here are small.
    limit, k, p = pow(2.718281828459045, -mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def plan_day(
    car: CarSpec,
    rng: random.Random,
    weekday: int,
    habits: Habits | None = None,
    traits: CarTraits = NO_TRAITS,
) -> list[Trip]:
    """Trips of one day (``weekday`` 0 = Monday) for ``car``'s profile (``habits``: see ``config.Habits``)."""
    weekend = weekday >= 5
    announced = traits.departure_spread_min > 0 and car.departure_setting_h is not None
    if habits is not None and habits.gig_drivers and car.profile == "erratic":
        return _gig_day(rng)
    if car.profile == "commuter" and not weekend:
        if announced:
            real = _announced_leave(car, rng, traits, car.leave_h)
            if real is None:  # home office today
                return _outings(rng, 0.9, 9.0, 20.0)
            leave = real
        else:
            leave = rng.gauss(car.leave_h, 0.3) * 60
        drive = car.commute_min * rng.uniform(0.85, 1.3)
        trips = [Trip(leave, drive, WORK)]
        if rng.random() < 0.15:  # lunch out
            lunch = rng.gauss(12.2, 0.3) * 60
            trips += [Trip(lunch, 10.0, OTHER), Trip(lunch + 10 + rng.uniform(30, 60), 10.0, WORK)]
        back = max(rng.gauss(car.return_h, 0.5) * 60, trips[-1].depart_min + 60)
        back_drive = car.commute_min * rng.uniform(0.9, 1.5)
        if rng.random() < 0.3:  # errand on the way home
            trips += [
                Trip(back, back_drive * 0.7, OTHER),
                Trip(back + back_drive + rng.uniform(20, 80), 15.0, HOME),
            ]
        else:
            trips.append(Trip(back, back_drive, HOME))
        if rng.random() < 0.2:  # evening out
            last = trips[-1].depart_min + trips[-1].drive_min + 30
            evening = max(last, rng.uniform(19.0, 21.0) * 60)
            trips += [Trip(evening, 15.0, OTHER), Trip(evening + 15 + rng.uniform(60, 180), 15.0, HOME)]
        return trips
    if car.profile == "night_shift" and weekday not in (4, 5):  # works Sun-Thu nights
        real = (
            _announced_leave(car, rng, traits, car.leave_h)
            if announced
            else rng.gauss(car.leave_h, 0.25) * 60
        )
        if real is None:
            return _outings(rng, 0.9, 9.0, 20.0)
        leave = real
        day_trips = _outings(rng, 0.6, 13.0, 17.0)
        back = leave + car.commute_min + rng.gauss(9.0, 0.3) * 60
        return [
            *day_trips,
            Trip(leave, car.commute_min * rng.uniform(0.9, 1.2), WORK),
            Trip(back, car.commute_min * rng.uniform(0.9, 1.2), HOME),
        ]
    if car.profile == "erratic":
        trips = []
        t = rng.uniform(0, 10) * 60
        for _ in range(_poisson(rng, 2.5)):
            dest = rng.choices([OTHER, WORK, HOME], weights=[5, 2, 3])[0]
            drive = max(5.0, rng.lognormvariate(3.0, 0.7))
            trips.append(Trip(t, drive, dest))
            t += drive + max(20.0, rng.lognormvariate(4.5, 0.9))
            if t > 24 * 60:
                break
        if trips and trips[-1].dest != HOME and rng.random() < 0.8:
            trips.append(Trip(t, max(5.0, rng.lognormvariate(3.0, 0.5)), HOME))
        return trips
    # weekends, home workers, night-shift days off
    return _outings(rng, 1.3 if weekend else 0.9, 9.0, 20.0)
