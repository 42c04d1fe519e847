"""The ``route_tasks`` side of the scheduler: requests, statuses and lifecycle records (all keyed by
task_id, so co-partitioned) -> the pool-partitioned topic, with table ``routes`` (task_id -> pool,
latest attempt, held statuses).

A request goes to ``pool_for_request``; a lifecycle record (the scheduler's own output) tells which pool
holds the task and which assignment attempts exist; a status goes to that pool once its assignment_id is
one of the task's attempts (or the task is finished), and is held in the table until then.

Routes of finished tasks are forgotten ``route_ttl_ms`` (event time) after their last lifecycle record,
in the stream context of a later event of the same partition (faust writes the tombstone to that
changelog partition), a few per event. They outlive the scheduler's task tombstones, so a late status
still reaches the pool that knows the task was finished. A final FAILED is followed by nothing, a
retried one by REQUEUED at once, so FAILED with nothing after it for the TTL is an end too.

One error policy (``processors.runtime.policy``): a record whose routing raises is dead-lettered as
PROCESSING and the stream goes on.
"""

from __future__ import annotations

import base64
from collections import deque
from types import SimpleNamespace
from typing import Any

import orjson
import structlog

from processors.runtime import PROCESSING, processing_error
from processors.runtime import faust_glue as glue
from processors.scheduler._time import to_ms
from processors.scheduler.config import SchedulerConfig
from processors.scheduler.matching import pool_for_request
from processors.scheduler.records import LIFECYCLE_TOPIC
from processors.scheduler.tasks import assignment_id_for
from processors.scheduler.wiring_runtime import (
    DEAD_LETTERED,
    HELD,
    REQUEST,
    ROUTED,
    ROUTES_FORGOTTEN,
    STATUS,
    pack,
)
from streams.topics import REQUESTS_TOPIC, STATUS_TOPIC

log = structlog.get_logger(__name__)

TERMINAL_STATES = frozenset({"COMPLETED", "EXPIRED", "REJECTED"})
_MAY_END = TERMINAL_STATES | {"FAILED"}
TASK_TOPICS = (REQUESTS_TOPIC, STATUS_TOPIC, LIFECYCLE_TOPIC)


