"""Preemption and requeue, claim timeouts, deadlines, leases, throttling, stale and duplicate status."""

from __future__ import annotations

import pytest
from test_scheduler_support import MIN, T0, Harness, S, cfg, commands, states

from processors.scheduler import InvalidRecord, assignment_id_for


def running(h: Harness, vin: str = "V1", task_id: str = "t", ts: int = T0) -> str:
    """Node ``vin`` eligible and running task ``task_id``; returns the assignment id."""
    h.tel(vin, ts)
    h.req(task_id, ts + S)
    h.status(task_id, ts + 2 * S, "STARTED")
    assert h.s.tasks[task_id].state == "RUNNING"
    return h.s.tasks[task_id].assignment_id


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"gear": "D"}, "NOT_PARKED"),
        ({"gear": "R"}, "NOT_PARKED"),
        ({"charge_state": "DISCONNECTED"}, "NOT_PLUGGED_IN"),
        ({"scheduled_departure": T0 + 20 * MIN}, "DEPARTURE_SOON"),
        ({"opted_in": False}, "NOT_OPTED_IN"),
        ({"compute_temp_c": 95.0}, "TOO_HOT"),
    ],
)
def test_owner_return_preempts_and_requeues(change: dict, reason: str) -> None:
    h = Harness()
    aid = running(h)
    outs = h.tel("V1", T0 + 10 * S, **change)
    assert commands(outs) == [("REVOKE", "t", "V1")]
    revoke = next(o.value for o in outs if o.topic == "tasks.assignments.v1")
    assert revoke["assignment_id"] == aid and revoke["reason"] == reason
    assert states(outs) == ["PREEMPTED", "REQUEUED"]
    assert h.s.tasks["t"].state == "QUEUED" and h.s.tasks["t"].preemptions == 1


def test_unknown_values_do_not_preempt() -> None:
    h = Harness()
    running(h)
    outs = h.tel("V1", T0 + 10 * S, gear="UNKNOWN", charge_state="UNKNOWN", soc_pct=None)
    assert commands(outs) == [] and h.s.tasks["t"].state == "RUNNING"


def test_preempted_task_goes_ahead_of_newer_work_and_to_another_node() -> None:
    h = Harness()
    running(h)
    h.req("newer", T0 + 5 * S)  # same priority, newer
    h.tel("V1", T0 + 10 * S, gear="D")
    assert h.s.queue("us-west") == ["t", "newer"]
    outs = h.tel("V2", T0 + 11 * S)
    assert h.holder("t") == "V2" and h.holder("newer") is None
    assign = next(o.value for o in outs if o.topic == "tasks.assignments.v1")
    assert assign["attempt"] == 2 and assign["assignment_id"] == assignment_id_for("t", 2)


def test_stale_lease_expiry_preempts() -> None:
    h = Harness()
    running(h)
    assert h.tick(T0 + 120 * S) == []
    outs = h.tick(T0 + 121 * S)  # silent past the lease: no new work, but the claim is kept a while
    assert commands(outs) == [] and h.s.nodes["V1"].reason == "LEASE_EXPIRED"
    assert h.s.tasks["t"].state == "RUNNING"
    claim = int(h.s.cfg.claim_lease_s)
    assert commands(h.tick(T0 + claim * S)) == []
    outs = h.tick(T0 + (claim + 1) * S)  # claim_lease_s of silence: the claim is lost
    assert commands(outs) == [("REVOKE", "t", "V1")]
    assert states(outs) == ["PREEMPTED", "REQUEUED"]
    assert outs[0].value["reason"] == "LEASE_EXPIRED"


def test_departure_guard_preempts_by_time_alone() -> None:
    h = Harness()
    h.tel("V1", T0, scheduled_departure=T0 + 60 * MIN)
    h.req("t", T0 + S)
    h.status("t", T0 + 2 * S, "STARTED")
    for k in range(1, 40):  # the car keeps reporting the same thing every minute
        assert commands(h.tel("V1", T0 + k * MIN, scheduled_departure=T0 + 60 * MIN)) == []
    assert commands(h.tick(T0 + 40 * MIN - 1)) == []
    outs = h.tick(T0 + 40 * MIN)  # no telemetry needed: the guard starts 20 min before departure
    assert commands(outs) == [("REVOKE", "t", "V1")]
    assert states(outs) == ["PREEMPTED", "REQUEUED"]


