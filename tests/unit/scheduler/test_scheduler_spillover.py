"""Datacenter sites beside the cars: placement, spillover when a site islands, shedding at its reserve."""

from __future__ import annotations

from typing import Any

import pytest
from test_scheduler_support import MIN, T0, H, Harness, S, capacity, cfg, commands, power_state

from processors.scheduler import Scheduler
from processors.scheduler.exceptions import InvalidRecord
from processors.scheduler.placement import (
    CAR,
    SITE,
    battery_minutes,
    choose,
    pick_site,
    shed_plan,
    takes_task,
)
from processors.scheduler.sites import SiteState
from processors.scheduler.tasks import Task

LONG = 2 * 3600  # est_duration_s of work the policy sends to a site first (placement_long_task_s = 1 h)
SITE1 = "site:dc1"


def task(task_id: str = "t", placement: str = "ANY", priority: int = 5, est: int = 600, **kw: Any) -> Task:
    return Task(task_id, "us-west", T0, priority, est, placement=placement, **kw)


def site(state: str = "GRID", free: int = 5, **kw: Any) -> SiteState:
    s = SiteState("dc1", region="us-west", slots_total=10, reported_free=free, capacity_ts=T0)
    s.power_state = state
    for name, value in kw.items():
        setattr(s, name, value)
    return s


def lifecycle(outs: list[Any], task_id: str) -> list[tuple[str, str | None]]:
    return [
        (o.value["state"], o.value["reason"])
        for o in outs
        if o.topic == "tasks.lifecycle.v1" and o.key == task_id
    ]


def episodes(outs: list[Any]) -> list[dict[str, Any]]:
    return [o.value for o in outs if o.topic == "sites.spillover.v1"]


def alerts(outs: list[Any]) -> list[dict[str, Any]]:
    return [o.value for o in outs if o.topic == "alerts.v1"]


# ---------------------------------------------------------------------------------- the pure policy
@pytest.mark.parametrize(
    ("placement", "priority", "est", "car_stay", "has_site", "expected"),
    [
        ("FLEET", 5, LONG, 0.9, True, CAR),  # pinned to cars, even for long work
        ("FLEET", 5, 600, None, True, None),  # no car: waits, never a site
        ("DATACENTER", 5, 600, 0.99, True, SITE),
        ("DATACENTER", 5, 600, 0.99, False, None),
        ("ANY", 9, 600, 0.99, True, SITE),  # urgent: the site, where no owner can take it back
        ("ANY", 5, LONG, 0.99, True, SITE),  # long: the site
        ("ANY", 5, 600, 0.95, True, CAR),  # short, and the car will very likely outlast it: cheaper
        ("ANY", 5, 600, 0.5, True, SITE),  # short, but the car may well leave first
        ("ANY", 5, LONG, 0.5, False, CAR),  # no site slot: the best car
        ("ANY", 9, 600, None, True, SITE),
        ("ANY", 5, 600, None, False, None),
    ],
)
def test_choose_by_placement_priority_length_and_how_likely_the_car_stays(
    placement: str, priority: int, est: int, car_stay: float | None, has_site: bool, expected: str | None
) -> None:
    t = task(placement=placement, priority=priority, est=est)
    assert choose(t, car_stay, site() if has_site else None, cfg()) == expected


def test_a_car_loses_to_a_site_that_is_cheaper_per_completed_run() -> None:
    t = task(est=600)
    assert choose(t, 0.9, site(cost_per_slot_hour=0.08), cfg(fleet_cost_per_slot_hour=0.10)) == SITE
    assert choose(t, 0.9, site(cost_per_slot_hour=0.12), cfg(fleet_cost_per_slot_hour=0.10)) == CAR


@pytest.mark.parametrize(
    ("state", "placement", "spillover", "takes"),
    [
        ("GRID", "ANY", True, True),
        ("ISLANDED_BATTERY", "ANY", True, False),  # a site off the grid takes no new flexible work
        ("ISLANDED_GENERATOR", "ANY", True, False),
        ("ISLANDED_BATTERY", "DATACENTER", True, True),  # pinned work still may go there...
        ("RESERVE", "DATACENTER", True, False),  # ...until the site is at its reserve or sheds
        ("SHEDDING", "DATACENTER", True, False),
        ("RESERVE", "ANY", False, True),  # the "no spillover" baseline ignores power
        ("GRID", "FLEET", True, False),
    ],
)
def test_which_sites_take_which_work(state: str, placement: str, spillover: bool, takes: bool) -> None:
    assert takes_task(site(state), task(placement=placement), T0, cfg(spillover=spillover)) is takes


