"""The scheduler's task router, without a broker: requests to their pool, statuses held until their
assignment is known, and the error policy (a record whose routing raises is dead-lettered)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from test_scheduler_support import T0, cfg, req, status

from processors.scheduler import routing
from processors.scheduler.routing import TaskRouter
from processors.scheduler.tasks import assignment_id_for
from processors.scheduler.wiring_runtime import REQUEST, STATUS, unpack
from streams.serde import AvroSerde

SERDE = AvroSerde()


class Routes(dict[bytes, bytes]):
    """faust's table over its memory store: ``routes[key] = value`` writes ``data.data``."""

    def __init__(self) -> None:
        super().__init__()
        self.data = SimpleNamespace(data=self, _key_partition={})


class PoolTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, key: Any = None, value: Any = None, partition: Any = None) -> None:
        self.sent.append((key, value))


class Codec:
    def __init__(self) -> None:
        self.serde = SERDE
        self.dead: list[tuple[int, str, str]] = []

    async def decode(self, event: Any) -> dict[str, Any]:
        return SERDE.decode(event.message.topic, event.message.value)

    async def dead_letter(self, msg: Any, kind: str, error: str) -> None:
        self.dead.append((msg.offset, kind, error))


def _event(topic: str, record: dict[str, Any], offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(
        topic=topic, partition=0, offset=offset, key=record["task_id"].encode(),
        value=SERDE.encode(topic, record), timestamp=record["ts"] / 1000,
    ))  # fmt: skip


def _router() -> tuple[TaskRouter, PoolTopic, Codec]:
    topic, codec = PoolTopic(), Codec()
    return TaskRouter(Routes(), topic, codec, cfg(), hold_max=4, route_ttl_ms=3_600_000), topic, codec


def _lifecycle(task_id: str, ts: int, state: str, attempt: int, pool: str = "us-west") -> dict[str, Any]:
    return {"task_id": task_id, "ts": ts, "state": state, "vin": "car-1", "reason": None, "tenant": "acme",
            "kind": "browse", "priority": 5, "attempt": attempt, "pool": pool,
            "assignment_id": assignment_id_for(task_id, attempt) if attempt else None}  # fmt: skip


def test_a_status_waits_for_its_assignment_then_goes_to_the_task_s_pool() -> None:
    async def main() -> None:
        router, topic, codec = _router()
        await router.handle(_event("tasks.requests.v1", req("t1", T0), 0))
        assert [(k, unpack(v).kind) for k, v in topic.sent] == [(b"us-west", REQUEST)]
        aid = assignment_id_for("t1", 1)
        await router.handle(_event("tasks.status.v1", status("t1", aid, "car-1", T0 + 5, "STARTED"), 1))
        assert len(topic.sent) == 1  # held: no assignment of t1 is known yet
        await router.handle(_event("tasks.lifecycle.v1", _lifecycle("t1", T0 + 2, "ASSIGNED", 1), 2))
        assert [(k, unpack(v).kind) for k, v in topic.sent[1:]] == [(b"us-west", STATUS)]
        assert unpack(topic.sent[1][1]).source_offset == 1
        assert codec.dead == []

    asyncio.run(main())


def test_a_record_whose_routing_raises_is_dead_lettered_and_the_stream_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        router, topic, codec = _router()

        def broken(rec: dict[str, Any], config: Any) -> str:
            raise RuntimeError("pool table corrupt")  # not one of the exceptions a record can cause

        monkeypatch.setattr(routing, "pool_for_request", broken)
        await router.handle(_event("tasks.requests.v1", req("t1", T0), 7))  # must not raise
        assert codec.dead == [(7, "PROCESSING", "RuntimeError: pool table corrupt")]
        monkeypatch.undo()
        await router.handle(_event("tasks.requests.v1", req("t2", T0), 8))
        assert len(topic.sent) == 1

    asyncio.run(main())


def test_finished_routes_are_forgotten_after_their_ttl() -> None:
    async def main() -> None:
        router, topic, codec = _router()
        await router.handle(_event("tasks.lifecycle.v1", _lifecycle("t1", T0, "COMPLETED", 1), 0))
        assert b"t1" in router.routes
        await router.handle(_event("tasks.requests.v1", req("t2", T0 + 3_600_001), 1))
        assert b"t1" not in router.routes

    asyncio.run(main())
