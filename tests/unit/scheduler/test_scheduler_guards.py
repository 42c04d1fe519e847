"""Hostile input to the pure scheduler: records stamped far past their arrival, unusable doubles, counts
taken from a record, and maps that grow with input (issue 11)."""

from __future__ import annotations

import math

import pytest
from test_scheduler_support import MIN, T0, Harness, S, cfg, node_records, req, states, status, tel

from processors.scheduler import InvalidRecord, Scheduler, assignment_id_for
from processors.scheduler import matching as matching_module
from processors.scheduler.eligibility import NodeState, apply_telemetry, evaluate
from processors.scheduler.tasks import MAX_ATTEMPT
from streams.deadletter import FUTURE_TIMESTAMP

YEAR_3000 = 32_503_680_000_000  # 3000-01-01 in epoch ms


def _eligible_with_a_queue() -> Harness:
    h = Harness()
    h.s.on_telemetry(tel("V1", T0), arrival_ms=T0)
    assert h.s.nodes["V1"].eligible
    return h


# -- event time ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["request", "status"])
def test_a_year_3000_request_or_status_is_refused_and_moves_no_clock(what: str) -> None:
    h = _eligible_with_a_queue()
    h.s.on_request(req("t1", T0 + S), arrival_ms=T0 + S)
    aid = h.s.tasks["t1"].assignment_id
    assert aid is not None
    clock = h.s.clock
    with pytest.raises(InvalidRecord) as err:
        if what == "request":
            h.s.on_request(req("t-future", YEAR_3000), arrival_ms=T0 + 2 * S)
        else:
            h.s.on_status(status("t1", aid, "V1", YEAR_3000, "STARTED"), arrival_ms=T0 + 2 * S)
    assert err.value.kind == FUTURE_TIMESTAMP and "arrival" in str(err.value)
    assert h.s.clock == clock and h.s.record_clock == clock
    assert "t-future" not in h.s.tasks and h.s.tasks["t1"].state == "ASSIGNED"
    # The fleet is still served: the node keeps its lease, the next task is assigned on the next car.
    h.s.on_telemetry(tel("V2", T0 + 3 * S), arrival_ms=T0 + 3 * S)
    h.s.on_request(req("t2", T0 + 4 * S), arrival_ms=T0 + 4 * S)
    h.s.check_invariants()
    assert h.s.nodes["V1"].reason == "AT_CAPACITY" and h.s.tasks["t2"].vin == "V2"


def test_a_record_ahead_of_its_arrival_within_the_skew_is_accepted() -> None:
    s = Scheduler(cfg(max_future_skew_s=300))
    s.on_request(req("t1", T0 + 299 * S), arrival_ms=T0)
    assert s.tasks["t1"].state == "QUEUED"
    s.on_telemetry(tel("V1", T0 - 3 * 3600 * S), arrival_ms=T0)  # a simulated past: far behind arrival
    assert s.nodes["V1"].ts == T0 - 3 * 3600 * S


def test_a_timestamp_that_is_not_one_is_invalid_not_a_crash() -> None:
    s = Scheduler()
    for bad in (float("nan"), float("inf"), "soon", True):
        with pytest.raises(InvalidRecord):
            s.on_request(req("t1", T0) | {"ts": bad}, arrival_ms=T0)


# -- unusable doubles --------------------------------------------------------------------------------------
def _reason(*records: dict[str, object], now: int) -> str | None:
    node = NodeState(vin="V1")
    for rec in records:
        apply_telemetry(node, rec, cfg())
    return evaluate(node, now, cfg())[1]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 150.0, -1.0])
def test_an_unusable_soc_makes_the_car_ineligible(bad: float) -> None:
    assert _reason(tel("V1", T0, soc_pct=bad), now=T0) == "SOC_INVALID"
    # Also when an eligible car's last good SoC is still fresh: "not reported" never reads as "fine".
    assert _reason(tel("V1", T0), tel("V1", T0 + S, soc_pct=bad), now=T0 + S) == "SOC_INVALID"
    # A usable value again clears it.
    assert _reason(tel("V1", T0, soc_pct=bad), tel("V1", T0 + S), now=T0 + S) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e300, -1e300])
def test_an_unusable_computer_temperature_makes_the_car_ineligible(bad: float) -> None:
    assert _reason(tel("V1", T0, compute_temp_c=bad), now=T0) == "TEMP_INVALID"
    assert _reason(tel("V1", T0), tel("V1", T0 + S, compute_temp_c=bad), now=T0 + S) == "TEMP_INVALID"


def test_unusable_prediction_hints_are_not_reported() -> None:
    node = NodeState(vin="V1")
    apply_telemetry(node, tel("V1", T0, minutes_to_full=30.0, charge_limit_pct=80.0), cfg())
    apply_telemetry(node, tel("V1", T0 + S, minutes_to_full=math.nan, charge_limit_pct=math.inf), cfg())
    assert (node.minutes_to_full, node.charge_limit_pct) == (30.0, 80.0)
    assert evaluate(node, T0 + S, cfg()) == (True, None)