def test_a_site_full_or_silent_takes_nothing() -> None:
    c = cfg(site_capacity_ttl_s=300)
    assert not takes_task(site(free=0), task(), T0, c)
    assert takes_task(site(), task(), T0 + 300 * S, c)
    assert not takes_task(site(), task(), T0 + 301 * S, c)  # its controller has not reported for too long


def test_free_slots_count_work_placed_and_ended_since_the_report() -> None:
    s = site(free=2)
    s.reported_running = 1  # one of ours ran when the report was taken in
    s.running = ["a", "b"]  # one more placed since
    assert s.free_slots() == 1
    s.running = []  # both ended since
    assert s.free_slots() == 3
    s.slots_total = 2
    assert s.free_slots() == 2  # never more than the site has


def test_pick_site_takes_the_cheapest_then_the_emptiest() -> None:
    cheap, dear, roomy = site(cost_per_slot_hour=0.2), site(cost_per_slot_hour=0.5), site(free=9)
    cheap.site_id, dear.site_id, roomy.site_id = "cheap", "dear", "roomy"
    roomy.cost_per_slot_hour = 0.2
    assert pick_site([dear, cheap, roomy], task(), T0, cfg()) is roomy
    roomy.power_state = "ISLANDED_BATTERY"
    assert pick_site([dear, cheap, roomy], task(), T0, cfg()) is cheap
    assert pick_site([dear, cheap, roomy], task(), T0, cfg(), power=False) is roomy


def test_shed_plan_moves_low_priority_flexible_sessions_until_the_rest_fit_the_budget() -> None:
    c = cfg(site_session_kw=100.0, shed_max_priority=5)
    s = site("RESERVE", power_budget_mw=0.2)  # 2 sessions of 100 kW
    running = [
        task("p1-old", priority=1, assigned_ts=T0),
        task("p1-new", priority=1, assigned_ts=T0 + MIN),
        task("p3", priority=3, assigned_ts=T0),
        task("p7", priority=7, assigned_ts=T0),  # too important to move
        task("dc", placement="DATACENTER", priority=0, assigned_ts=T0),  # cannot run on a car
    ]
    plan = [t.task_id for t in shed_plan(s, running, c)]
    assert plan == ["p1-new", "p1-old", "p3"]  # 5 - 2 = 3; lowest priority first, the newest first
    s.power_budget_mw = 0.5
    assert shed_plan(s, running, c) == []  # 5 sessions fit 500 kW
    s.power_budget_mw = None  # at its reserve with no budget reported: every movable session goes
    assert [t.task_id for t in shed_plan(s, running, c)] == ["p1-new", "p1-old", "p3"]
    s.power_state = "ISLANDED_BATTERY"
    assert shed_plan(s, running, c) == []  # islanded but not yet at the reserve: nothing is shed
    s.power_state = "SHEDDING"
    assert len(shed_plan(s, running, c)) == 3
    assert shed_plan(s, running, cfg(spillover=False)) == []


def test_battery_minutes_scale_with_one_over_the_load() -> None:
    assert battery_minutes(20.0, 1.0, 0.0) == 20.0
    assert battery_minutes(20.0, 1.0, 0.5) == pytest.approx(40.0)
    assert battery_minutes(None, 1.0, 0.5) is None and battery_minutes(20.0, None, 0.5) is None


# ---------------------------------------------------------------------------------- the matcher
def test_long_work_runs_at_the_site_and_completes_there() -> None:
    h = Harness()
    h.cap("dc1", T0)
    h.tel("V1", T0)
    outs = h.req("long", T0 + S, est_duration_s=LONG)
    assert commands(outs) == [("ASSIGN", "long", SITE1)]
    assigned = [o.value for o in outs if o.topic == "tasks.lifecycle.v1" and o.value["state"] == "ASSIGNED"]
    assert assigned[0]["site_id"] == "dc1" and assigned[0]["vin"] == SITE1
    assert h.s.sites["dc1"].free_slots() == 9
    outs = h.req("short", T0 + 2 * S)  # 30 minutes: the car, which will very likely still be there
    assert commands(outs) == [("ASSIGN", "short", "V1")]
    h.status("long", T0 + 3 * S, "STARTED")
    outs = h.status("long", T0 + H, "COMPLETED")
    assert lifecycle(outs, "long") == [("COMPLETED", None)]
    assert h.s.sites["dc1"].free_slots() == 10


