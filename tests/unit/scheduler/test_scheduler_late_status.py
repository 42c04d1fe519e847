"""Late statuses: a COMPLETED sent before the scheduler took the assignment back still completes the task."""

from __future__ import annotations

import heapq
import json
import random
from typing import Any

from test_scheduler_support import MIN, T0, Harness, S, cfg, commands, req, states, status, tel

from processors.scheduler import Scheduler
from processors.scheduler.tasks import MAX_REVOKED, Task

ENDS = ("PREEMPTED", "REQUEUED", "COMPLETED", "FAILED", "EXPIRED")  # lifecycle states ending an assignment


def lifecycle(outs: list, state: str) -> dict:
    return next(o.value for o in outs if o.topic == "tasks.lifecycle.v1" and o.value["state"] == state)


def claim_timed_out(h: Harness) -> str:
    """Task ``t`` assigned to V1, never STARTED in time, taken back at T0 + 61 s and queued again (V1 is
    throttled by that one failure, and no other node is there); returns the revoked assignment id."""
    h.tel("V1", T0)
    h.req("t", T0 + S)
    aid = h.s.tasks["t"].assignment_id
    h.tel("V1", T0 + 30 * S)
    outs = h.tick(T0 + 61 * S)
    assert commands(outs) == [("REVOKE", "t", "V1")] and "REQUEUED" in states(outs)
    assert h.s.queue("us-west") == ["t"] and h.s.tasks["t"].state == "QUEUED"
    return aid


def test_late_completed_after_claim_timeout_completes_the_queued_task() -> None:
    h = Harness(cfg(throttle_after_failures=1))
    aid = claim_timed_out(h)
    outs = h.status("t", T0 + 50 * S, "COMPLETED", aid=aid, vin="V1")  # sent before the timeout fired
    assert states(outs) == ["COMPLETED"] and commands(outs) == []
    done = lifecycle(outs, "COMPLETED")
    assert done["vin"] == "V1" and done["assignment_id"] == aid and done["attempt"] == 1
    assert done["ts"] == T0 + 61 * S  # the scheduler's clock: the lifecycle stays in order
    assert h.s.tasks["t"].state == "COMPLETED" and h.s.queue("us-west") == []
    assert h.s.nodes["V1"].completed == 1 and h.s.nodes["V1"].success_streak == 1
    assert h.s.counters["status_late_completed"] == 1 and h.s.counters["task_completed"] == 1


def test_late_completed_after_reassignment_revokes_the_newer_assignment() -> None:
    h = Harness()
    h.tel("V1", T0)
    h.req("t", T0 + S)
    old = h.s.tasks["t"].assignment_id
    h.status("t", T0 + 2 * S, "STARTED")
    h.tel("V2", T0 + 5 * S)
    h.req("other", T0 + 6 * S, min_hw="HW5")  # waits: no HW5 node
    outs = h.tel("V1", T0 + 10 * S, gear="D")  # owner back: preempted, and V2 takes it over
    assert states(outs, "t") == ["PREEMPTED", "REQUEUED", "ASSIGNED"] and h.holder("t") == "V2"
    new = h.s.tasks["t"].assignment_id
    outs = h.status("t", T0 + 9 * S, "COMPLETED", aid=old, vin="V1")
    assert commands(outs) == [("REVOKE", "t", "V2")]
    revoke = next(o.value for o in outs if o.topic == "tasks.assignments.v1")
    assert revoke["assignment_id"] == new and revoke["reason"] == "COMPLETED_EARLIER"
    assert states(outs, "t") == ["PREEMPTED", "COMPLETED"]  # the lifecycle ends the newer assignment too
    ended = lifecycle(outs, "PREEMPTED")
    assert ended["assignment_id"] == new and ended["vin"] == "V2" and ended["reason"] == "COMPLETED_EARLIER"
    assert lifecycle(outs, "COMPLETED")["assignment_id"] == old
    assert h.s.tasks["t"].preemptions == 1  # the owner's return only
    assert h.s.nodes["V2"].running == [] and "V2" in h.s.idle_nodes("us-west")
    assert h.s.nodes["V1"].completed == 1
    # The newer assignment's reports change nothing: the task is never completed twice.
    assert h.status("t", T0 + 12 * S, "STARTED", aid=new, vin="V2") == []
    assert h.status("t", T0 + 13 * S, "COMPLETED", aid=new, vin="V2") == []
    assert h.status("t", T0 + 9 * S, "COMPLETED", aid=old, vin="V1") == []  # a duplicate late report
    assert h.s.counters["task_completed"] == 1 and h.s.counters["status_late_done"] == 1
    assert h.s.nodes["V2"].completed == 0


