"""The task router against hostile records (issue 11): tombstones, timestamps far past their arrival,
absurd attempts, and statuses held for tasks nobody ever hears of again."""

from __future__ import annotations

import asyncio
import base64
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from test_scheduler_routing import SERDE, _event, _lifecycle, _router
from test_scheduler_support import T0, req, status

from processors.scheduler import routing
from processors.scheduler.routing import ATTEMPT_LOOKBACK, TaskRouter
from processors.scheduler.tasks import assignment_id_for
from processors.scheduler.wiring_runtime import STATUS, unpack

YEAR_3000 = 32_503_680_000_000
H = 3_600_000


def _tombstone(topic: str, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(
        topic=topic, partition=0, offset=offset, key=b"t1", value=None, timestamp=T0 / 1000,
    ))  # fmt: skip


def _arriving(event: Any, arrival_ms: int) -> Any:
    event.message.timestamp = arrival_ms / 1000
    return event


@pytest.mark.parametrize("topic", ["tasks.requests.v1", "tasks.status.v1", "tasks.lifecycle.v1"])
def test_a_tombstone_is_dead_lettered_and_the_router_goes_on(topic: str) -> None:
    async def main() -> None:
        router, pool_topic, codec = _router()
        await router.handle(_tombstone(topic, 0))
        assert [(off, kind) for off, kind, _ in codec.dead] == [(0, "TOMBSTONE")]
        await router.handle(_event("tasks.requests.v1", req("t1", T0), 1))
        assert len(pool_topic.sent) == 1 and len(codec.dead) == 1

    asyncio.run(main())


@pytest.mark.parametrize("topic", ["tasks.requests.v1", "tasks.status.v1", "tasks.lifecycle.v1"])
def test_a_year_3000_record_is_refused_and_moves_no_routing_clock(topic: str) -> None:
    async def main() -> None:
        router, pool_topic, codec = _router()
        await router.handle(_event("tasks.lifecycle.v1", _lifecycle("t0", T0, "COMPLETED", 1), 0))
        records = {
            "tasks.requests.v1": req("t1", YEAR_3000),
            "tasks.status.v1": status("t1", assignment_id_for("t1", 1), "car-1", YEAR_3000, "STARTED"),
            "tasks.lifecycle.v1": _lifecycle("t1", YEAR_3000, "COMPLETED", 1),
        }
        await router.handle(_arriving(_event(topic, records[topic], 1), T0 + 1000))
        assert [(off, kind) for off, kind, _ in codec.dead] == [(1, "FUTURE_TIMESTAMP")]
        assert router._clock[0] == T0 and pool_topic.sent == []
        assert b"t1" not in router.routes and b"t0" in router.routes  # nothing forgotten, nothing held

    asyncio.run(main())


def test_an_absurd_attempt_is_refused_and_matching_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        router, pool_topic, codec = _router()
        await router.handle(_event("tasks.lifecycle.v1", _lifecycle("t1", T0, "ASSIGNED", 2**31 - 1), 0))
        assert [(off, kind) for off, kind, _ in codec.dead] == [(0, "VALIDATION")]
        assert "attempt" in codec.dead[0][2] and b"t1" not in router.routes

    asyncio.run(main())
    calls: list[int] = []
    real = routing.assignment_id_for
    monkeypatch.setattr(routing, "assignment_id_for", lambda t, a: calls.append(a) or real(t, a))
    route = {"pool": "us-west", "attempt": 2**31 - 1, "done": False, "held": []}
    assert not TaskRouter.routable("t1", route, "no-such-assignment")
    assert len(calls) == ATTEMPT_LOOKBACK


def test_a_held_status_expires_by_event_time_into_the_dead_letters() -> None:
    async def main() -> None:
        router, pool_topic, codec = _router()
        router.held_ttl_ms = H
        aid = assignment_id_for("ghost", 1)
        await router.handle(_event("tasks.status.v1", status("ghost", aid, "car-1", T0, "COMPLETED"), 0))
        assert b"ghost" in router.routes and codec.dead == []  # held: nothing knows the task yet
        await router.handle(_event("tasks.requests.v1", req("t1", T0 + H), 1))
        assert codec.dead == []  # exactly one TTL later: not yet
        await router.handle(_event("tasks.requests.v1", req("t2", T0 + H + 1), 2))
        assert [(off, kind) for off, kind, _ in codec.dead] == [(0, "EXPIRED")]
        assert "ghost" in codec.dead[0][2] and "held 3600 s" in codec.dead[0][2]
        assert b"ghost" not in router.routes  # nothing else in the route: it is gone
        assert router.sizes()["routes"] == 0

    asyncio.run(main())


def test_an_expired_status_leaves_the_rest_of_a_known_route() -> None:
    async def main() -> None:
        router, pool_topic, codec = _router()
        router.held_ttl_ms = H
        await router.handle(_event("tasks.lifecycle.v1", _lifecycle("t1", T0, "ASSIGNED", 1), 0))
        stale = assignment_id_for("t1", 7)  # an attempt that never comes
        await router.handle(_event("tasks.status.v1", status("t1", stale, "car-1", T0, "STARTED"), 1))
        await router.handle(_event("tasks.requests.v1", req("t2", T0 + H + 1), 2))
        assert [(off, kind) for off, kind, _ in codec.dead] == [(1, "EXPIRED")]
        route = router._route_of("t1")
        assert route["pool"] == "us-west" and route["held"] == []
        aid = assignment_id_for("t1", 1)  # the known assignment still routes
        await router.handle(_event("tasks.status.v1", status("t1", aid, "car-1", T0 + H + 2, "STARTED"), 3))
        assert unpack(pool_topic.sent[-1][1]).kind == STATUS

    asyncio.run(main())


def test_held_statuses_written_before_held_at_existed_expire_one_ttl_after_restart() -> None:
    async def main() -> None:
        router, pool_topic, codec = _router()
        router.held_ttl_ms = H
        value = SERDE.encode("tasks.status.v1", status("old", "a", "car-1", T0, "STARTED"))
        held = [[0, 5, "a", base64.b64encode(value).decode()]]  # no held_at
        legacy = {"pool": None, "attempt": 0, "done": False, "held": held}
        router.routes[b"old"] = orjson.dumps(legacy)
        router.routes.data._key_partition[b"old"] = 0
        await router.handle(_event("tasks.requests.v1", req("t1", T0), 1))
        assert codec.dead == []
        await router.handle(_event("tasks.requests.v1", req("t2", T0 + H + 1), 2))
        assert [(off, kind) for off, kind, _ in codec.dead] == [(5, "EXPIRED")]

    asyncio.run(main())


def test_after_a_rebalance_held_statuses_restored_from_the_table_still_expire() -> None:
    async def main() -> None:
        router, pool_topic, codec = _router()
        router.held_ttl_ms = H
        aid = assignment_id_for("ghost", 1)
        await router.handle(_event("tasks.status.v1", status("ghost", aid, "car-1", T0, "COMPLETED"), 0))
        router.revoked()  # partitions go and come back: the index is rebuilt from the table
        # The first record after the rebalance is itself a held status.
        other = assignment_id_for("ghost2", 1)
        await router.handle(_event("tasks.status.v1", status("ghost2", other, "car-1", T0 + 1, "STARTED"), 1))
        await router.handle(_event("tasks.requests.v1", req("t1", T0 + H + 2), 2))
        assert sorted((off, kind) for off, kind, _ in codec.dead) == [(0, "EXPIRED"), (1, "EXPIRED")]

    asyncio.run(main())
