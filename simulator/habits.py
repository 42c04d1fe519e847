"""Owner habits as trips: where each car goes on a given day, in local time. Pure and seeded.

A plan is a list of ``Trip`` (departure as minutes after the day's local midnight, may exceed 24 h for
overnight shifts; drive minutes; destination HOME, WORK or OTHER).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from simulator.fleet import CarSpec

HOME, WORK, OTHER = "HOME", "WORK", "OTHER"


@dataclass(frozen=True)
class Trip:
    depart_min: float
    drive_min: float
    dest: str


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


def plan_day(car: CarSpec, rng: random.Random, weekday: int) -> list[Trip]:
    """Trips of one day (``weekday`` 0 = Monday) for ``car``'s profile."""
    weekend = weekday >= 5
    if car.profile == "commuter" and not weekend:
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
        leave = rng.gauss(car.leave_h, 0.25) * 60
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
