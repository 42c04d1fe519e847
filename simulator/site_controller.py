"""A datacenter site's controller: runs the emulator sessions the scheduler places on ``site:<site_id>``.

It takes ``tasks.assignments.v1`` commands for its node id as a car's emulator runtime does
(``simulator.nodes.EmulatorHost`` hands them over) and reports ``tasks.status.v1`` with that id as
``vin``: an ASSIGN holds a slot, boots (STARTED after 1-5 s), streams the session's actions and ends with
COMPLETED or FAILED; a REVOKE stops it (closing FAIL action ``revoked``, no status). Either frees the slot.
An ASSIGN with every slot taken, or while the emulator hall is cut, is refused (within a second) with FAILED
``node_unavailable: ...`` (the scheduler does not count that against the task). A site never reports
``owner_returned``, and islanding does not stop its sessions: only a REVOKE does, or the hall being cut
at the battery's trip floor (FAILED ``abandoned: site_load_shed``).

It publishes ``sites.capacity.v1`` every ``report_interval_s`` and at once when its power state changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulator.emulator import Session
from simulator.rng import rng_for, uuid_from
from simulator.site_compute import GRID, TRIPPED, SiteCapacity, Slots
from streams.sites import site_vin
from streams.topics import ACTIONS_TOPIC, SITE_CAPACITY_TOPIC, STATUS_TOPIC

if TYPE_CHECKING:
    from simulator.context import WorldContext as World

SHED_ERROR = "site_load_shed"


@dataclass
class SiteRun:
    assignment_id: str
    task_id: str
    session: Session
    started: bool = False
    stopped: bool = False


class SiteController:
    def __init__(self, world: World, capacity: SiteCapacity) -> None:
        self.w = world
        self.capacity = capacity
        self.node_id = site_vin(capacity.site_id)
        self.slots = Slots(capacity.slots_total)
        self.seen: set[str] = set()
        self.state = GRID
        self.reports = 0
        self.shed_sessions = 0  # sessions lost to the hall being cut (all time)

    @property
    def running(self) -> int:
        return self.slots.used

    def emulator_mw(self) -> float:
        return self.capacity.emulator_mw(self.slots.used)

    # -- capacity reports -------------------------------------------------------------------------
    def start(self) -> None:
        self.report()

    def report(self, scheduled: bool = True) -> None:
        """Publish one capacity report; a scheduled one plans the next."""
        w = self.w
        if w.emitting:
            rec = self.capacity.capacity_record(w.q.now, self.slots.free, self.state)
            w.emit(SITE_CAPACITY_TOPIC, self.capacity.site_id, rec)
            self.reports += 1
        if scheduled:
            interval = int(self.capacity.config.report_interval_s * 1000)
            w.q.schedule(w.q.now + max(1_000, interval), self.report)

    def power_changed(self, state: str) -> None:
        """The site's power state is now ``state``: report at once if it changed; cut the hall on TRIPPED."""
        if state == self.state:
            return
        self.state = state
        if state == TRIPPED:
            self._cut_hall()
        self.report(scheduled=False)

    # -- commands ---------------------------------------------------------------------------------
    def handle(self, command: dict[str, Any]) -> None:
        aid, task_id = command["assignment_id"], command["task_id"]
        if command["command"] == "REVOKE":
            self.revoke(aid, task_id)
            return
        if aid in self.seen:  # a redelivered ASSIGN: idempotent
            self.w.counters["site_assignments_duplicate"] += 1
            return
        self.seen.add(aid)
        self.w.counters["site_assignments_received"] += 1
        self.assign(aid, task_id)

    def assign(self, assignment_id: str, task_id: str, duration_s: float | None = None) -> bool:
        w = self.w
        now = w.q.now
        rng = rng_for(w.config.seed, "site-assignment", assignment_id)
        refusal = (
            "site_power_shed" if self.state == TRIPPED else ("site_full" if not self.slots.free else None)
        )
        if refusal is not None:
            w.counters["site_assignments_refused"] += 1
            w.q.schedule(
                now + rng.randint(200, 800),
                self._status,
                task_id,
                assignment_id,
                "FAILED",
                f"node_unavailable: {refusal}",
            )
            return False
        if duration_s is None:
            duration_s = w.task_durations.get(task_id) or rng.lognormvariate(5.7, 0.6)
        session = Session(
            rng,
            uuid_from(rng),
            task_id,
            self.node_id,
            duration_s,
            False,
            w.config.healthy_fail_rate,
            w.config.action_interval_s,
        )
        run = SiteRun(assignment_id, task_id, session)
        self.slots.take(assignment_id, run)
        w.q.schedule(now + rng.randint(1_000, 5_000), self._start, run)
        return True

    def revoke(self, assignment_id: str, task_id: str) -> None:
        run = self.slots.held.get(assignment_id)
        if run is None:  # some matchers revoke with a new id: find the task instead
            run = next((r for r in self.slots.held.values() if r.task_id == task_id), None)
        if run is None:
            self.w.counters["site_revokes_unknown"] += 1
            return
        self._stop(run, "revoked", report=False)

    def _cut_hall(self) -> None:
        for run in list(self.slots.held.values()):
            self.shed_sessions += 1
            self._stop(run, SHED_ERROR, report=True)

    # -- session steps ----------------------------------------------------------------------------
    def _start(self, run: SiteRun) -> None:
        if run.stopped:
            return
        run.started = True
        w = self.w
        w.counters["site_sessions_started"] += 1
        self._status(run.task_id, run.assignment_id, "STARTED", None)
        if self.capacity.config.actions:
            self._act(run)
        else:  # no trace: the session just lasts its time
            w.q.schedule(w.q.now + int(run.session.duration_ms), self._complete, run)

    def _act(self, run: SiteRun) -> None:
        if run.stopped:
            return
        w, s = self.w, run.session
        rec, gap = s.next_action()
        rec["ts"] = w.q.now
        w.emit(ACTIONS_TOPIC, s.session_id, rec)
        if gap is not None:
            w.q.schedule(w.q.now + int(gap) + 1, self._act, run)
            return
        self._complete(run)

    def _complete(self, run: SiteRun) -> None:
        if run.stopped:
            return
        w, s = self.w, run.session
        self._finish(run, s.outcome, s.error)
        at = w.q.now + s.rng.randint(100, 500)
        w.q.schedule(at, self._status, run.task_id, run.assignment_id, s.outcome, s.error)

    def _stop(self, run: SiteRun, error: str, report: bool) -> None:
        w = self.w
        if run.started and self.capacity.config.actions:
            rec = run.session.abort(error)
            rec["ts"] = w.q.now
            w.emit(ACTIONS_TOPIC, run.session.session_id, rec)
        if report:
            self._status(run.task_id, run.assignment_id, "FAILED", f"abandoned: {error}")
        self._finish(run, "REVOKED" if error == "revoked" else "ABANDONED", error)

    def _finish(self, run: SiteRun, outcome: str, error: str | None) -> None:
        run.stopped = True
        self.slots.release(run.assignment_id)
        self.w.counters[f"site_sessions_{outcome.lower()}"] += 1
        s = run.session
        self.w.truth.write(
            {
                "type": "session",
                "assignment_id": run.assignment_id,
                "task_id": run.task_id,
                "vin": self.node_id,
                "site_id": self.capacity.site_id,
                "session_id": s.session_id,
                "ended_at": self.w.q.now,
                "outcome": outcome,
                "error": error,
                "actions": s.seq,
                "action_errors": s.errors,
                "loops": s.loops,
                "faulty_car": False,
            }
        )

    def _status(self, task_id: str, assignment_id: str, status: str, error: str | None) -> None:
        self.w.emit(
            STATUS_TOPIC,
            task_id,
            {
                "task_id": task_id,
                "assignment_id": assignment_id,
                "vin": self.node_id,
                "ts": self.w.q.now,
                "status": status,
                "error": error,
            },
        )
