"""The scheduler worker end to end: `carnival worker scheduler` as a real subprocess against the real broker.

Records are produced with Carnival's producer and Avro serde; nodes, assignments and lifecycle are read
back from `fleet.nodes.v1`, `tasks.assignments.v1` and `tasks.lifecycle.v1`. One worker serves the module
(faust takes seconds to start) with short timers (lease 8 s, claim timeout 3 s, tick 0.5 s); every test
uses its own vins, task ids and regions (pools) because topics are shared by the session.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_scheduler_itsupport import (
    Feed,
    Outputs,
    SchedWorker,
    check_history,
    now_ms,
    req,
    serving_worker,
    status,
    tag,
    tel,
    worker_env,
)

from core.settings import Settings
from processors.scheduler import assignment_id_for
from processors.scheduler.wiring_runtime import partition_of
from streams.kafka import make_consumer

pytestmark = pytest.mark.integration

LEASE_S = 8
CLAIM_TIMEOUT_S = 3
ROUTE_TTL_S = 120
WORKER_CONFIG = {
    "lease_s": LEASE_S, "claim_timeout_s": CLAIM_TIMEOUT_S, "tick_s": 0.5, "route_ttl_s": ROUTE_TTL_S,
}  # fmt: skip
MIN = 60_000


@pytest.fixture(scope="module")
def worker(
    stack: Settings, stack_env: dict[str, str], outputs: Outputs, feed: Feed,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SchedWorker]:  # fmt: skip
    env, log_dir = worker_env(stack_env, **WORKER_CONFIG), tmp_path_factory.mktemp("sched-worker")
    with serving_worker(env, log_dir, outputs, feed) as w:
        yield w


def test_eligibility_reasons_surface_on_fleet_nodes(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("elig")
    now = now_ms()
    cases = {
        "ok": {},
        "NOT_OPTED_IN": {"opted_in": False},
        "HW_TOO_OLD": {"hw": "HW3"},
        "NOT_PARKED": {"gear": "D"},
        "NOT_PLUGGED_IN": {"charge_state": "DISCONNECTED"},
        "UNKNOWN_STATE": {"gear": "UNKNOWN"},
        "SOC_TOO_LOW": {"soc_pct": 12.0},
        "TOO_HOT": {"compute_temp_c": 97.0},
        "DEPARTURE_SOON": {"scheduled_departure": now + 5 * MIN},
        "NO_POWER_IS_NOT_PLUGGED": {"charge_state": "NO_POWER"},
    }
    feed.telemetry(*(tel(f"{t}-{name}", t, ts=now, **fields) for name, fields in cases.items()))
    outputs.wait(lambda: all(outputs.node(f"{t}-{n}") for n in cases), what="a node record per car")
    got = {n: (outputs.node(f"{t}-{n}")["eligible"], outputs.node(f"{t}-{n}")["reason"]) for n in cases}
    expected = {n: (False, n) for n in cases}
    expected["ok"] = (True, None)
    expected["NO_POWER_IS_NOT_PLUGGED"] = (False, "NOT_PLUGGED_IN")
    assert got == expected
    rec = outputs.node(f"{t}-ok")
    assert rec["region"] == t and rec["hw"] == "HW4" and rec["pool"] == t and rec["capacity"] == 1

    # Not reported (missing / UNKNOWN) is never "unplugged": the eligible car stays eligible.
    feed.telemetry(tel(f"{t}-ok", t, ts=now + 1000, charge_state="UNKNOWN", gear="UNKNOWN", soc_pct=None))
    outputs.settle(1.5)
    assert outputs.node(f"{t}-ok")["eligible"] is True


def test_matching_respects_hw_soc_region_and_capacity(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("match")
    hw, soc, reg, cap, other = (f"{t}-{p}" for p in ("hw", "soc", "reg", "cap", "other"))
    feed.telemetry(tel(f"{hw}-v4", hw), tel(f"{soc}-v50", soc, soc_pct=50.0), tel(f"{reg}-v", reg))
    outputs.wait(lambda: all(outputs.node(v) for v in (f"{hw}-v4", f"{soc}-v50", f"{reg}-v")))
    feed.requests(
        req(f"{hw}-t", hw, min_hw="HW5"),
        req(f"{soc}-t", soc, min_soc_pct=70.0),
        req(f"{reg}-t", other),  # a region with no cars: the car in `reg` must not take it
        req(f"{cap}-t1", cap, priority=9),
        req(f"{cap}-t2", cap, priority=1),
    )
    tasks = [f"{hw}-t", f"{soc}-t", f"{reg}-t", f"{cap}-t1", f"{cap}-t2"]
    outputs.wait(lambda: all("QUEUED" in outputs.states(x) for x in tasks), what="all tasks queued")
    feed.telemetry(tel(f"{cap}-v", cap))  # one car for two tasks: the more urgent one gets it
    outputs.wait(lambda: outputs.node(f"{cap}-v") and outputs.commands(t))
    outputs.settle(1.0)
    assert outputs.commands(t) == [("ASSIGN", f"{cap}-t1", f"{cap}-v")]
    assert outputs.node(f"{cap}-v")["reason"] == "AT_CAPACITY" and outputs.node(f"{cap}-v")["running"] == 1

    # Nodes that do qualify arrive: the waiting tasks go exactly there.
    feed.telemetry(tel(f"{hw}-v5", hw, hw="HW5"), tel(f"{soc}-v90", soc, soc_pct=90.0))
    outputs.wait(lambda: len(outputs.commands(t)) == 3, what=lambda: f"assignments: {outputs.commands(t)}")
    assert set(outputs.commands(t)[1:]) == {
        ("ASSIGN", f"{hw}-t", f"{hw}-v5"),
        ("ASSIGN", f"{soc}-t", f"{soc}-v90"),
    }

    # Capacity: the second task gets the car only when the first one completes.
    aid = outputs.assigned(f"{cap}-t1")[0]["assignment_id"]
    feed.statuses(
        status(f"{cap}-t1", aid, f"{cap}-v", "STARTED"), status(f"{cap}-t1", aid, f"{cap}-v", "COMPLETED")
    )
    outputs.wait(lambda: outputs.assigned(f"{cap}-t2"), what="t2 assigned after t1 completed")
    assert outputs.states(f"{cap}-t1")[-2:] == ["STARTED", "COMPLETED"]
    assert outputs.assigned(f"{cap}-t2")[0]["vin"] == f"{cap}-v"
    assert f"{reg}-t" not in {c[1] for c in outputs.commands(t)}
    check_history(outputs, tasks)


def test_priority_order_with_aging(worker: SchedWorker, outputs: Outputs, feed: Feed) -> None:
    t = tag("prio")
    now = now_ms()
    # aging 0.1 point/minute: priority 0 requested 100 minutes ago beats priority 9 requested now.
    feed.requests(
        req(f"{t}-p9-now", t, ts=now, priority=9),
        req(f"{t}-p0-old", t, ts=now - 100 * MIN, priority=0),
        req(f"{t}-p5-now", t, ts=now, priority=5),
        req(f"{t}-p0-now", t, ts=now, priority=0),
        req(f"{t}-p5-older", t, ts=now - 1 * MIN, priority=5),
    )
    tasks = [f"{t}-p9-now", f"{t}-p0-old", f"{t}-p5-now", f"{t}-p0-now", f"{t}-p5-older"]
    outputs.wait(lambda: all("QUEUED" in outputs.states(x) for x in tasks), what="tasks queued")
    for i in range(5):  # one car at a time: each takes the head of the queue
        feed.telemetry(tel(f"{t}-v{i}", t))
        outputs.wait(lambda i=i: len(outputs.commands(t)) == i + 1, what=lambda: str(outputs.commands(t)))
    assert [task for _, task, _ in outputs.commands(t)] == [
        f"{t}-p0-old", f"{t}-p9-now", f"{t}-p5-older", f"{t}-p5-now", f"{t}-p0-now",
    ]  # fmt: skip


def test_preemption_on_gear_change_and_unplug(worker: SchedWorker, outputs: Outputs, feed: Feed) -> None:
    t = tag("preempt")
    for case, leave in (("gear", {"gear": "D"}), ("unplug", {"charge_state": "DISCONNECTED"})):
        region = f"{t}-{case}"
        a, b = f"{region}-a", f"{region}-b"
        feed.telemetry(tel(a, region))
        outputs.wait(lambda a=a: outputs.node(a))
        feed.requests(req(f"{region}-t", region))
        first = outputs.wait(lambda r=region: outputs.assigned(f"{r}-t"))[0]
        assert first["vin"] == a
        feed.statuses(status(f"{region}-t", first["assignment_id"], a, "STARTED"))
        outputs.wait(lambda r=region: "STARTED" in outputs.states(f"{r}-t"))
        feed.telemetry(tel(b, region))  # a second car, then the owner of the first comes back
        outputs.wait(lambda b=b: outputs.node(b))
        feed.telemetry(tel(a, region, **leave))
        reason = "NOT_PARKED" if case == "gear" else "NOT_PLUGGED_IN"
        # Lifecycle, assignments and nodes are three topics with no order between them: wait for all three.
        outputs.wait(lambda r=region, a=a, reason=reason: len(outputs.assigned(f"{r}-t")) == 2
                     and len(outputs.commands(r)) == 3 and (outputs.node(a) or {}).get("reason") == reason,
                     what=f"{case}: reassignment")  # fmt: skip
        states = outputs.states(f"{region}-t")
        assert states == ["REQUESTED", "QUEUED", "ASSIGNED", "STARTED", "PREEMPTED", "REQUEUED", "ASSIGNED"]
        life = {r["state"]: r for r in outputs.lifecycle[f"{region}-t"]}
        assert life["PREEMPTED"]["reason"] == reason and life["PREEMPTED"]["vin"] == a
        assert life["REQUEUED"]["reason"] == reason
        # (ASSIGN/REVOKE are keyed by vin: records of two cars have no order between them)
        assert sorted(outputs.commands(region)) == sorted(
            [("ASSIGN", f"{region}-t", a), ("REVOKE", f"{region}-t", a), ("ASSIGN", f"{region}-t", b)]
        )
        revoke = [x for x in outputs.by_vin[a] if x["command"] == "REVOKE"][0]
        assert revoke["reason"] == reason and revoke["assignment_id"] == first["assignment_id"]
        assert outputs.assigned(f"{region}-t")[1]["assignment_id"] == assignment_id_for(f"{region}-t", 2)
        assert outputs.node(a)["reason"] == reason
        check_history(outputs, [f"{region}-t"])


def test_claim_timeout_requeues(worker: SchedWorker, outputs: Outputs, feed: Feed) -> None:
    t = tag("claim")
    feed.telemetry(tel(f"{t}-a", t))
    outputs.wait(lambda: outputs.node(f"{t}-a"))
    feed.requests(req(f"{t}-t", t))
    outputs.wait(lambda: outputs.assigned(f"{t}-t"))
    # No STARTED within 3 s: revoked and requeued; the only car gets it again (attempt 2).
    outputs.wait(lambda: len(outputs.assigned(f"{t}-t")) == 2, timeout_s=CLAIM_TIMEOUT_S + 10)
    life = [r for r in outputs.lifecycle[f"{t}-t"] if r["state"] == "REQUEUED"]
    assert life[0]["reason"] == "CLAIM_TIMEOUT" and life[0]["vin"] == f"{t}-a"
    first, second = outputs.assigned(f"{t}-t")[:2]
    assert second["ts"] - first["ts"] >= CLAIM_TIMEOUT_S * 1000
    assert [c[0] for c in outputs.commands(t)][:3] == ["ASSIGN", "REVOKE", "ASSIGN"]
    assert [x for x in outputs.by_vin[f"{t}-a"] if x["command"] == "REVOKE"][0]["reason"] == "CLAIM_TIMEOUT"
    # A STARTED for the timed-out assignment is stale; the current one is accepted.
    feed.statuses(status(f"{t}-t", first["assignment_id"], f"{t}-a", "STARTED"))
    feed.statuses(status(f"{t}-t", second["assignment_id"], f"{t}-a", "STARTED"))
    outputs.wait(lambda: "STARTED" in outputs.states(f"{t}-t"))
    started = [r for r in outputs.lifecycle[f"{t}-t"] if r["state"] == "STARTED"]
    assert [r["assignment_id"] for r in started] == [second["assignment_id"]]


def test_deadline_expiry(worker: SchedWorker, outputs: Outputs, feed: Feed) -> None:
    t = tag("deadline")
    now = now_ms()
    feed.requests(
        # No car in this pool: it waits until it can no longer finish (deadline - est_duration_s).
        req(f"{t}-soon", t, ts=now, deadline=now + 4000, est_duration_s=1),
        req(f"{t}-past", t, ts=now, deadline=now - 1000),  # already too late
        req(f"{t}-long", t, ts=now, deadline=now + 60_000),  # 600 s of work: cannot finish, never queued
    )
    outputs.wait(lambda: "EXPIRED" in outputs.states(f"{t}-soon"), timeout_s=15)
    assert outputs.states(f"{t}-soon") == ["REQUESTED", "QUEUED", "EXPIRED"]
    assert outputs.states(f"{t}-past") == ["REQUESTED", "EXPIRED"]
    assert outputs.states(f"{t}-long") == ["REQUESTED", "EXPIRED"]
    assert outputs.lifecycle[f"{t}-long"][-1]["reason"] == "CANNOT_FINISH_BY_DEADLINE"
    expired = [r for r in outputs.lifecycle[f"{t}-soon"] if r["state"] == "EXPIRED"][0]
    assert expired["reason"] == "CANNOT_FINISH_BY_DEADLINE" and expired["ts"] >= now + 3000
    # An assigned task past its deadline is revoked too.
    feed.telemetry(tel(f"{t}-a", t))
    outputs.wait(lambda: outputs.node(f"{t}-a"))
    feed.requests(req(f"{t}-run", t, deadline=now_ms() + 2500, est_duration_s=1))
    outputs.wait(lambda: "EXPIRED" in outputs.states(f"{t}-run"), timeout_s=15)
    assert outputs.states(f"{t}-run") == ["REQUESTED", "QUEUED", "ASSIGNED", "EXPIRED"]
    assert [c[0] for c in outputs.commands(f"{t}-run")] == ["ASSIGN", "REVOKE"]


def test_stale_lease_expires_node_but_running_work_keeps_its_claim(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("lease")
    feed.telemetry(tel(f"{t}-idle", t), tel(f"{t}-busy", t))
    outputs.wait(lambda: outputs.node(f"{t}-idle") and outputs.node(f"{t}-busy"))
    feed.requests(req(f"{t}-t", t))
    got = outputs.wait(lambda: outputs.assigned(f"{t}-t"))[0]
    feed.statuses(status(f"{t}-t", got["assignment_id"], got["vin"], "STARTED"))
    idle = f"{t}-idle" if got["vin"] == f"{t}-busy" else f"{t}-busy"
    # Both go silent: the idle one expires after the lease; the busy one keeps its task (claim lease).
    outputs.wait(lambda: outputs.node(idle)["reason"] == "LEASE_EXPIRED", timeout_s=LEASE_S + 10)
    assert outputs.node(idle)["eligible"] is False
    outputs.settle(1.0)
    assert "PREEMPTED" not in outputs.states(f"{t}-t")


def test_failing_node_is_throttled(worker: SchedWorker, outputs: Outputs, feed: Feed) -> None:
    t = tag("throttle")
    vin, task = f"{t}-a", f"{t}-t"
    feed.telemetry(tel(vin, t))
    outputs.wait(lambda: outputs.node(vin))
    feed.requests(req(task, t))
    # Reports for attempts the scheduler has not made yet are held by the router until it has.
    for attempt in (1, 2, 3):
        aid = assignment_id_for(task, attempt)
        feed.statuses(
            status(task, aid, vin, "STARTED"), status(task, aid, vin, "FAILED", error=f"crash {attempt}")
        )
    outputs.wait(lambda: outputs.states(task)[-1:] == ["FAILED"] and len(outputs.assigned(task)) == 3,
                 what=lambda: str(outputs.states(task)))  # fmt: skip
    final = outputs.lifecycle[task][-1]
    assert final["reason"] == "MAX_FAILURES: crash 3"
    assert outputs.states(task).count("REQUEUED") == 2
    outputs.wait(lambda: outputs.node(vin)["reason"] == "THROTTLED", what="throttled node")
    assert outputs.node(vin)["reliability"] < 0.7
    # A throttled car takes no new work.
    feed.requests(req(f"{t}-next", t))
    outputs.wait(lambda: "QUEUED" in outputs.states(f"{t}-next"))
    outputs.settle(1.0)
    assert not outputs.assigned(f"{t}-next")


def test_duplicate_and_out_of_order_events(worker: SchedWorker, outputs: Outputs, feed: Feed) -> None:
    t = tag("dup")
    vin, task = f"{t}-a", f"{t}-t"
    now = now_ms()
    feed.telemetry(tel(vin, t, ts=now), tel(vin, t, ts=now))  # duplicate
    outputs.wait(lambda: outputs.node(vin))
    feed.requests(req(task, t, ts=now), req(task, t, ts=now))  # duplicate request
    got = outputs.wait(lambda: outputs.assigned(task))[0]
    aid = got["assignment_id"]
    # Late telemetry saying the car drove away (older than what we have) must not preempt.
    feed.telemetry(tel(vin, t, ts=now - 5000, gear="D"))
    # Duplicate STARTED, then COMPLETED, then a late STARTED and a report with a wrong assignment id.
    feed.statuses(
        status(task, aid, vin, "STARTED", ts=now + 100), status(task, aid, vin, "STARTED", ts=now + 100),
        status(task, aid, vin, "COMPLETED", ts=now + 200), status(task, aid, vin, "STARTED", ts=now + 50),
        status(task, assignment_id_for(task, 1), f"{t}-other", "FAILED", ts=now + 300),
    )  # fmt: skip
    outputs.wait(lambda: "COMPLETED" in outputs.states(task))
    outputs.settle(1.5)
    assert outputs.states(task) == ["REQUESTED", "QUEUED", "ASSIGNED", "STARTED", "COMPLETED"]
    assert len([r for r in outputs.lifecycle[task] if r["state"] == "REQUESTED"]) == 1
    assert [c[0] for c in outputs.commands(t)] == ["ASSIGN"]
    assert outputs.node(vin)["eligible"] is True and outputs.node(vin)["gear"] == "P"


def test_bad_records_are_dead_lettered(worker: SchedWorker, outputs: Outputs, feed: Feed) -> None:
    t = tag("bad")
    feed.raw("fleet.telemetry.v1", b"not avro at all", f"{t}-v")
    feed.raw("tasks.status.v1", b"\xc3\x01garbage", f"{t}-t")
    far_future = now_ms() + 3600_000  # beyond max_future_skew_s of the pool's clock
    feed.telemetry(tel(f"{t}-ok", t), tel(f"{t}-future", t, ts=far_future))
    outputs.wait(lambda: outputs.node(f"{t}-ok"))

    def mine() -> list[dict[str, object]]:
        return [d for d in outputs.deadletters if f"{t}-".encode() in (d.get("key") or b"")
                or f"{t}-future".encode() in (d.get("value") or b"")]  # fmt: skip

    outputs.wait(lambda: len(mine()) >= 3, what=lambda: f"dead letters: {mine()}")
    kinds = sorted(d["error_kind"] for d in mine())
    assert "FUTURE_TIMESTAMP" in kinds and len(kinds) == 3
    future = [d for d in mine() if d["error_kind"] == "FUTURE_TIMESTAMP"][0]
    assert future["source_topic"] == "fleet.telemetry.v1" and future["source_offset"] >= 0
    assert outputs.node(f"{t}-future") is None and worker.alive()


def test_routes_of_finished_tasks_are_forgotten_after_their_ttl(
    worker: SchedWorker, outputs: Outputs, feed: Feed, stack: Settings
) -> None:
    """Table ``routes`` does not grow forever: a finished task's route is deleted (a tombstone on its
    changelog) once the partition's event time is ``route_ttl_s`` past the task's end. Last in the
    module: it moves that partition's routing clock minutes ahead."""
    t = tag("ttl")
    vin, task = f"{t}-v", f"{t}-t"
    now = now_ms()
    feed.telemetry(tel(vin, t, ts=now))
    outputs.wait(lambda: outputs.node(vin))
    feed.requests(req(task, t, ts=now))
    aid = outputs.wait(lambda: outputs.assigned(task))[0]["assignment_id"]
    feed.statuses(
        status(task, aid, vin, "STARTED", ts=now + 100), status(task, aid, vin, "COMPLETED", ts=now + 200)
    )
    outputs.wait(lambda: "COMPLETED" in outputs.states(task))

    changelog = make_consumer(stack, **{"auto.offset.reset": "earliest"})
    changelog.subscribe(["carnival-scheduler-routes-changelog"])
    # Unknown tasks of the same partition, ROUTE_TTL_S + 30 s later in event time (within the skew
    # allowance): each event forgets a few ended routes, oldest first.
    partition = partition_of(task, stack.topic_partitions)
    later = [
        f"{t}-later-{i}"
        for i in range(2000)
        if partition_of(f"{t}-later-{i}", stack.topic_partitions) == partition
    ]
    feed.statuses(*(status(x, "none", vin, "FAILED", ts=now + (ROUTE_TTL_S + 30) * 1000) for x in later[:40]))
    seen: list[bytes | None] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and None not in seen:
        for msg in changelog.consume(500, 0.5):
            if not msg.error() and msg.key() == task.encode():
                seen.append(msg.value())
    changelog.close()
    assert seen and seen[0] is not None, "the route was written"
    assert seen[-1] is None, f"no tombstone for the finished task's route: {seen}"
