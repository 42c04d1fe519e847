"""Matching: requirements (hw, region, soc, capacity), priority with aging, duplicates, rejects."""

from __future__ import annotations

from test_scheduler_support import MIN, T0, Harness, S, cfg, commands, req, states, tel

from processors.scheduler import Scheduler, assignment_id_for, effective_priority, pool_for_request


def test_assigns_to_an_eligible_node_with_deterministic_id() -> None:
    h = Harness()
    h.tel("V1", T0)
    outs = h.req("t1", T0 + S)
    assert states(outs) == ["REQUESTED", "QUEUED", "ASSIGNED"]
    assert commands(outs) == [("ASSIGN", "t1", "V1")]
    assign = next(o.value for o in outs if o.topic == "tasks.assignments.v1")
    assert assign["assignment_id"] == assignment_id_for("t1", 1) and assign["attempt"] == 1
    assert assign["pool"] == "us-west" and assign["lease_expires_at"] == T0 + S + 60 * S


def test_hw_requirement() -> None:
    h = Harness()
    h.tel("V4", T0, hw="HW4")
    h.req("t5", T0 + S, min_hw="HW5")
    assert h.holder("t5") is None
    h.tel("V5", T0 + 2 * S, hw="HW5")
    assert h.holder("t5") == "V5"
    h.req("t3", T0 + 3 * S, min_hw="HW3")  # HW3 tasks run on anything eligible (HW4+)
    assert h.holder("t3") == "V4"


def test_region_requirement() -> None:
    h = Harness()
    h.tel("W", T0, region="us-west")
    h.req("te", T0 + S, region="us-east")
    assert h.holder("te") is None and h.s.queue("us-east") == ["te"]
    h.tel("E", T0 + 2 * S, region="us-east")
    assert h.holder("te") == "E"


def test_soc_requirement() -> None:
    h = Harness()
    h.tel("LOW", T0, soc_pct=50.0)
    h.req("t", T0 + S, min_soc_pct=60.0)
    assert h.holder("t") is None
    h.tel("HIGH", T0 + 2 * S, soc_pct=65.0)
    assert h.holder("t") == "HIGH"


def test_capacity_one_task_per_node() -> None:
    h = Harness()
    h.tel("V1", T0)
    h.req("a", T0 + S)
    h.req("b", T0 + 2 * S)
    assert h.holder("a") == "V1" and h.holder("b") is None
    assert h.s.nodes["V1"].reason == "AT_CAPACITY"
    h.status("a", T0 + 3 * S, "STARTED")
    h.status("a", T0 + 4 * S, "COMPLETED")
    assert h.holder("b") == "V1"  # freed capacity goes to the waiting task


def test_capacity_two() -> None:
    h = Harness(cfg(default_capacity=2))
    h.tel("V1", T0)
    for i in range(3):
        h.req(f"t{i}", T0 + (i + 1) * S)
    assert [h.holder(f"t{i}") for i in range(3)] == ["V1", "V1", None]


def test_priority_order() -> None:
    h = Harness()
    for i, prio in enumerate([1, 9, 5]):
        h.req(f"p{prio}", T0 + i * S, priority=prio)
    assert h.s.queue("us-west") == ["p9", "p5", "p1"]
    h.tel("V1", T0 + 10 * S)
    assert h.holder("p9") == "V1"


def test_aging_lets_low_priority_overtake() -> None:
    config = cfg(aging_per_min=0.1)  # 10 minutes per priority point
    h = Harness(config)
    h.req("old_low", T0, priority=0)
    h.req("new_high", T0 + 89 * MIN, priority=9)  # 89 min later: old_low has aged 8.9 points
    assert h.s.queue("us-west") == ["new_high", "old_low"]
    h.req("newer_high", T0 + 91 * MIN, priority=9)  # 91 min later: old_low at 9.1 > 9
    assert h.s.queue("us-west") == ["new_high", "old_low", "newer_high"]
    t = h.s.tasks
    now = T0 + 91 * MIN
    assert effective_priority(t["old_low"], now, config) > effective_priority(t["newer_high"], now, config)
    h.tel("V1", now + S)
    assert h.holder("new_high") == "V1"


def test_strict_priority_without_aging() -> None:
    h = Harness(cfg(aging_per_min=0.0))
    h.req("low", T0, priority=0)
    h.req("high", T0 + 1000 * MIN, priority=1)
    assert h.s.queue("us-west") == ["high", "low"]


def test_unsatisfiable_head_does_not_block() -> None:
    h = Harness()
    h.req("needs_hw5", T0, priority=9, min_hw="HW5")
    h.req("any", T0 + S, priority=1)
    h.tel("V4", T0 + 2 * S)
    assert h.holder("any") == "V4" and h.holder("needs_hw5") is None


def test_duplicate_request_is_a_noop() -> None:
    h = Harness()
    h.tel("V1", T0)
    h.req("t", T0 + S)
    assert h.req("t", T0 + 2 * S, priority=9) == []
    assert h.s.counters["request_duplicate"] == 1
    h.status("t", T0 + 3 * S, "STARTED")
    h.status("t", T0 + 4 * S, "COMPLETED")
    assert h.req("t", T0 + 5 * S) == []  # even after it finished (tombstone)