def test_claim_timeout_requeues() -> None:
    h = Harness()
    h.tel("V1", T0)
    h.req("t", T0 + S)
    aid = h.s.tasks["t"].assignment_id
    assert h.tick(T0 + 60 * S) == []
    h.tel("V1", T0 + 30 * S)
    outs = h.tick(T0 + 61 * S)
    assert commands(outs)[0] == ("REVOKE", "t", "V1")
    assert "REQUEUED" in states(outs)
    requeued = next(o.value for o in outs if o.value.get("state") == "REQUEUED")
    assert requeued["reason"] == "CLAIM_TIMEOUT" and requeued["assignment_id"] == aid
    # the same node is free again and takes it back under a new assignment id
    assert h.holder("t") == "V1" and h.s.tasks["t"].assignment_id == assignment_id_for("t", 2)
    # a late STARTED for the old assignment is stale
    assert h.status("t", T0 + 62 * S, "STARTED", aid=aid) == []
    assert h.s.counters["status_stale"] == 1


def test_deadline_expiry_of_queued_and_running_tasks() -> None:
    h = Harness()
    h.req("q", T0, deadline=T0 + 10 * MIN, est_duration_s=60)
    outs = h.tick(T0 + 10 * MIN)
    assert states(outs) == ["EXPIRED"] and h.s.queue("us-west") == []
    h2 = Harness()
    h2.tel("V1", T0)
    h2.req("r", T0 + S, deadline=T0 + 90 * S, est_duration_s=60)
    h2.status("r", T0 + 2 * S, "STARTED")
    h2.tel("V1", T0 + 60 * S)
    outs = h2.tick(T0 + 90 * S)
    assert commands(outs) == [("REVOKE", "r", "V1")] and states(outs) == ["EXPIRED"]
    assert h2.s.nodes["V1"].eligible


def test_completed_frees_node_and_builds_trust() -> None:
    h = Harness()
    running(h)
    outs = h.status("t", T0 + 10 * S, "COMPLETED")
    assert states(outs) == ["COMPLETED"]
    node = h.s.nodes["V1"]
    assert node.running == [] and node.eligible and node.success_streak == 1 and node.reliability > 0.7


def test_failed_task_retries_then_gives_up() -> None:
    h = Harness(cfg(max_failures=2, throttle_after_failures=10))
    running(h)
    outs = h.status("t", T0 + 10 * S, "FAILED", error="boom")
    assert states(outs)[:2] == ["FAILED", "REQUEUED"] and outs[0].value["reason"] == "boom"
    assert h.holder("t") == "V1"  # only node around: retried there
    h.status("t", T0 + 11 * S, "STARTED")
    outs = h.status("t", T0 + 12 * S, "FAILED", error="boom")
    assert states(outs) == ["FAILED"] and outs[0].value["reason"] == "MAX_FAILURES: boom"
    assert h.s.tasks["t"].state == "FAILED"


def test_retry_prefers_trusted_node() -> None:
    h = Harness(cfg(trust_after_successes=2))
    for i in range(2):  # V_GOOD completes two tasks: trusted
        h.tel("V_GOOD", T0 + i * 10 * S)
        h.req(f"w{i}", T0 + i * 10 * S + S)
        h.status(f"w{i}", T0 + i * 10 * S + 2 * S, "COMPLETED")
    h.req("busy", T0 + 30 * S)  # V_GOOD busy, so x's first attempt lands on V_BAD
    assert h.holder("busy") == "V_GOOD"
    h.tel("V_BAD", T0 + 31 * S)
    h.req("x", T0 + 32 * S)
    assert h.holder("x") == "V_BAD"
    h.status("x", T0 + 33 * S, "FAILED")
    assert h.holder("x") == "V_BAD" or h.holder("x") is None
    # rerun with V_BAD free as well: a retried task goes to the trusted node even if others rank higher
    h2 = Harness(cfg(trust_after_successes=2))
    for i in range(2):
        h2.tel("V_GOOD", T0 + i * 10 * S, at_home=False)  # away from home: the worse stay estimate
        h2.req(f"w{i}", T0 + i * 10 * S + S)
        h2.status(f"w{i}", T0 + i * 10 * S + 2 * S, "COMPLETED")
    h2.req("busy", T0 + 30 * S)
    h2.tel("V_BAD", T0 + 31 * S)
    h2.req("x", T0 + 32 * S)
    assert h2.holder("x") == "V_BAD"
    h2.tel("V_NEW", T0 + 33 * S)  # untrusted, at home: ranks above V_GOOD for fresh tasks
    h2.req("fresh", T0 + 34 * S, est_duration_s=3 * 3600)
    assert h2.holder("fresh") == "V_NEW"
    h2.status("fresh", T0 + 35 * S, "COMPLETED")
    h2.status("busy", T0 + 36 * S, "COMPLETED")  # V_GOOD free again (3 successes)
    h2.req("fresh2", T0 + 37 * S, est_duration_s=3 * 3600)
    assert h2.holder("fresh2") == "V_NEW"  # ranking for a fresh task: stay probability first
    h2.status("x", T0 + 38 * S, "FAILED")  # x retried: V_GOOD (trusted) beats V_BAD and busy V_NEW
    assert h2.s.tasks["x"].failures == 1 and h2.holder("x") == "V_GOOD"


