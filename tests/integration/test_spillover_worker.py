"""Spillover through the real broker: `carnival worker scheduler` as a subprocess, a datacenter site's
capacity and power state on their topics, cars on telemetry; the site's controller is played by this test (it
answers the assignments sent to `site:<id>`).

A site runs long work; it islands mid-run (new flexible work spills to the region's cars in the same round),
reaches its battery reserve (low-priority sessions are shed until the rest fit its budget, onto cars), gets
utility power back but is not yet stable (takes nothing), then is GRID again and takes work again. No task
is ever held twice at once; the episode and its alert are on their topics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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

pytestmark = pytest.mark.integration

LONG_S = 2 * 3600  # the policy sends work this long to a site first
SESSION_KW = 0.35  # the scheduler's default site_session_kw
WORKER_CONFIG = {"lease_s": 600, "claim_timeout_s": 120, "tick_s": 0.5}


@pytest.fixture(scope="module")
def worker(
    stack: Settings, stack_env: dict[str, str], outputs: Outputs, feed: Feed,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SchedWorker]:  # fmt: skip
    env, log_dir = worker_env(stack_env, **WORKER_CONFIG), tmp_path_factory.mktemp("spill-worker")
    with serving_worker(env, log_dir, outputs, feed) as w:
        yield w


def capacity(site_id: str, region: str, budget_mw: float | None = None, **kw: Any) -> dict[str, Any]:
    rec = {"site_id": site_id, "ts": now_ms(), "region": region, "slots_total": 10, "slots_free": 10,
           "power_budget_mw": budget_mw, "cost_per_slot_hour": 0.4}  # fmt: skip
    rec.update(kw)
    return rec


def power(site_id: str, state: str, since: int, **kw: Any) -> dict[str, Any]:
    rec = {"site_id": site_id, "ts": now_ms(), "state": state, "since": since, "battery_runtime_min": None,
           "incident_id": None, "load_mw": None, "battery_soc_pct": None, "grid_since": None}  # fmt: skip
    rec.update(kw)
    return rec


def holder(outputs: Outputs, task_id: str) -> str | None:
    """The vin holding ``task_id`` now, from its lifecycle."""
    current = None
    for r in outputs.lifecycle.get(task_id, []):
        if r["state"] == "ASSIGNED":
            current = r["vin"]
        elif r["state"] in ("PREEMPTED", "REQUEUED", "COMPLETED", "FAILED", "EXPIRED"):
            current = None
    return current


def reasons(outputs: Outputs, task_id: str) -> list[tuple[str, str | None]]:
    return [(r["state"], r["reason"]) for r in outputs.lifecycle.get(task_id, [])]


def test_a_site_islands_spills_sheds_and_takes_work_again_only_back_on_the_grid(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("spill")
    site, site_vin = f"{t}-dc", f"site:{t}-dc"
    feed.send("sites.capacity.v1", capacity(site, t))
    outputs.settle(1.0)

    # On the grid: long work (and pinned work) runs at the site; there are no cars yet anyway.
    running = {f"{t}-p1": 1, f"{t}-p2": 2, f"{t}-p3": 3, f"{t}-p8": 8}
    feed.requests(*(req(tid, t, priority=p, est_duration_s=LONG_S) for tid, p in running.items()))
    feed.requests(req(f"{t}-pinned", t, priority=1, placement="DATACENTER"))
    at_site = [*running, f"{t}-pinned"]
    outputs.wait(lambda: all(holder(outputs, x) == site_vin for x in at_site), what="work placed on the site")
    feed.statuses(
        *(status(x, outputs.assigned(x)[-1]["assignment_id"], site_vin, "STARTED") for x in at_site)
    )
    cars = [f"{t}-car{i}" for i in range(4)]
    feed.telemetry(*(tel(v, t) for v in cars))
    outputs.wait(
        lambda: all(outputs.node(v) and outputs.node(v)["eligible"] for v in cars), what="4 idle cars"
    )

    # The site islands: an episode opens, and new long work goes to a car in the same round.
    islanded_at = now_ms()
    feed.send("sites.power_state.v1", power(site, "ISLANDED_BATTERY", islanded_at, incident_id=f"{t}-inc",
                                            battery_runtime_min=30.0, load_mw=1.0))  # fmt: skip
    outputs.wait(lambda: any(e["site_id"] == site for e in outputs.episodes), what="the episode to open")
    feed.requests(req(f"{t}-new", t, est_duration_s=LONG_S))
    outputs.wait(lambda: holder(outputs, f"{t}-new") in cars, what="the new long task on a car")
    assert ("ASSIGNED", "SPILLOVER_ISLANDED") in reasons(outputs, f"{t}-new")

    # At the reserve, with room for 2 sessions: 5 run, so the 3 least important flexible ones move to cars.
    feed.send("sites.capacity.v1", capacity(site, t, budget_mw=2 * SESSION_KW / 1000))
    reserve_at = now_ms()
    feed.send("sites.power_state.v1", power(site, "RESERVE", reserve_at, incident_id=f"{t}-inc",
                                            battery_runtime_min=8.0, load_mw=1.0))  # fmt: skip
    shed = [f"{t}-p1", f"{t}-p2", f"{t}-p3"]
    outputs.wait(lambda: all(holder(outputs, x) in cars for x in shed), what="shed sessions on cars")
    for x in shed:
        assert ("REVOKE", x, site_vin) in outputs.commands(x)
        assert ("PREEMPTED", "SHED_RESERVE") in reasons(outputs, x) and (
            "ASSIGNED",
            "SHED_RESERVE",
        ) in reasons(outputs, x)
    assert holder(outputs, f"{t}-p8") == site_vin and holder(outputs, f"{t}-pinned") == site_vin
    assert len({holder(outputs, x) for x in [*shed, f"{t}-new"]}) == 4  # one task per car

    # Utility power is back, not yet stable for the retransfer delay: the site takes no flexible work.
    back_at = now_ms()
    feed.send("sites.power_state.v1", power(site, "ISLANDED_BATTERY", islanded_at, grid_since=back_at))
    feed.send("sites.capacity.v1", capacity(site, t))
    feed.requests(req(f"{t}-later", t, est_duration_s=LONG_S))
    outputs.wait(lambda: "QUEUED" in outputs.states(f"{t}-later"), what="the later task queued")
    outputs.settle(2.0)
    assert holder(outputs, f"{t}-later") is None  # every car is busy and the site is not on the grid yet

    feed.send("sites.power_state.v1", power(site, "GRID", now_ms()))
    outputs.wait(lambda: holder(outputs, f"{t}-later") == site_vin, what="the site taking work again")
    ep = outputs.wait(
        lambda: next(
            (e for e in outputs.episodes if e["site_id"] == site and e["state"] == "RESOLVED"), None
        ),
        what="the episode resolved",
    )
    assert (
        ep["started_at"] == islanded_at and ep["worst_state"] == "RESERVE" and ep["incident_id"] == f"{t}-inc"
    )
    assert ep["tasks_spilled"] == 1 and ep["sessions_shed"] == 3 and ep["ended_at"] >= ep["started_at"]
    assert ep["slot_hours_shifted"] == pytest.approx(4 * LONG_S / 3600)
    assert ep["battery_minutes_saved"] > 0
    statuses = [a["status"] for a in outputs.alerts if a["kind"] == "SPILLOVER" and a["site_id"] == site]
    assert statuses[0] == "FIRING" and statuses[-1] == "RESOLVED"
    check_history(outputs, [*at_site, f"{t}-new", f"{t}-later"], site_capacity=10)
    assert not [d for d in outputs.deadletters if t in str(d.get("key") or "")]
