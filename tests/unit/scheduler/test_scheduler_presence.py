"""Owner presence (a node reporting its owner back or refusing work) and liveness from data (sleep)."""

from __future__ import annotations

import pytest
from test_scheduler_support import MIN, T0, H, Harness, S, cfg, commands, node_records

# The record a car sends as it falls asleep (simulator/car.py): every reading not reported.
SLEEP = {
    "gear": "UNKNOWN",
    "charge_state": "UNKNOWN",
    "soc_pct": None,
    "charge_limit_pct": None,
    "minutes_to_full": None,
    "scheduled_departure": None,
    "at_home": None,
    "compute_temp_c": None,
}
OWNER_BACK = "abandoned: owner_returned"


def lifecycle(outs, task_id):
    return [
        (o.value["state"], o.value["reason"])
        for o in outs
        if o.topic == "tasks.lifecycle.v1" and o.key == task_id
    ]


def started_on_v1(h: Harness, task_id: str = "t", at: int = T0) -> None:
    h.tel("V1", at)
    h.req(task_id, at + S)
    assert h.holder(task_id) == "V1"
    h.status(task_id, at + 2 * S, "STARTED")


def test_owner_returned_is_not_a_failure_and_the_task_never_goes_back_to_that_node() -> None:
    h = Harness()
    started_on_v1(h)
    h.req("newer", T0 + 3 * S)  # same priority, requested later: waits
    reliability = h.s.nodes["V1"].reliability
    outs = h.status("t", T0 + 10 * S, "FAILED", error=OWNER_BACK)
    assert lifecycle(outs, "t") == [("PREEMPTED", "OWNER_RETURNED"), ("REQUEUED", "OWNER_RETURNED")]
    assert commands(outs) == []  # V1 (telemetry still parked and plugged) is not offered it again
    node, task = h.s.nodes["V1"], h.s.tasks["t"]
    assert task.failures == 0 and task.excluded == ("V1",)
    assert node.failed == 0 and node.failure_streak == 0 and node.reliability == reliability
    assert node.reason == "OWNER_PRESENT" and node_records(outs, "V1")[-1]["reason"] == "OWNER_PRESENT"
    assert h.s.queue("us-west") == ["t", "newer"]  # ahead of newer work of its priority
    assert commands(h.tel("V1", T0 + 40 * S)) == []  # still parked and plugged: the owner is there
    outs = h.tel("V2", T0 + 50 * S)
    assert commands(outs) == [("ASSIGN", "t", "V2")]


def test_a_refusal_as_node_unavailable_is_not_charged_and_never_gives_the_task_up() -> None:
    """Three cars in a row refuse (their telemetry was behind): the task still waits, no node throttled."""
    h = Harness(cfg(throttle_after_failures=1))
    for k, vin in enumerate(("V1", "V2", "V3")):
        h.tel(vin, T0 + k * S)
    h.req("t", T0 + 5 * S)
    for k in range(3):
        vin = h.holder("t")
        assert vin is not None
        outs = h.status("t", T0 + (6 + k) * S, "FAILED", error="node_unavailable: vehicle not parked")
        assert ("REQUEUED", "NODE_UNAVAILABLE") in lifecycle(outs, "t")
        assert h.s.nodes[vin].reason == "OWNER_PRESENT" and h.s.nodes[vin].failure_streak == 0
    task = h.s.tasks["t"]
    assert task.state == "QUEUED" and task.failures == 0 and sorted(task.excluded) == ["V1", "V2", "V3"]


def test_owner_returns_never_throttle_a_healthy_node() -> None:
    h = Harness()
    at = T0
    for i in range(4):  # more owner returns than throttle_after_failures
        h.tick(at)
        h.tel("V1", at)
        h.req(f"t{i}", at + S)
        assert h.holder(f"t{i}") == "V1"
        h.status(f"t{i}", at + 2 * S, "STARTED")
        h.status(f"t{i}", at + 60 * S, "FAILED", error=OWNER_BACK)
        h.tel("V1", at + 2 * MIN, gear="D", charge_state="DISCONNECTED")  # drives off
        at += 3 * H
    node = h.s.nodes["V1"]
    assert node.failure_streak == 0 and node.throttled_until < 0 and node.failed == 0