def test_late_completed_sent_after_the_revoke_stays_stale() -> None:
    h = Harness(cfg(throttle_after_failures=1))
    aid = claim_timed_out(h)
    assert h.status("t", T0 + 62 * S, "COMPLETED", aid=aid, vin="V1") == []  # after the REVOKE: too late
    assert h.status("t", T0 + 63 * S, "COMPLETED", aid=aid, vin="V2") == []  # not the node it was given to
    assert h.s.counters["status_stale"] == 2
    assert h.s.tasks["t"].state == "QUEUED" and h.s.queue("us-west") == ["t"]
    assert h.s.nodes["V1"].completed == 0
    # whereas the report sent in time does count
    assert states(h.status("t", T0 + 59 * S, "COMPLETED", aid=aid, vin="V1")) == ["COMPLETED"]


def test_late_completed_beyond_the_allowance_stays_stale() -> None:
    h = Harness(cfg(throttle_after_failures=1, late_status_s=600))
    aid = claim_timed_out(h)
    h.tick(T0 + 50 * S + 601 * S)
    assert h.status("t", T0 + 50 * S, "COMPLETED", aid=aid, vin="V1") == []
    assert h.s.counters["status_late_too_late"] == 1 and h.s.counters["status_stale"] == 1
    assert h.s.tasks["t"].state == "QUEUED" and h.s.queue("us-west") == ["t"]


def test_late_completed_replaces_a_deadline_expiry_it_beat() -> None:
    h = Harness()
    h.tel("V1", T0)
    h.req("r", T0 + S, deadline=T0 + 90 * S, est_duration_s=60)  # can finish in time: it is started
    aid = h.s.tasks["r"].assignment_id
    h.status("r", T0 + 2 * S, "STARTED")
    h.tel("V1", T0 + 60 * S)
    assert states(h.tick(T0 + 90 * S)) == ["EXPIRED"]
    outs = h.status("r", T0 + 85 * S, "COMPLETED", aid=aid, vin="V1")
    assert states(outs) == ["COMPLETED"] and h.s.tasks["r"].state == "COMPLETED"


def test_late_started_and_failed_for_a_revoked_assignment_stay_stale() -> None:
    """The node was told to stop, and the task is already queued again: nothing to undo or retry."""
    h = Harness(cfg(throttle_after_failures=1))
    aid = claim_timed_out(h)
    assert h.status("t", T0 + 20 * S, "STARTED", aid=aid, vin="V1") == []
    assert h.status("t", T0 + 40 * S, "FAILED", aid=aid, vin="V1", error="OOM") == []
    assert h.s.counters["status_stale"] == 2 and h.s.tasks["t"].failures == 0


def test_revoked_assignments_survive_a_restore() -> None:
    h = Harness(cfg(throttle_after_failures=1))
    aid = claim_timed_out(h)
    state = json.loads(json.dumps(h.s.to_dict()))
    assert state["tasks"][0]["revoked"] == [[aid, "V1", T0 + 61 * S]]
    r = Harness(sched=Scheduler.from_dict(state, h.s.cfg))
    assert r.s.to_dict() == state
    assert states(r.status("t", T0 + 50 * S, "COMPLETED", aid=aid, vin="V1")) == ["COMPLETED"]