class TaskRouter:
    """Routes task records to pools. ``routes`` is the faust table (memory store), ``pool_topic`` the
    pool-partitioned topic, ``codec`` decodes inputs and dead-letters."""

    def __init__(
        self,
        routes: Any,
        pool_topic: Any,
        codec: Any,
        config: SchedulerConfig,
        *,
        hold_max: int,
        route_ttl_ms: int,
    ) -> None:
        self.routes, self.pool_topic, self.codec, self.config = routes, pool_topic, codec, config
        self.hold_max = hold_max
        self.route_ttl_ms = route_ttl_ms
        self._ended: dict[int, deque[tuple[int, bytes]]] = {}  # partition -> (ended_ts, key), oldest first
        self._clock: dict[int, int] = {}  # source partition -> newest event time seen

    async def handle(self, event: Any) -> None:
        """One record, under the error policy: a record that breaks routing is dead-lettered."""
        try:
            record = await self.route(event)
            if record is not None and record.get("ts") is not None:
                msg = event.message
                self.forget_ended(msg.partition, record["ts"], int(msg.timestamp * 1000))
        except Exception as exc:
            log.exception("scheduler_route_failed", topic=event.message.topic)
            DEAD_LETTERED.labels(kind=PROCESSING).inc()
            await self.codec.dead_letter(event.message, PROCESSING, processing_error(exc))

    def revoked(self) -> None:
        self._ended.clear()  # rebuilt from the table for the partitions this worker gets next

    # -- routing ----------------------------------------------------------------------------------
    def _route_of(self, task_id: str) -> dict[str, Any]:
        raw = self.routes.get(task_id.encode())
        return orjson.loads(raw) if raw else {"pool": None, "attempt": 0, "done": False, "held": []}

    @staticmethod
    def routable(task_id: str, route: dict[str, Any], aid: str) -> bool:
        if route["pool"] is None:
            return False
        if route["done"]:
            return True
        return any(assignment_id_for(task_id, a) == aid for a in range(route["attempt"], 0, -1))

    async def _forward(self, kind: bytes, pool: str, value: bytes, partition: int, offset: int) -> None:
        await glue.send(self.pool_topic, pool.encode(), pack(kind, value, partition, offset))

    def _set_route(self, key: bytes, route: dict[str, Any], partition: int) -> None:
        self.routes[key] = orjson.dumps(route)
        glue.track_partition(self.routes, key, partition)  # tracked only for restored keys otherwise

    async def route(self, event: Any) -> dict[str, Any] | None:
        """Route one request/status/lifecycle record; returns the decoded record (None if dead-lettered)."""
        msg = event.message
        record: dict[str, Any] | None = await self.codec.decode(event)
        if record is None:
            DEAD_LETTERED.labels(kind="DECODE").inc()
            return record
        task_id = record.get("task_id")
        if not task_id:
            await self.codec.dead_letter(msg, "VALIDATION", "record has no task_id")
            return record
        if msg.topic == REQUESTS_TOPIC:
            pool = pool_for_request(record, self.config)
            await self._forward(REQUEST, pool, msg.value, msg.partition, msg.offset)
            ROUTED.labels(topic=REQUESTS_TOPIC).inc()
            return record
        route = self._route_of(task_id)
        if msg.topic == STATUS_TOPIC:
            await self._route_status(msg, task_id, route, record)
        else:
            await self._apply_lifecycle(msg, task_id, route, record)
        return record

    async def _route_status(
        self, msg: Any, task_id: str, route: dict[str, Any], record: dict[str, Any]
    ) -> None:
        if self.routable(task_id, route, record.get("assignment_id") or ""):
            await self._forward(STATUS, route["pool"], msg.value, msg.partition, msg.offset)
            ROUTED.labels(topic=STATUS_TOPIC).inc()
            return
        held = route["held"]
        aid = record.get("assignment_id") or ""
        held.append([msg.partition, msg.offset, aid, base64.b64encode(msg.value).decode()])
        HELD.labels(outcome="held").inc()
        if len(held) > self.hold_max:
            part, off, _, value = held.pop(0)
            HELD.labels(outcome="dropped").inc()
            DEAD_LETTERED.labels(kind="UNROUTABLE").inc()
            gone = SimpleNamespace(topic=STATUS_TOPIC, partition=part, offset=off, key=task_id.encode(),
                                   value=base64.b64decode(value))  # fmt: skip
            await self.codec.dead_letter(
                gone, "UNROUTABLE", f"no assignment of task {task_id} matches this status"
            )
        self._set_route(task_id.encode(), route, msg.partition)

    async def _apply_lifecycle(
        self, msg: Any, task_id: str, route: dict[str, Any], record: dict[str, Any]
    ) -> None:
        """tasks.lifecycle.v1: where the task lives now, and which assignments it has had."""
        state, pool, attempt = record.get("state"), record.get("pool"), record.get("attempt") or 0
        if pool and (route["pool"] is None or (state == "ASSIGNED" and attempt >= route["attempt"])):
            route["pool"] = pool
        if state == "ASSIGNED":
            route["attempt"] = max(route["attempt"], attempt)
        if state in TERMINAL_STATES:
            route["done"] = True
        if state in _MAY_END:
            ended = to_ms(record["ts"])
            if route.get("ended_ts") != ended:
                route["ended_ts"] = ended
                self._ended_routes(msg.partition).append((ended, task_id.encode()))
        elif state:
            route.pop("ended_ts", None)  # a FAILED attempt that was requeued: not the end after all
        still: list[Any] = []
        for item in route["held"]:
            part, off, aid, value = item
            if self.routable(task_id, route, aid):
                await self._forward(STATUS, route["pool"], base64.b64decode(value), part, off)
                HELD.labels(outcome="released").inc()
                ROUTED.labels(topic=STATUS_TOPIC).inc()
            else:
                still.append(item)
        route["held"] = still
        self._set_route(task_id.encode(), route, msg.partition)  # always: a replay rewrites what a crash lost

    # -- forgetting finished routes ---------------------------------------------------------------
    def _ended_routes(self, partition: int) -> deque[tuple[int, bytes]]:
        """The partition's finished routes, oldest first; rebuilt from the table after a (re)assignment."""
        index = self._ended.get(partition)
        if index is None:
            found = []
            for key, raw in glue.keys_of_partition(self.routes, partition):
                ended = orjson.loads(raw).get("ended_ts") if raw else None
                if ended is not None:
                    found.append((int(ended), key))
            index = self._ended[partition] = deque(sorted(found))
        return index

    def forget_ended(self, partition: int, event_ts: Any, arrival_ms: int, limit: int = 16) -> None:
        """Forget up to ``limit`` routes that ended ``route_ttl_ms`` before the partition's event time
        (never trusted further than ``max_future_skew_s`` past the record's arrival: one bogus timestamp
        must not forget every route)."""
        try:
            ts = min(to_ms(event_ts), arrival_ms + int(self.config.max_future_skew_s * 1000))
        except TypeError:
            return
        now = max(self._clock.get(partition, 0), ts)
        self._clock[partition] = now
        index = self._ended_routes(partition)
        store = glue.store_dict(self.routes)
        while index and limit and index[0][0] < now - self.route_ttl_ms:
            ended, key = index.popleft()
            limit -= 1
            raw = store.get(key)
            if raw and orjson.loads(raw).get("ended_ts") == ended:  # not revived since
                del self.routes[key]
                glue.track_partition(self.routes, key, None)
                ROUTES_FORGOTTEN.inc()