def test_owner_presence_ends_with_a_new_session() -> None:
    h = Harness()
    started_on_v1(h)
    h.status("t", T0 + 10 * S, "FAILED", error=OWNER_BACK)
    h.tel("V1", T0 + MIN)
    assert h.s.nodes["V1"].reason == "OWNER_PRESENT"
    h.tel("V1", T0 + 2 * MIN, gear="D", charge_state="DISCONNECTED")
    assert h.s.nodes["V1"].reason == "NOT_PARKED"
    h.tick(T0 + 10 * MIN)
    h.tel("V1", T0 + 10 * MIN)  # parked and plugged again: a session that began after the report
    node = h.s.nodes["V1"]
    assert node.eligible and node.owner_since is None
    assert h.holder("t") is None  # but never this task again


def test_owner_presence_ends_after_owner_away_s_without_a_drive() -> None:
    h = Harness()
    started_on_v1(h)
    h.status("t", T0 + 10 * S, "FAILED", error=OWNER_BACK)
    for k in range(1, 30):  # parked and plugged all along
        h.tel("V1", T0 + k * MIN)
    assert h.s.nodes["V1"].reason == "OWNER_PRESENT"
    h.tel("V1", T0 + 30 * MIN + 10 * S)  # fresh telemetry after owner_away_s: the owner left on foot
    assert h.s.nodes["V1"].eligible


def test_owner_back_revokes_the_other_task_the_node_runs() -> None:
    h = Harness(cfg(default_capacity=2))
    h.tel("V1", T0)
    h.req("a", T0 + S)
    h.req("b", T0 + 2 * S)
    assert h.holder("a") == h.holder("b") == "V1"
    outs = h.status("a", T0 + 10 * S, "FAILED", error=OWNER_BACK)
    assert ("REVOKE", "b", "V1") in commands(outs)
    assert ("PREEMPTED", "OWNER_PRESENT") in lifecycle(outs, "b")
    assert h.s.tasks["b"].failures == 0 and h.s.nodes["V1"].running == []


def test_a_late_owner_report_for_a_revoked_assignment_still_marks_the_node() -> None:
    h = Harness()
    h.tel("V1", T0)
    h.req("t", T0 + S)
    aid = h.s.tasks["t"].assignment_id
    h.tel("V1", T0 + 50 * S)
    h.tick(T0 + 62 * S)  # claim timeout: revoked, requeued, V1 gets it again at once
    assert h.s.tasks["t"].assignment_id != aid
    outs = h.status("t", T0 + 30 * S, "FAILED", aid=aid, vin="V1", error="node_unavailable: node busy")
    assert h.s.nodes["V1"].reason == "OWNER_PRESENT" and "V1" in h.s.tasks["t"].excluded
    assert ("PREEMPTED", "OWNER_PRESENT") in lifecycle(outs, "t")  # the current assignment on V1 goes


def test_a_node_fault_still_counts() -> None:
    h = Harness()
    started_on_v1(h)
    h.status("t", T0 + 10 * S, "FAILED", error="emulator crashed")
    assert h.s.tasks["t"].failures == 1 and h.s.nodes["V1"].failure_streak == 1
    assert h.s.nodes["V1"].owner_since is None


@pytest.mark.parametrize("kept_charge_state", [None, "CHARGING"])
def test_a_car_that_falls_asleep_is_not_offered_work(kept_charge_state: str | None) -> None:
    h = Harness()
    h.tel("V1", T0)
    sleep = dict(SLEEP, charge_state=kept_charge_state or "UNKNOWN")  # some cars keep the charge state
    h.tel("V1", T0 + 10 * S, **sleep)
    assert h.s.nodes["V1"].reason == "ASLEEP"
    assert commands(h.req("t", T0 + 20 * S)) == []
    outs = h.tel("V1", T0 + 5 * MIN)  # wakes up and reports again
    assert commands(outs) == [("ASSIGN", "t", "V1")]


def test_records_with_no_live_reading_do_not_renew_the_lease() -> None:
    h = Harness()
    h.tel("V1", T0)
    for k in range(1, 6):
        h.tel("V1", T0 + k * 30 * S, **SLEEP)
    assert node_records(h.log, "V1")[-1]["lease_expires_at"] == T0 + 120 * S
    assert h.s.nodes["V1"].reason == "LEASE_EXPIRED"