def test_task_dict_round_trip_and_old_states() -> None:
    task = Task(task_id="t", pool="us-west", requested_ts=T0, priority=5, est_duration_s=60)
    for k in range(MAX_REVOKED + 2):
        task.remember_revoke(f"a{k}", "V1", T0 + k * MIN)
    assert [a for a, _, _ in task.revoked] == [f"a{k}" for k in range(2, MAX_REVOKED + 2)]  # bounded
    d = json.loads(json.dumps(task.to_dict()))
    assert Task.from_dict(d) == task and Task.from_dict(d).revoked_at("a3", "V1") == T0 + 3 * MIN
    assert task.revoked_at("a0", "V1") is None and task.revoked_at("a3", "V2") is None
    del d["revoked"]  # written before the field existed
    old = Task.from_dict(d)
    assert old.revoked == () and old.revoked_at("a3", "V1") is None and old.to_dict()["revoked"] == []


def test_lagging_statuses_complete_what_the_nodes_completed_in_time() -> None:
    """The demo's check on a random workload: statuses arrive up to 6 minutes after the telemetry of
    their time (claim timeout 5 minutes). Every COMPLETED a node sent before the scheduler took its
    assignment back ends the task COMPLETED; none other does, and no task is completed twice."""
    rng = random.Random(7)
    s = Scheduler(cfg(claim_timeout_s=300))
    pending: list[tuple[int, int, tuple[str, Any]]] = []
    seq = 0

    def push(at: int, ev: tuple[str, Any]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(pending, (at, seq, ev))

    cars = {f"V{i:02d}": "P" for i in range(12)}
    for t in range(0, 120 * MIN, 20 * S):
        for vin in cars:
            if rng.random() < 0.03:
                cars[vin] = "D" if cars[vin] == "P" else "P"
            push(T0 + t, ("tel", tel(vin, T0 + t, gear=cars[vin])))
        if rng.random() < 0.6:
            push(T0 + t + S, ("req", req(f"T{t}", T0 + t + S, est_duration_s=rng.randrange(60, 900))))
        push(T0 + t + 10 * S, ("tick", T0 + t + 10 * S))
    sent: list[tuple[str, str, int]] = []  # COMPLETED reports: (task_id, assignment_id, ts)
    taken_back: dict[str, int] = {}
    completed: list[tuple[str, str]] = []
    holding: dict[str, str] = {}  # task_id -> assignment the lifecycle shows current
    while pending:
        at, _, (kind, payload) = heapq.heappop(pending)
        if kind == "tel":
            outs = s.on_telemetry(payload)
        elif kind == "req":
            outs = s.on_request(payload)
        elif kind == "status":
            outs = s.on_status(payload)
        else:
            outs = s.on_tick(payload)
        s.check_invariants()
        for o in outs:
            v = o.value
            if o.topic == "tasks.assignments.v1" and v["command"] == "REVOKE":
                taken_back.setdefault(v["assignment_id"], v["ts"])
            elif o.topic == "tasks.lifecycle.v1":
                if v["state"] == "ASSIGNED":
                    assert v["task_id"] not in holding, f"assigned twice at once: {v}"
                    holding[v["task_id"]] = v["assignment_id"]
                elif v["state"] in ENDS and v["assignment_id"] in (None, holding.get(v["task_id"])):
                    holding.pop(v["task_id"], None)
                if v["state"] == "COMPLETED":
                    completed.append((v["task_id"], v["assignment_id"]))
            elif o.topic == "tasks.assignments.v1":
                ids = (v["task_id"], v["assignment_id"], v["vin"])
                start, end = at + rng.randrange(1, 40) * S, at + rng.randrange(60, 600) * S
                st = "COMPLETED" if rng.random() < 0.9 else "FAILED"
                if st == "COMPLETED":
                    sent.append((v["task_id"], v["assignment_id"], end))
                for ts, what in ((start, "STARTED"), (end, st)):  # delivered late, in order
                    push(ts + rng.randrange(0, 6 * MIN), ("status", status(*ids, ts, what)))
    in_time = {(t, a) for t, a, ts in sent if ts < taken_back.get(a, ts + 1)}
    assert len(in_time) > 20
    assert {t for t, _ in in_time} <= {t for t, task in s.tasks.items() if task.state == "COMPLETED"}
    assert s.counters["status_late_completed"] > 0
    assert set(completed) <= in_time
    assert len({t for t, _ in completed}) == len(completed)
    assert not {t for t in holding if s.tasks[t].state not in ("ASSIGNED", "RUNNING")}  # all ended