def test_impossible_requests_are_rejected() -> None:
    h = Harness(cfg(pools=("us-west", "us-east")))
    cases = {
        "bad_hw": {"min_hw": "HW9"},
        "bad_prio": {"priority": 12},
        "bad_dur": {"est_duration_s": 0},
        "too_long": {"est_duration_s": 10 * 86400},
        "bad_soc": {"min_soc_pct": 120.0},
        "bad_region": {"region": "mars-1"},
    }
    for tid, kw in cases.items():
        outs = h.req(tid, T0, **kw)
        assert states(outs) == ["REQUESTED", "REJECTED"], tid
        assert outs[-1].value["reason"].startswith(("INVALID", "DURATION", "UNKNOWN")), tid
    assert h.req("bad_hw", T0 + S) == []  # the rejection is remembered


def test_deadline_already_passed_is_expired() -> None:
    h = Harness()
    h.tel("V1", T0)
    outs = h.req("late", T0, deadline=T0 - S)
    assert states(outs) == ["REQUESTED", "EXPIRED"]
    assert outs[-1].value["reason"] == "DEADLINE_PASSED"


def test_any_region_task_goes_to_the_pool_with_idle_nodes() -> None:
    h = Harness()
    h.tel("W", T0, region="us-west")
    h.tel("E", T0, region="us-east")
    h.tel("E2", T0, region="us-east")
    h.req("any", T0 + S, region=None)
    assert h.holder("any") in ("E", "E2")


def test_any_region_task_spills_to_the_next_pool() -> None:
    h = Harness(cfg(pools=("us-east", "us-west"), spill_after_s=60))
    h.tel("W", T0, region="us-west")
    h.tel("W", T0 + 30 * S, region="us-west")
    h.s.on_request(req("any", T0 + 31 * S, region=None), pool="us-east")  # routed by the wiring
    assert h.s.queue("us-east") == ["any"]
    h.tick(T0 + 90 * S)
    assert h.holder("any") is None
    h.tel("W", T0 + 60 * S, region="us-west")
    h.tick(T0 + 91 * S + 1)
    assert h.holder("any") == "W"


def test_any_region_task_with_one_pool_waits_without_spinning() -> None:
    # Regression: past the 32x backoff cap the spill timer re-fired at the same instant forever.
    h = Harness(cfg(pools=("us-east",), spill_after_s=60))
    h.s.on_request(req("lonely", T0, region=None), pool="us-east")
    for hour in range(1, 6):
        h.tick(T0 + hour * 3600 * S)  # returns: each tick handles a bounded number of timers
    assert h.s.queue("us-east") == ["lonely"]
    h.tel("E", T0 + 5 * 3600 * S + 1, region="us-east")
    h.tick(T0 + 5 * 3600 * S + 2)
    assert h.holder("lonely") == "E"


def test_spill_to_a_pool_of_another_instance_is_a_handoff() -> None:
    config = cfg(pools=("us-east", "us-west"), local_pools=frozenset({"us-east"}), spill_after_s=60)
    a, b = Scheduler(config), Scheduler(cfg(pools=("us-east", "us-west"), local_pools=frozenset({"us-west"})))
    assert pool_for_request(req("x", T0, region=None), config) in config.pools
    a.on_request(req("any", T0, region=None), pool="us-east")
    b.on_telemetry(tel("W", T0))
    outs = a.on_tick(T0 + 61 * S)
    hand = [o for o in outs if o.topic == "scheduler.handoff"]
    assert len(hand) == 1 and hand[0].key == "us-west"
    assert a.tasks["any"].state == "MOVED"
    outs = b.on_handoff(hand[0].value, now=T0 + 61 * S)
    assert b.tasks["any"].vin == "W" and b.tasks["any"].pool == "us-west"
    assert b.on_handoff(hand[0].value) == []  # duplicate hand-off
    a.check_invariants()
    b.check_invariants()


def test_random_ranking_is_seeded_and_deterministic() -> None:
    picks = []
    for _ in range(2):
        h = Harness(cfg(ranking="random", seed=7))
        for i in range(20):
            h.tel(f"V{i:02d}", T0)
        h.req("t", T0 + S)
        picks.append(h.holder("t"))
    assert picks[0] == picks[1] is not None


def test_best_fit_keeps_newer_hardware_for_tasks_that_need_it() -> None:
    """Among equally good nodes the least over-qualified one wins: an HW4 task leaves the HW5 node free."""
    for first, second in (("V4", "V5"), ("V5", "V4")):  # whatever the order nodes appear in
        h = Harness(cfg())
        h.tel(first, T0, hw=first.replace("V", "HW"))
        h.tel(second, T0 + S, hw=second.replace("V", "HW"))
        h.req("t4", T0 + 2 * S, min_hw="HW4")
        assert h.holder("t4") == "V4"
        h.req("t5", T0 + 3 * S, min_hw="HW5")
        assert h.holder("t5") == "V5"


def test_best_fit_does_not_override_a_clearly_better_stay_probability() -> None:
    h = Harness(cfg())
    h.tel("V4", T0, hw="HW4", scheduled_departure=T0 + 40 * MIN)  # gone (guard) before the task ends
    h.tel("V5", T0 + S, hw="HW5")
    h.req("t4", T0 + 2 * S, min_hw="HW4", est_duration_s=3600)
    assert h.holder("t4") == "V5"