def test_failing_node_is_throttled_with_backoff() -> None:
    h = Harness(cfg(throttle_after_failures=3, throttle_base_s=600, max_failures=100))
    h.tel("BAD", T0)
    h.req("t", T0 + S)
    for k in range(3):
        assert h.holder("t") == "BAD"
        h.status("t", T0 + (2 + k) * S, "FAILED", error="crash")
    node = h.s.nodes["BAD"]
    assert node.reason == "THROTTLED" and node.throttled_until == T0 + 4 * S + 600 * S
    assert h.holder("t") is None  # a throttled node gets nothing
    h.tel("GOOD", T0 + 5 * S)
    assert h.holder("t") == "GOOD"
    h.status("t", T0 + 6 * S, "COMPLETED")
    # throttling ends on time (the node kept reporting), and a further failure doubles the backoff
    for k in range(1, 11):
        h.tel("BAD", T0 + k * MIN)
    h.tel("GOOD", T0 + 10 * MIN)
    h.tick(T0 + 10 * MIN + 4 * S)
    assert h.s.nodes["BAD"].eligible
    h.req("u", T0 + 10 * MIN + 5 * S, priority=9)
    holder = h.holder("u")
    if holder == "BAD":
        h.status("u", T0 + 10 * MIN + 6 * S, "FAILED")
        assert h.s.nodes["BAD"].throttled_until == T0 + 10 * MIN + 6 * S + 1200 * S


def test_throttled_node_keeps_running_work() -> None:
    h = Harness(cfg(throttle_after_failures=1, default_capacity=2))
    h.tel("V1", T0)
    h.req("a", T0 + S)
    h.req("b", T0 + 2 * S)
    h.status("a", T0 + 3 * S, "STARTED")
    h.status("b", T0 + 4 * S, "FAILED")
    assert h.s.nodes["V1"].reason == "THROTTLED" and h.s.tasks["a"].state == "RUNNING"


def test_duplicate_and_out_of_order_status() -> None:
    h = Harness()
    aid = running(h)
    assert h.status("t", T0 + 3 * S, "STARTED") == []  # duplicate
    assert states(h.status("t", T0 + 4 * S, "COMPLETED")) == ["COMPLETED"]
    assert h.status("t", T0 + 2 * S, "STARTED", aid=aid, vin="V1") == []  # late, after the end
    assert h.status("t", T0 + 5 * S, "COMPLETED", aid=aid, vin="V1") == []  # duplicate completion
    assert h.s.nodes["V1"].completed == 1


def test_completed_without_started_is_accepted() -> None:
    h = Harness()
    h.tel("V1", T0)
    h.req("t", T0 + S)
    assert states(h.status("t", T0 + 2 * S, "COMPLETED")) == ["COMPLETED"]


def test_status_from_wrong_node_or_unknown_task_is_ignored() -> None:
    h = Harness()
    aid = running(h)
    assert h.status("t", T0 + 3 * S, "COMPLETED", aid=aid, vin="INTRUDER") == []
    assert (
        h.s.on_status({"task_id": "nope", "assignment_id": "x", "vin": "V1", "ts": T0, "status": "STARTED"})
        == []
    )
    with pytest.raises(InvalidRecord):
        h.s.on_status({"task_id": "t", "assignment_id": aid, "vin": "V1", "ts": T0, "status": "EXPLODED"})


def test_status_for_preempted_assignment_is_stale() -> None:
    h = Harness()
    aid = running(h)
    h.tel("V1", T0 + 10 * S, gear="D")
    assert h.status("t", T0 + 11 * S, "COMPLETED", aid=aid, vin="V1") == []
    assert h.s.tasks["t"].state == "QUEUED"


def test_future_telemetry_is_rejected() -> None:
    h = Harness()
    h.tel("V1", T0)
    with pytest.raises(InvalidRecord):
        h.tel("V2", T0 + 3600 * S)