def test_a_site_that_refuses_is_not_charged_and_not_offered_the_task_again() -> None:
    h = Harness()
    h.cap("dc1", T0, slots_total=1, slots_free=1)
    h.req("long", T0 + S, est_duration_s=LONG)
    outs = h.status("long", T0 + 2 * S, "FAILED", error="node_unavailable: all slots busy")
    assert lifecycle(outs, "long") == [("PREEMPTED", "NODE_UNAVAILABLE"), ("REQUEUED", "NODE_UNAVAILABLE")]
    assert commands(outs) == []  # the slot is free on paper, but that site said no to this task
    assert h.s.tasks["long"].failures == 0
    outs = h.tel("V1", T0 + 3 * S)
    assert commands(outs) == [("ASSIGN", "long", "V1")]


def test_islanding_opens_an_episode_and_new_flexible_work_spills_to_cars_in_the_same_round() -> None:
    h = Harness()
    h.cap("dc1", T0)
    h.tel("V1", T0)
    h.tel("V2", T0)
    outs = h.power("dc1", T0 + MIN, "ISLANDED_BATTERY", incident_id="inc-1")
    (opened,) = episodes(outs)
    assert opened["state"] == "OPEN" and opened["started_at"] == T0 + MIN and opened["incident_id"] == "inc-1"
    (alert,) = alerts(outs)
    assert alert["status"] == "FIRING" and alert["kind"] == "SPILLOVER" and alert["site_id"] == "dc1"
    outs = h.req("long", T0 + MIN + S, est_duration_s=LONG)  # would go to the site on the grid
    assert commands(outs) == [("ASSIGN", "long", "V1")] or commands(outs) == [("ASSIGN", "long", "V2")]
    assert ("ASSIGNED", "SPILLOVER_ISLANDED") in lifecycle(outs, "long")
    spilled = [o.value for o in outs if o.topic == "tasks.lifecycle.v1" and o.value["state"] == "ASSIGNED"]
    assert spilled[0]["site_id"] == "dc1" and spilled[0]["vin"] in ("V1", "V2")  # the site it moved off
    (update,) = episodes(outs)
    assert update["state"] == "UPDATE" and update["tasks_spilled"] == 1
    assert update["slot_hours_shifted"] == pytest.approx(2.0)
    outs = h.req("short", T0 + MIN + 2 * S)  # would have gone to a car anyway: not a spillover
    assert lifecycle(outs, "short")[-1] == ("ASSIGNED", None) and episodes(outs) == []
    outs = h.req("pinned", T0 + MIN + 3 * S, placement="DATACENTER")
    assert commands(outs) == [("ASSIGN", "pinned", SITE1)]  # pinned work still runs at an islanded site


def started_at_site(h: Harness, task_id: str, at: int, **kw: Any) -> None:
    h.req(task_id, at, est_duration_s=LONG, **kw)
    assert h.holder(task_id) == SITE1, task_id
    h.status(task_id, at + S, "STARTED")


def test_at_the_reserve_low_priority_sessions_move_to_cars_until_the_site_is_within_its_budget() -> None:
    h = Harness(cfg(site_session_kw=100.0, shed_max_priority=5))
    h.cap("dc1", T0, power_budget_mw=2.0)
    for k, (tid, prio, placement) in enumerate(
        [("p1", 1, "ANY"), ("p3", 3, "ANY"), ("p5", 5, "ANY"), ("p7", 7, "ANY"), ("dc", 1, "DATACENTER")]
    ):
        started_at_site(h, tid, T0 + k * 10 * S, priority=prio, placement=placement)
    for vin in ("V1", "V2", "V3", "V4"):
        h.tel(vin, T0 + MIN)
    h.power("dc1", T0 + 2 * MIN, "ISLANDED_BATTERY", battery_runtime_min=20.0, load_mw=1.0)
    h.cap("dc1", T0 + 2 * MIN + S, power_budget_mw=0.2)  # the controller: 200 kW for emulators now
    outs = h.power("dc1", T0 + 3 * MIN, "RESERVE", since=T0 + 3 * MIN, battery_runtime_min=20.0, load_mw=1.0)
    revoked = sorted(t for cmd, t, vin in commands(outs) if cmd == "REVOKE" and vin == SITE1)
    assert revoked == ["p1", "p3", "p5"]  # 5 sessions, budget 2: the three least important flexible ones
    for tid in revoked:
        assert lifecycle(outs, tid)[:2] == [("PREEMPTED", "SHED_RESERVE"), ("REQUEUED", "SHED_RESERVE")]
        assert lifecycle(outs, tid)[2] == ("ASSIGNED", "SHED_RESERVE")  # on a car in the same round
        moved = [o.value for o in outs if o.topic == "tasks.lifecycle.v1" and o.key == tid]
        assert moved[2]["site_id"] == "dc1" and moved[2]["vin"].startswith("V")
        assert h.holder(tid) in {"V1", "V2", "V3", "V4"}
    assert sorted(h.s.sites["dc1"].running) == ["dc", "p7"]
    (update,) = episodes(outs)
    assert update["sessions_shed"] == 3 and update["worst_state"] == "RESERVE"
    assert update["started_at"] == T0 + 2 * MIN  # the episode began when the site islanded
    assert update["battery_minutes_saved"] == pytest.approx(20.0 / 0.7 - 20.0, abs=0.01)
    assert commands(h.power("dc1", T0 + 4 * MIN, "RESERVE", since=T0 + 3 * MIN)) == []  # within budget


