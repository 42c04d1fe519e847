"""Hostile records through the real broker (issue 11): a tombstone, a year-3000 timestamp or a NaN on a
scheduler input goes to deadletter.v1 with its reason, and the worker keeps serving the fleet."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from test_scheduler_itsupport import (
    Feed,
    Outputs,
    SchedWorker,
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

pytestmark = pytest.mark.integration

YEAR_3000 = 32_503_680_000_000


@pytest.fixture(scope="module")
def worker(
    stack: Settings, stack_env: dict[str, str], outputs: Outputs, feed: Feed,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SchedWorker]:  # fmt: skip
    env, log_dir = worker_env(stack_env, tick_s=0.5), tmp_path_factory.mktemp("sched-guards")
    with serving_worker(env, log_dir, outputs, feed) as w:
        yield w


def _dead(outputs: Outputs, key: str) -> list[dict[str, object]]:
    return [d for d in outputs.deadletters if d.get("key") == key.encode()]


def test_a_telemetry_tombstone_is_dead_lettered_and_the_worker_keeps_serving(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("tomb")
    vin = f"{t}-v"
    feed.raw("fleet.telemetry.v1", None, vin)  # type: ignore[arg-type]
    feed.telemetry(tel(vin, t))
    outputs.wait(lambda: (outputs.node(vin) or {}).get("eligible"), what=f"{vin} eligible")
    feed.requests(req(f"{t}-task", t))
    outputs.wait(lambda: outputs.assigned(f"{t}-task"), what="the task assigned")
    outputs.wait(lambda: _dead(outputs, vin), what="the tombstone's dead letter")
    [dead] = _dead(outputs, vin)
    assert dead["error_kind"] == "TOMBSTONE" and dead["source_topic"] == "fleet.telemetry.v1"
    assert dead["value"] is None and "tombstone" in str(dead["error"])
    assert worker.alive()


def test_task_tombstones_and_year_3000_records_are_dead_lettered_and_move_no_clock(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("future")
    vin = f"{t}-v"
    feed.telemetry(tel(vin, t))
    outputs.wait(lambda: (outputs.node(vin) or {}).get("eligible"), what=f"{vin} eligible")
    feed.raw("tasks.requests.v1", None, f"{t}-tomb-req")  # type: ignore[arg-type]
    feed.raw("tasks.status.v1", None, f"{t}-tomb-st")  # type: ignore[arg-type]
    feed.requests(req(f"{t}-req3000", t, ts=YEAR_3000))
    feed.statuses(status(f"{t}-st3000", assignment_id_for(f"{t}-st3000", 1), vin, "STARTED", ts=YEAR_3000))
    keys = {f"{t}-tomb-req": "TOMBSTONE", f"{t}-tomb-st": "TOMBSTONE",
            f"{t}-req3000": "FUTURE_TIMESTAMP", f"{t}-st3000": "FUTURE_TIMESTAMP"}  # fmt: skip
    outputs.wait(
        lambda: all(_dead(outputs, k) for k in keys), what=lambda: f"dead letters {outputs.deadletters}"
    )
    assert {k: _dead(outputs, k)[0]["error_kind"] for k in keys} == keys
    assert outputs.states(f"{t}-req3000") == []
    # No clock moved to the year 3000: the car keeps its lease and takes the next task.
    feed.telemetry(tel(vin, t))
    feed.requests(req(f"{t}-task", t))
    got = outputs.wait(lambda: outputs.assigned(f"{t}-task"), what="the task assigned")
    assert got[0]["vin"] == vin and got[0]["ts"] < now_ms() + 60_000
    assert (outputs.node(vin) or {}).get("reason") in (None, "AT_CAPACITY")


def test_a_nan_soc_is_not_reported_and_the_car_is_ineligible(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("nan")
    vin = f"{t}-v"
    feed.telemetry(tel(vin, t, soc_pct=math.nan))
    outputs.wait(lambda: outputs.node(vin), what=f"a node record of {vin}")
    node = outputs.node(vin)
    assert node is not None and (node["eligible"], node["reason"]) == (False, "SOC_INVALID")
    feed.telemetry(tel(vin, t))  # a usable SoC again
    outputs.wait(lambda: (outputs.node(vin) or {}).get("eligible"), what=f"{vin} eligible again")


def test_a_request_or_telemetry_with_an_over_long_string_is_dead_lettered_as_oversized(
    worker: SchedWorker, outputs: Outputs, feed: Feed
) -> None:
    t = tag("long")
    vin = f"{t}-v"
    feed.telemetry(tel(vin, t))
    outputs.wait(lambda: (outputs.node(vin) or {}).get("eligible"), what=f"{vin} eligible")
    feed.requests(req(f"{t}-huge", t, tenant="x" * 900_000))
    feed.telemetry(tel(vin, t, software_version="v" * 5_000))

    def mine() -> list[tuple[object, ...]]:
        return [(d["key"], d["error_kind"], d["error"]) for d in outputs.deadletters
                if t.encode() in (d.get("key") or b"")]  # type: ignore[operator]  # fmt: skip

    outputs.wait(lambda: _dead(outputs, f"{t}-huge"), what=lambda: f"the request's dead letter: {mine()}")

    # a telemetry record reaches the scheduler in its pool's pack: its dead letter is keyed by the pool
    def telemetry() -> list[dict[str, object]]:
        return [d for d in outputs.deadletters if d["source_topic"] == "fleet.telemetry.v1"
                and d.get("key") == t.encode() and "software_version" in str(d["error"])]  # fmt: skip

    outputs.wait(telemetry, what=lambda: f"the telemetry's dead letter: {mine()}")
    [request] = _dead(outputs, f"{t}-huge")
    assert request["error_kind"] == "OVERSIZED" and "tenant is 900000 characters" in str(request["error"])
    assert request["value_size"] > 900_000 and request["truncated"] is True
    assert telemetry()[0]["error_kind"] == "OVERSIZED"
    assert outputs.states(f"{t}-huge") == []
    feed.requests(req(f"{t}-task", t))
    outputs.wait(lambda: outputs.assigned(f"{t}-task"), what="the next task assigned")