def test_a_nan_soc_is_visible_on_fleet_nodes_and_gets_no_work() -> None:
    h = Harness()
    outs = h.s.on_telemetry(tel("V1", T0, soc_pct=math.nan), arrival_ms=T0)
    assert node_records(outs, "V1")[-1]["reason"] == "SOC_INVALID"
    assert node_records(outs, "V1")[-1]["soc_pct"] is None  # never published as a value
    h.s.on_request(req("t1", T0 + S, min_soc_pct=10.0), arrival_ms=T0 + S)
    assert h.s.tasks["t1"].state == "QUEUED"


# -- bounded work ------------------------------------------------------------------------------------------
def test_a_late_completion_looks_back_a_bounded_number_of_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(cfg(claim_timeout_s=10))
    h.tel("V1", T0)
    h.req("t1", T0)
    task = h.s.tasks["t1"]
    aid = task.assignment_id
    assert aid is not None
    h.tel("V1", T0 + 20 * S)
    h.tick(T0 + 20 * S)  # claim timeout: revoked, requeued, assigned again
    task.attempt = 2**31 - 1  # as if restored from a state that says so
    calls: list[int] = []
    real = matching_module.assignment_id_for

    def counting(task_id: str, attempt: int) -> str:
        calls.append(attempt)
        return real(task_id, attempt)

    monkeypatch.setattr(matching_module, "assignment_id_for", counting)
    h.s.on_status(status("t1", aid, "V1", T0 + 5 * S, "COMPLETED"))
    assert 0 < len(calls) <= 16


def test_a_task_ends_after_max_attempt_assignments() -> None:
    h = Harness(cfg(claim_timeout_s=10))
    h.tel("V1", T0)
    h.req("t1", T0)
    h.s.tasks["t1"].attempt = MAX_ATTEMPT
    h.tel("V1", T0 + 20 * S)
    outs = h.tick(T0 + 20 * S)
    assert states(outs, "t1")[-1] == "FAILED" and h.s.tasks["t1"].state == "FAILED"


# -- bounded memory ----------------------------------------------------------------------------------------
def test_a_silent_node_is_forgotten_after_node_ttl_and_its_pool_goes() -> None:
    h = Harness(cfg(node_ttl_s=3600))
    h.tel("V1", T0, region="eu-x")
    h.s.drain_dirty()
    assert "eu-x" in h.s.pools()
    h.tick(T0 + 3601 * S)
    assert "V1" not in h.s.nodes and "eu-x" not in h.s.pools()
    nodes, _ = h.s.drain_dirty()
    assert nodes == {"V1": None}  # deleted from the table too
    h.tel("V1", T0 + 3602 * S, region="eu-x")  # comes back: learnt again
    assert h.s.nodes["V1"].pool == "eu-x"


def test_a_node_holding_work_is_not_forgotten() -> None:
    h = Harness(cfg(node_ttl_s=3600, claim_timeout_s=10_000, max_task_duration_s=10**6))
    h.tel("V1", T0)
    h.req("t1", T0, est_duration_s=10_000)
    h.status("t1", T0 + S, "STARTED")
    h.tick(T0 + 3601 * S)
    assert "V1" in h.s.nodes


def test_a_full_queue_rejects_new_requests_with_a_reason() -> None:
    h = Harness(cfg(max_queued_tasks=2))
    outs = [o for i in range(3) for o in h.req(f"t{i}", T0 + i)]
    assert [h.s.tasks[f"t{i}"].state for i in range(3)] == ["QUEUED", "QUEUED", "REJECTED"]
    rejected = [o.value for o in outs if o.value.get("state") == "REJECTED"]
    assert rejected[0]["reason"] == "QUEUE_FULL"


def test_timers_of_finished_tasks_do_not_pile_up() -> None:
    """Every task carries a far deadline; once finished and forgotten its deadline entry is dead."""
    h = Harness(cfg(tombstone_ttl_s=60))
    s = h.s
    far = T0 + 365 * 24 * 3600 * S
    s.on_telemetry(tel("V1", T0))
    for i in range(5000):
        now = T0 + i * 100
        s.on_request(req(f"t{i}", now, deadline=far))
        task = s.tasks[f"t{i}"]
        assert task.assignment_id is not None
        s.on_status(status(f"t{i}", task.assignment_id, "V1", now + 10, "COMPLETED"))
        if i % 50 == 0:
            s.on_telemetry(tel("V1", now + 20))
    s.on_tick(T0 + 5000 * 100 + 120 * S)
    s.check_invariants()
    assert len(s.tasks) == 0
    assert s.sizes()["timers"] <= 4096


def test_a_long_silence_is_one_compaction_not_a_leak() -> None:
    s = Scheduler()
    s.on_telemetry(tel("V1", T0))
    s.on_request(req("t1", T0, deadline=T0 + 10 * MIN, est_duration_s=60))
    before = {e for e in s._timers if s._live(*e)}
    s._compact_timers()
    assert set(s._timers) == before  # compaction keeps exactly the live timers
    s.on_tick(T0 + 11 * MIN)
    assert s.tasks["t1"].state == "EXPIRED"
    assert assignment_id_for("t1", 1) not in {t.assignment_id for t in s.tasks.values()}