def test_the_site_takes_work_again_only_once_it_is_back_on_the_grid() -> None:
    h = Harness()
    h.cap("dc1", T0)
    h.power("dc1", T0 + MIN, "ISLANDED_GENERATOR")
    # Utility power is back but not yet stable for the retransfer delay: still islanded.
    h.power("dc1", T0 + 10 * MIN, "ISLANDED_GENERATOR", since=T0 + MIN, grid_since=T0 + 10 * MIN)
    h.req("long", T0 + 11 * MIN, est_duration_s=LONG)
    assert h.holder("long") is None  # no car, and the site is not taking flexible work
    h.cap("dc1", T0 + 14 * MIN)  # its controller reports on (a site not heard from takes no work)
    outs = h.power("dc1", T0 + 15 * MIN, "GRID", since=T0 + 15 * MIN)
    (resolved,) = episodes(outs)
    assert resolved["state"] == "RESOLVED" and resolved["ended_at"] == T0 + 15 * MIN
    assert [a["status"] for a in alerts(outs)] == ["RESOLVED"]
    assert commands(outs) == [("ASSIGN", "long", SITE1)]


def test_duplicate_and_late_site_records_change_nothing() -> None:
    h = Harness()
    h.cap("dc1", T0)
    h.power("dc1", T0 + MIN, "ISLANDED_BATTERY")
    assert h.power("dc1", T0 + MIN, "ISLANDED_BATTERY") == []  # a replayed record
    assert h.power("dc1", T0 + 30 * S, "GRID") == []  # older than what the site said since
    assert h.cap("dc1", T0) == []
    assert h.s.sites["dc1"].power_state == "ISLANDED_BATTERY" and h.s.sites["dc1"].episode is not None


@pytest.mark.parametrize(
    "rec",
    [
        capacity("dc1", T0, slots_free=11),
        capacity("dc1", T0, slots_total=-1, slots_free=0),
        capacity("dc1", T0, region=None),
        capacity("dc1", T0, power_budget_mw=float("nan")),
        capacity("", T0),
    ],
)
def test_impossible_capacity_reports_are_refused(rec: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord):
        Scheduler().on_site_capacity(rec)


@pytest.mark.parametrize(
    "rec",
    [
        power_state("dc1", T0, "ON_FIRE"),
        power_state("dc1", T0, "GRID", load_mw=-1.0),
        power_state("", T0, "GRID"),
    ],
)
def test_impossible_power_states_are_refused(rec: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord):
        Scheduler().on_site_power(rec)


def test_without_spillover_sites_keep_their_work_whatever_their_power() -> None:
    h = Harness(cfg(spillover=False))
    h.cap("dc1", T0)
    h.tel("V1", T0)
    started_at_site(h, "a", T0 + S, priority=1)
    outs = h.power("dc1", T0 + MIN, "RESERVE")
    assert episodes(outs) == [] and commands(outs) == []
    assert commands(h.req("long", T0 + 2 * MIN, est_duration_s=LONG)) == [("ASSIGN", "long", SITE1)]


