"""The emulator runtime on the simulated cars: reacts to ASSIGN / REVOKE, reports status, streams actions.

It runs on the world's clock: an ASSIGN handled at simulated time ``now`` boots the emulator a few
seconds later (STARTED), streams the session's actions, and ends with COMPLETED or FAILED. A REVOKE
stops the session (a closing FAIL action, no status). When the owner drives off, the session is
abandoned: most nodes report FAILED on the way out, some just go silent. With the owner-back habit the
owner walks up minutes before the drive-off: the session is abandoned (always reported, the car is still
online) and new work is refused as ``node_unavailable: owner_returned``. A dozing car (sleep habit) does not
hear an ASSIGN at all: the command times out unclaimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulator.emulator import Session
from simulator.rng import rng_for, uuid_from
from streams.topics import ACTIONS_TOPIC, STATUS_TOPIC

if TYPE_CHECKING:
    from simulator.car import Car
    from simulator.context import WorldContext as World

STATUS = STATUS_TOPIC
ACTIONS = ACTIONS_TOPIC
DEFAULT_TASK_SECONDS = 300.0


@dataclass
class Run:
    assignment_id: str
    task_id: str
    car: Car
    session: Session
    started: bool = False
    stopped: bool = False


class EmulatorHost:
    def __init__(self, world: World) -> None:
        self.w = world
        self.seen: set[str] = set()
        self.runs: dict[str, Run] = {}  # assignment_id -> running session

    # -- commands -------------------------------------------------------------------------------
    def handle(self, command: dict[str, Any]) -> bool:
        """Apply one tasks.assignments.v1 record; False when the vin is not one of ours. A command for
        ``site:<site_id>`` goes to that site's controller (``simulator.site_controller``)."""
        car = self.w.by_vin.get(command["vin"])
        if car is None:
            site = self.w.site_controllers.get(command["vin"])
            if site is None:
                return False
            site.handle(command)
            return True
        aid = command["assignment_id"]
        if command["command"] == "REVOKE":
            self.revoke(aid, command["task_id"])
            return True
        if aid in self.seen:  # redelivered ASSIGN: idempotent
            self.w.counters["assignments_duplicate"] += 1
            return True
        self.seen.add(aid)
        if not car.awake and car.traits.sleepy:
            self.w.counters["assignments_asleep"] += 1
            return True
        self.w.counters["assignments_received"] += 1
        self.assign(car, aid, command["task_id"])
        return True

    def assign(self, car: Car, assignment_id: str, task_id: str, duration_s: float | None = None) -> bool:
        w = self.w
        now = w.q.now
        rng = rng_for(w.config.seed, "assignment", assignment_id)
        reason = car.available(now)
        if reason is not None:
            w.counters["assignments_refused"] += 1
            w.q.schedule(
                now + rng.randint(200, 800),
                self._status,
                task_id,
                assignment_id,
                car.spec.vin,
                "FAILED",
                f"node_unavailable: {reason}",
            )
            return False
        if duration_s is None:
            duration_s = w.task_durations.get(task_id) or rng.lognormvariate(5.7, 0.6)
        faulty = car.spec.faulty
        fail_rate = w.config.faulty_fail_rate if faulty else w.config.healthy_fail_rate
        session = Session(
            rng,
            uuid_from(rng),
            task_id,
            car.spec.vin,
            duration_s,
            faulty,
            fail_rate,
            w.config.action_interval_s,
        )
        run = Run(assignment_id, task_id, car, session)
        self.runs[assignment_id] = run
        car.sessions[assignment_id] = run
        car.wake()
        w.q.schedule(now + rng.randint(1_000, 5_000), self._start, run)
        return True

    def revoke(self, assignment_id: str, task_id: str) -> None:
        run = self.runs.get(assignment_id)
        if run is None:  # some matchers revoke with a new id: find the task instead
            run = next((r for r in self.runs.values() if r.task_id == task_id), None)
        if run is None:
            self.w.counters["revokes_unknown"] += 1
            return
        self._stop(run, "revoked", report=False)

    def owner_returned(self, car: Car, always_report: bool = False) -> None:
        for run in list(car.sessions.values()):
            self._stop(run, "owner_returned", report=always_report or run.session.rng.random() < 0.7)

    def self_assign(self, task: dict[str, Any], duration_s: float) -> bool:
        """Without a matcher: run the task on a random available car (tries a few)."""
        w = self.w
        rng = rng_for(w.config.seed, "self-assign", task["task_id"])
        cars = w.cars
        for _ in range(20):
            car = cars[rng.randrange(len(cars))]
            if (
                car.available(w.q.now) is None
                and (task["region"] is None or task["region"] == car.spec.region)
                and car.spec.hw >= task["min_hw"]
                and car.spec.hw != "OTHER"
            ):
                return self.assign(car, f"self-{uuid_from(rng)}", str(task["task_id"]), duration_s)
        return False

    # -- session steps --------------------------------------------------------------------------
    def _start(self, run: Run) -> None:
        if run.stopped:
            return
        run.started = True
        self.w.counters["sessions_started"] += 1
        self._status(run.task_id, run.assignment_id, run.car.spec.vin, "STARTED", None)
        self._act(run)

    def _act(self, run: Run) -> None:
        if run.stopped:
            return
        w = self.w
        rec, gap = run.session.next_action()
        rec["ts"] = w.q.now
        w.emit(ACTIONS, run.session.session_id, rec)
        if gap is not None:
            w.q.schedule(w.q.now + int(gap) + 1, self._act, run)
            return
        s = run.session
        self._finish(run, s.outcome, s.error)
        w.q.schedule(
            w.q.now + s.rng.randint(100, 500),
            self._status,
            run.task_id,
            run.assignment_id,
            run.car.spec.vin,
            s.outcome,
            s.error,
        )

    def _stop(self, run: Run, error: str, report: bool) -> None:
        w = self.w
        if run.started:
            rec = run.session.abort(error)
            rec["ts"] = w.q.now
            w.emit(ACTIONS, run.session.session_id, rec)
        if report:
            self._status(run.task_id, run.assignment_id, run.car.spec.vin, "FAILED", f"abandoned: {error}")
        self._finish(run, "ABANDONED" if error == "owner_returned" else "REVOKED", error)

    def _finish(self, run: Run, outcome: str, error: str | None) -> None:
        run.stopped = True
        self.runs.pop(run.assignment_id, None)
        run.car.sessions.pop(run.assignment_id, None)
        self.w.counters[f"sessions_{outcome.lower()}"] += 1
        s = run.session
        self.w.truth.write(
            {
                "type": "session",
                "assignment_id": run.assignment_id,
                "task_id": run.task_id,
                "vin": run.car.spec.vin,
                "session_id": s.session_id,
                "ended_at": self.w.q.now,
                "outcome": outcome,
                "error": error,
                "actions": s.seq,
                "action_errors": s.errors,
                "loops": s.loops,
                "faulty_car": run.car.spec.faulty,
            }
        )

    def _status(self, task_id: str, assignment_id: str, vin: str, status: str, error: str | None) -> None:
        self.w.emit(
            STATUS,
            task_id,
            {
                "task_id": task_id,
                "assignment_id": assignment_id,
                "vin": vin,
                "ts": self.w.q.now,
                "status": status,
                "error": error,
            },
        )
