"""A car in the world: drives its owner's trips, plugs in, charges, sleeps, and reports telemetry.

``Car`` is an agent: its handlers run on the world's event queue and it talks to the world only through
``world.q`` (scheduling), ``world.emit`` (records), ``world.truth`` and ``world.emitting``.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Any

from simulator import charging
from simulator.config import DAY_MS, HOUR_MS, REGION_AMBIENT_C
from simulator.fleet import CarSpec
from simulator.habits import HOME, OTHER, WORK, Trip, car_traits, plan_day
from simulator.rng import rng_for
from streams.topics import TELEMETRY_TOPIC

if TYPE_CHECKING:
    from simulator.context import WorldContext as World

TELEMETRY = TELEMETRY_TOPIC
MIN_MS = 60_000
PLUGGED_STATES = frozenset({"STARTING", "CHARGING", "COMPLETE", "STOPPED", "NO_POWER"})
# Raw values outside the documented enum, seen in practice (sent as-is in JSON, as UNKNOWN in Avro).
ODD_CHARGE_STATES = ("Charging", "FAST_CHARGING", "Disconnected", "ERROR", "7")
_OPTIONAL = (
    "soc_pct",
    "charge_limit_pct",
    "minutes_to_full",
    "at_home",
    "compute_temp_c",
    "software_version",
)


class Car:
    def __init__(self, spec: CarSpec, world: World) -> None:
        self.spec = spec
        self.w = world
        seed = world.config.seed
        self.plan_rng = rng_for(seed, "plan", spec.index)
        self.rng = rng_for(seed, "car-run", spec.index)
        self.noise = world.config.car_noise
        self.loc = HOME
        self.driving = False
        self.gear = "P"
        self.soc = self.rng.uniform(35.0, 90.0)
        self.soc_ts = world.q.now
        self.limit = spec.charge_limit_pct
        self.plugged = False
        self.charger_kw = 0.0
        self.plug_ms = 0
        self.starting_until = 0
        self.charge_from = 0  # off-peak start: STOPPED before it
        self.no_power = False
        self.override_departure: int | None = None
        self.departure_at_plug: int | None = None
        self.awake = True
        self.epoch = 0
        self.habits = world.config.habits
        self.traits = car_traits(world.config, spec)
        self.habit_rng = rng_for(seed, "habit-run", spec.index)  # draws of the habits only (never default)
        self.owner_present = False  # the owner walked up (owner-back window): no new work, work abandoned
        self.busy_until = 0
        self.departures: list[int] = []  # planned departure times, sorted
        self.sessions: dict[str, Any] = {}  # assignment_id -> running emulator session
        self.local_offset_ms = spec.utc_offset_h * HOUR_MS
        self.base_rec = {"vin": spec.vin, "hw": spec.hw, "region": spec.region, "opted_in": spec.opted_in}
        self.ambient = REGION_AMBIENT_C.get(spec.region, 12.0) + spec.ambient_bias_c

    # -- planning -----------------------------------------------------------------------------
    def start(self, first_day_local_ms: int) -> None:
        """Plan the first local day; each plan schedules the next day's at its own midnight (a day ahead)."""
        self.plan(first_day_local_ms)
        self.w.q.schedule(self.w.q.now, self.maybe_sleep, self.epoch)

    def plan(self, local_midnight_utc_ms: int) -> None:
        weekday = ((local_midnight_utc_ms + self.local_offset_ms) // DAY_MS + 3) % 7
        habits = self.habits if self.habits.enabled else None
        lo, hi = self.habits.owner_back_min
        for trip in plan_day(self.spec, self.plan_rng, int(weekday), habits, self.traits):
            at = local_midnight_utc_ms + int(trip.depart_min * MIN_MS)
            if at < self.w.q.now:
                continue
            bisect.insort(self.departures, at)
            self.w.q.schedule(at, self.depart, trip, at)
            if hi > 0:
                back = at - int(self.habit_rng.uniform(lo, hi) * MIN_MS)
                self.w.q.schedule(back, self.owner_back_for_trip, trip, at)
        self.w.q.schedule(local_midnight_utc_ms, self.plan, local_midnight_utc_ms + DAY_MS)

    def next_departure(self, now: int) -> int | None:
        i = bisect.bisect_right(self.departures, now)
        return self.departures[i] if i < len(self.departures) else None

    # -- charge physics -----------------------------------------------------------------------
    def advance(self, t: int) -> None:
        if self.plugged and not self.no_power:
            begin = max(self.soc_ts, self.starting_until, self.charge_from)
            if t > begin:
                self.soc = charging.soc_after(
                    self.soc, self.limit, self.charger_kw, self.spec.capacity_kwh, (t - begin) / HOUR_MS
                )
        if t > self.soc_ts:
            self.soc_ts = t

    def charge_state(self, t: int) -> str:
        if not self.plugged:
            return "DISCONNECTED"
        if self.no_power:
            return "NO_POWER"
        if t < self.starting_until:
            return "STARTING"
        if t < self.charge_from:
            return "STOPPED"
        return "COMPLETE" if self.soc >= self.limit - 0.05 else "CHARGING"

    def charge_done_at(self) -> int:
        """When charging reaches the limit (soc and soc_ts must be current)."""
        begin = max(self.soc_ts, self.starting_until, self.charge_from)
        hours = charging.hours_to(self.soc, self.limit, self.charger_kw, self.spec.capacity_kwh)
        return begin + int(hours * HOUR_MS) + 1 if math.isfinite(hours) else begin + DAY_MS

    def is_idle(self, t: int) -> bool:
        """Parked, plugged in, at home or work: the state a node must be in to take work."""
        return not self.driving and self.plugged and self.loc != OTHER

    def available(self, t: int) -> str | None:
        """Why this car cannot take a task now (None: it can)."""
        if not self.spec.opted_in:
            return "not opted in"
        if self.driving or self.gear != "P":
            return "vehicle not parked"
        if not self.plugged:
            return "not plugged in"
        if self.owner_present:
            return "owner_returned"
        if len(self.sessions) >= (2 if self.spec.hw == "HW5" else 1):
            return "node busy"
        return None

    # -- owner back (habit) -------------------------------------------------------------------
    def owner_back_for_trip(self, trip: Trip, planned_at: int) -> None:
        """The owner walks up before a planned trip (only if the trip will really drive off from here)."""
        if (
            self.driving
            or planned_at not in self.departures
            or (trip.dest == self.loc and trip.dest != OTHER)
        ):
            return
        self.owner_back()

    def owner_back(self) -> None:
        """Phone key in range: the car wakes, the emulator abandons its work (reported: the car is online)
        and refuses new work; telemetry still says parked and plugged until the drive-off."""
        now = self.w.q.now
        self.owner_present = True
        self.wake()
        if self.sessions:
            self.w.emulators.owner_returned(self, always_report=True)
        if self.w.recording:
            self.w.truth.write(
                {"type": "owner_back", "vin": self.spec.vin, "ts": now, "plugged": self.plugged}
            )

    def fast_charge_done(self, plug_ms: int) -> None:
        """A fast-charge stop ends at full: the owner unplugs (and moves the car off the stall)."""
        if not self.plugged or self.plug_ms != plug_ms or self.driving:
            return
        now = self.w.q.now
        self.advance(now)
        self.unplug(now)
        if self.sessions:
            self.w.emulators.owner_returned(self, always_report=True)
        self.owner_present = False

    def owner_back_at_charger(self, plug_ms: int) -> None:
        if self.plugged and self.plug_ms == plug_ms and not self.driving:
            self.owner_back()

    # -- trips --------------------------------------------------------------------------------
    def depart(self, trip: Trip, planned_at: int) -> None:
        q = self.w.q
        now = q.now
        if self.driving:  # previous trip ran long: leave a bit after arriving
            q.schedule(self.busy_until + 5 * MIN_MS, self.depart, trip, planned_at)
            return
        i = bisect.bisect_left(self.departures, planned_at)
        if i < len(self.departures) and self.departures[i] == planned_at:
            del self.departures[i]
        self.owner_present = False
        if trip.dest == self.loc and trip.dest != OTHER:
            return
        self.advance(now)
        if self.plugged:
            self.unplug(now)
        if self.sessions:
            self.w.emulators.owner_returned(self)
        self.wake()
        self.driving = True
        self.gear = "D"
        self.busy_until = now + int(trip.drive_min * MIN_MS)
        q.schedule(self.busy_until, self.arrive, trip)

    def arrive(self, trip: Trip) -> None:
        now = self.w.q.now
        self.soc = max(
            3.0,
            self.soc
            - charging.drive_consumption_pct(trip.drive_min, self.spec.capacity_kwh, self.spec.kwh_per_km),
        )
        self.soc_ts = now
        self.loc = trip.dest
        self.driving = False
        self.gear = "P"
        self.maybe_plug(now)
        self.w.q.schedule(now + int(self.rng.uniform(15, 30) * MIN_MS), self.maybe_sleep, self.epoch)

    def maybe_plug(self, now: int) -> None:
        spec, rng = self.spec, self.rng
        kw = 0.0
        if self.loc == HOME and spec.home_charger_kw:
            if (self.soc < spec.plug_threshold_pct and rng.random() < 0.92) or self.soc < 30:
                kw = spec.home_charger_kw
        elif self.loc == WORK and spec.work_charger_kw:
            kw = spec.work_charger_kw if rng.random() < 0.7 else 0.0
        elif self.loc == OTHER and self.soc < 25 and rng.random() < 0.8:
            kw = 150.0  # public fast charger
        if kw:
            self.plug(now, kw)

    def plug(self, now: int, kw: float) -> None:
        rng = self.rng
        self.plugged = True
        self.charger_kw = kw
        self.plug_ms = now
        self.soc_ts = now
        self.starting_until = now + rng.randint(5_000, 25_000)
        self.no_power = rng.random() < 0.01
        self.charge_from = 0
        off_peak = self.spec.off_peak_start_h
        if self.loc == HOME and off_peak is not None:
            start = self._next_local(now, off_peak)
            if start - now < 12 * HOUR_MS:
                self.charge_from = start
        self.override_departure = None
        nxt = self.next_departure(now)
        if self.spec.departure_setting_h is not None and nxt is not None and rng.random() < 0.25:
            self.override_departure = nxt + rng.randint(-10, 10) * MIN_MS  # a one-off, set for tomorrow
        self.departure_at_plug = self.scheduled_departure(now)
        if not self.awake:
            self.wake()
        if kw >= 50.0 and self.habits.fast_charge_to_full:
            self._plan_fast_charge_end(now)

    def _plan_fast_charge_end(self, now: int) -> None:
        """Fast-charge stop (habit): the owner is back when the battery is full (after the owner-back
        window, when that habit is on) and unplugs 0-5 minutes after."""
        self.advance(now)
        leave = self.charge_done_at() + int(self.habit_rng.uniform(0, 5) * MIN_MS)
        self.w.q.schedule(leave, self.fast_charge_done, self.plug_ms)
        lo, hi = self.habits.owner_back_min
        if hi > 0:
            back = max(now, leave - int(self.habit_rng.uniform(lo, hi) * MIN_MS))
            self.w.q.schedule(back, self.owner_back_at_charger, self.plug_ms)

    def unplug(self, now: int) -> None:
        self.plugged = False
        if self.w.recording:
            self.w.truth.write(
                {
                    "type": "charge_session",
                    "vin": self.spec.vin,
                    "location": self.loc,
                    "plug_in": self.plug_ms,
                    "unplug": now,
                    "true_departure": now,
                    "reported_departure": self.departure_at_plug,
                    "charger_kw": self.charger_kw,
                    "soc_at_unplug": round(self.soc, 1),
                    "idle_eligible": self.loc != OTHER,
                }
            )
            self.w.sessions_log.append((self.plug_ms, now, self.loc))

    def _next_local(self, now: int, hour: float) -> int:
        local_midnight = (now + self.local_offset_ms) // DAY_MS * DAY_MS - self.local_offset_ms
        t = local_midnight + int(hour * HOUR_MS)
        return t if t > now else t + DAY_MS

    def scheduled_departure(self, now: int) -> int | None:
        if self.override_departure is not None and self.override_departure > now:
            return self.override_departure
        h = self.spec.departure_setting_h
        return None if h is None else self._next_local(now, h)

    # -- sleep and wake -----------------------------------------------------------------------
    def stays_awake(self, now: int) -> int | None:
        """Until when the car must stay awake (None: it may sleep now)."""
        if self.driving or self.sessions:
            return now + 10 * MIN_MS
        if self.plugged:
            if self.spec.opted_in and self.loc != OTHER and not self.traits.sleepy:
                return now + 60 * MIN_MS  # an idle node keeps its computer awake
            if not self.no_power and now >= self.charge_from:
                self.advance(now)
                if self.charge_state(now) in ("STARTING", "CHARGING"):
                    return self.charge_done_at() + int(self.rng.uniform(5, 20) * MIN_MS)
        return None

    def maybe_sleep(self, epoch: int) -> None:
        if epoch != self.epoch or not self.awake:
            return
        now = self.w.q.now
        until = self.stays_awake(now)
        if until is not None:
            self.w.q.schedule(until, self.maybe_sleep, self.epoch)
            return
        if self.w.emitting:
            self.emit_sleep_record(now)
            if self.traits.sleepy and self.w.recording:
                self.w.truth.write(
                    {"type": "sleep", "vin": self.spec.vin, "ts": now, "plugged": self.plugged}
                )
        self.awake = False
        self.epoch += 1
        if self.plugged and self.charge_from > now:
            self.w.q.schedule(self.charge_from, self.wake)

    def wake(self) -> None:
        if self.awake:
            return
        self.awake = True
        self.epoch += 1
        now = self.w.q.now
        first = now + self.rng.randint(500, 3000)  # drawn even without telemetry: same habits either way
        if self.w.config.telemetry:
            self.w.q.schedule(first, self.tick, self.epoch)
        self.w.q.schedule(now + int(self.rng.uniform(15, 30) * MIN_MS), self.maybe_sleep, self.epoch)

    def begin_reporting(self) -> None:
        """Called when the world starts emitting: awake cars start their telemetry chain."""
        if self.awake:
            first = self.w.q.now + self.rng.randint(0, int(self.spec.interval_s * 1000))
            if self.w.config.telemetry:
                self.w.q.schedule(first, self.tick, self.epoch)

    # -- telemetry ----------------------------------------------------------------------------
    def tick(self, epoch: int) -> None:
        if epoch != self.epoch or not self.awake or not self.w.emitting:
            return
        now = self.w.q.now
        rng = self.rng
        noise = self.noise
        if rng.random() >= noise.skip:
            self.emit_telemetry(now)
        gap = self.spec.interval_s * 1000 * rng.uniform(0.9, 1.1)
        wifi = self.wifi_factor()
        if not self.driving and rng.random() < noise.weak_wifi_gap * wifi:
            silent = rng.uniform(2, 15) * MIN_MS
            if wifi != 1.0:  # bad Wi-Fi also drops out for longer
                silent *= max(1.0, math.sqrt(wifi))
                if self.w.recording:
                    self.w.truth.write(
                        {
                            "type": "wifi_gap",
                            "vin": self.spec.vin,
                            "start": now,
                            "end": now + int(gap + silent),
                        }
                    )
            gap += silent
        self.w.q.schedule(now + int(gap), self.tick, epoch)

    def wifi_factor(self) -> float:
        """Weak-Wi-Fi gap rate multiplier where the car is (1.0 everywhere without the Wi-Fi habit)."""
        t = self.traits
        if t.wifi_home == 1.0 and t.wifi_work == 1.0:
            return 1.0
        if self.loc == HOME:
            return t.wifi_home
        return t.wifi_work if self.loc == WORK else self.habits.wifi_public_factor

    def telemetry_record(self, now: int) -> dict[str, Any]:
        self.advance(now)
        cs = self.charge_state(now)
        mtf: float | None = None
        if cs in ("CHARGING", "STARTING"):
            mtf = round(
                charging.hours_to(self.soc, self.limit, self.charger_kw, self.spec.capacity_kwh) * 60, 1
            )
        elif cs == "COMPLETE":
            mtf = 0.0
        local_h = ((now + self.local_offset_ms) % DAY_MS) / HOUR_MS
        temp = (
            self.ambient
            + 6.0 * math.sin((local_h - 9.0) / 24.0 * 2 * math.pi)
            + 9.0
            + 18.0 * len(self.sessions)
            + (3.0 if cs == "CHARGING" else 0.0)
            + self.rng.gauss(0.0, 0.6)
        )
        spec = self.spec
        rec = dict(self.base_rec)
        rec.update(
            ts=now,
            charge_state=cs,
            gear=self.gear,
            soc_pct=round(self.soc, 1),
            charge_limit_pct=self.limit,
            minutes_to_full=mtf,
            scheduled_departure=self.scheduled_departure(now),
            at_home=(self.loc == HOME) if spec.reports_at_home else None,
            compute_temp_c=round(temp, 1),
            software_version=spec.software_version,
        )
        return rec

    def emit_telemetry(self, now: int) -> None:
        rec = self.telemetry_record(now)
        rng, noise, w = self.rng, self.noise, self.w
        if rng.random() < noise.missing_field:
            rec[rng.choice(_OPTIONAL)] = None
        if rng.random() < noise.out_of_enum:
            rec["charge_state"] = rng.choice(ODD_CHARGE_STATES)
            w.counters["telemetry_out_of_enum"] += 1
        delay = 0
        if rng.random() < noise.delayed:
            delay = rng.randint(5_000, 120_000)
            w.counters["telemetry_delayed"] += 1
        w.emit(TELEMETRY, self.spec.vin, rec, delay)
        if rng.random() < noise.duplicate:
            w.counters["telemetry_duplicated"] += 1
            w.emit(TELEMETRY, self.spec.vin, rec, delay + rng.randint(0, 2_000))

    def emit_sleep_record(self, now: int) -> None:
        """The last report before sleep: fields go invalid (not reported), which never means unplugged."""
        rec = dict(self.base_rec)
        rec.update(
            ts=now,
            charge_state="UNKNOWN",
            gear="UNKNOWN",
            soc_pct=None,
            charge_limit_pct=None,
            minutes_to_full=None,
            scheduled_departure=None,
            at_home=None,
            compute_temp_c=None,
            software_version=self.spec.software_version,
        )
        if self.rng.random() < 0.5:  # some cars keep the last charge state on the way down
            self.advance(now)
            rec["charge_state"] = self.charge_state(now)
        self.w.emit(TELEMETRY, self.spec.vin, rec, 0)