def test_a_restored_scheduler_continues_an_episode_exactly_as_the_original() -> None:
    def scenario(h: Harness) -> None:
        h.cap("dc1", T0)
        h.tel("V1", T0)
        started_at_site(h, "a", T0 + S, priority=1)
        h.cap("dc1", T0 + 30 * S, power_budget_mw=0.0)  # nothing for emulators now: "a" is shed at RESERVE
        h.power("dc1", T0 + MIN, "ISLANDED_BATTERY")

    live = Harness()
    scenario(live)
    restored = Harness()
    scenario(restored)
    nodes, tasks = restored.s.drain_dirty()
    assert any(v.startswith("site:") for v in nodes)
    copy = Scheduler.from_parts(
        [n for n in nodes.values() if n], [t for t in tasks.values() if t], restored.s.clock, restored.s.cfg
    )
    copy.check_invariants()
    assert copy.sites["dc1"].episode == live.s.sites["dc1"].episode
    nxt = power_state("dc1", T0 + 2 * MIN, "RESERVE", since=T0 + 2 * MIN)
    assert copy.on_site_power(dict(nxt)) == live.s.on_site_power(dict(nxt))
    assert Scheduler.from_dict(live.s.to_dict()).sites["dc1"] == live.s.sites["dc1"]


def test_a_claim_timeout_at_a_site_requeues_without_a_node_to_charge() -> None:
    h = Harness(cfg(claim_timeout_s=60))
    h.cap("dc1", T0)
    h.req("long", T0 + S, est_duration_s=LONG)
    outs = h.tick(T0 + 2 * MIN)
    assert ("REVOKE", "long", SITE1) in commands(outs)
    assert ("REQUEUED", "CLAIM_TIMEOUT") in lifecycle(outs, "long")


def test_site_ids_from_input_are_bounded() -> None:
    h = Harness(cfg(max_sites=2))
    h.cap("dc1", T0)
    h.power("dc2", T0, "GRID")
    with pytest.raises(InvalidRecord, match="max_sites"):
        h.cap("dc3", T0 + S)
    h.cap("dc1", T0 + S)  # a known site still reports
    assert sorted(h.s.sites) == ["dc1", "dc2"] and h.s.sizes()["sites"] == 2


def test_a_session_the_site_cut_itself_moves_like_a_shed_one_and_is_no_failure() -> None:
    h = Harness()
    h.cap("dc1", T0)
    h.tel("V1", T0)
    started_at_site(h, "a", T0 + S, priority=1)
    h.power("dc1", T0 + MIN, "ISLANDED_BATTERY")
    outs = h.status("a", T0 + 2 * MIN, "FAILED", error="abandoned: site_load_shed")
    assert lifecycle(outs, "a") == [
        ("PREEMPTED", "SHED_LOAD"),
        ("REQUEUED", "SHED_LOAD"),
        ("ASSIGNED", "SHED_LOAD"),
    ]
    assert h.s.tasks["a"].failures == 0 and h.holder("a") == "V1"
    (update,) = episodes(outs)
    assert update["sessions_shed"] == 1


def test_the_budget_counts_sessions_at_the_power_the_site_reports() -> None:
    s = site("RESERVE", power_budget_mw=0.08)
    assert s.session_budget(cfg(site_session_kw=0.35)) == 228
    s.session_kw = 8.0  # the site's own figure wins
    assert s.session_budget(cfg(site_session_kw=0.35)) == 10


def test_an_islanded_site_takes_pinned_work_only_within_its_power_budget() -> None:
    h = Harness(cfg(site_session_kw=100.0))
    h.cap("dc1", T0, power_budget_mw=0.2)  # 2 sessions of 100 kW
    h.power("dc1", T0 + S, "ISLANDED_BATTERY")
    for k in range(3):
        h.req(f"dc{k}", T0 + (2 + k) * S, placement="DATACENTER")
    assert [h.holder(f"dc{k}") for k in range(3)] == [SITE1, SITE1, None]  # the third waits


def test_at_the_reserve_a_site_still_over_budget_sheds_pinned_and_important_work_too() -> None:
    h = Harness(cfg(site_session_kw=100.0, shed_max_priority=5))
    h.cap("dc1", T0)
    started_at_site(h, "flex", T0, priority=1)
    started_at_site(h, "pinned", T0 + S, priority=2, placement="DATACENTER")
    started_at_site(h, "urgent", T0 + 2 * S, priority=9)
    h.cap("dc1", T0 + MIN, power_budget_mw=0.1)  # room for one session
    outs = h.power("dc1", T0 + 2 * MIN, "RESERVE")
    revoked = [t for cmd, t, vin in commands(outs) if cmd == "REVOKE"]
    assert revoked == ["flex", "pinned"]  # the flexible one first, then the least important of the rest
    assert h.s.sites["dc1"].running == ["urgent"]
    assert h.s.tasks["pinned"].state == "QUEUED"  # it waits for a site on the grid; it is not lost
