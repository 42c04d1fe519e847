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

Guards, before a record has any effect (each dead-lettered with its reason): a tombstone (TOMBSTONE:
these topics are not compacted); a ``ts`` more than ``max_future_skew_s`` past the record's Kafka
timestamp (FUTURE_TIMESTAMP: it moves neither the partition's routing clock nor a route); a lifecycle
``attempt`` outside ``0..MAX_ATTEMPT`` (VALIDATION). Whether a status matches one of the task's
assignments looks at the last ``ATTEMPT_LOOKBACK`` attempts only, so its cost never depends on a field
value. Held statuses expire by event time (``held``).

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
from processors.scheduler.held import HeldIndex, expired_items, held_at, is_empty_route
from processors.scheduler.matching import pool_for_request
from processors.scheduler.records import LIFECYCLE_TOPIC
from processors.scheduler.tasks import MAX_ATTEMPT, MAX_REVOKED, assignment_id_for
from processors.scheduler.wiring_runtime import (
    DEAD_LETTERED,
    HELD,
    REQUEST,
    ROUTED,
    ROUTES_FORGOTTEN,
    STATUS,
    pack,
)
from streams.deadletter import EXPIRED, FUTURE_TIMESTAMP, TOMBSTONE, VALIDATION
from streams.event_time import future_skew_error
from streams.topics import REQUESTS_TOPIC, STATUS_TOPIC

log = structlog.get_logger(__name__)

TERMINAL_STATES = frozenset({"COMPLETED", "EXPIRED", "REJECTED"})
_MAY_END = TERMINAL_STATES | {"FAILED"}
TASK_TOPICS = (REQUESTS_TOPIC, STATUS_TOPIC, LIFECYCLE_TOPIC)
# Attempts back from the latest a status may belong to: the scheduler accepts the current assignment and a
# late COMPLETED of one of its last MAX_REVOKED revoked ones (failed attempts in between).
ATTEMPT_LOOKBACK = 2 * MAX_REVOKED + 8


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
        held_ttl_ms: int = 3_600_000,
    ) -> None:
        self.routes, self.pool_topic, self.codec, self.config = routes, pool_topic, codec, config
        self.hold_max = hold_max
        self.route_ttl_ms = route_ttl_ms
        self.held_ttl_ms = held_ttl_ms
        self._ended: dict[int, deque[tuple[int, bytes]]] = {}  # partition -> (ended_ts, key), oldest first
        self._held = HeldIndex()
        self._clock: dict[int, int] = {}  # source partition -> newest event time seen

    async def handle(self, event: Any) -> None:
        """One record, under the error policy: a record that breaks routing is dead-lettered."""
        try:
            record = await self.route(event)
            partition = event.message.partition
            if record is not None and partition in self._clock:
                await self.expire_held(partition, self._clock[partition])
                self.forget_ended(partition, self._clock[partition])
        except Exception as exc:
            log.exception("scheduler_route_failed", topic=event.message.topic)
            DEAD_LETTERED.labels(kind=PROCESSING).inc()
            await self.codec.dead_letter(event.message, PROCESSING, processing_error(exc))

    def revoked(self) -> None:
        self._ended.clear()  # rebuilt from the table for the partitions this worker gets next
        self._held.clear()

    def sizes(self) -> dict[str, int]:
        """Entries of the router's maps that grow with input (for the gauges)."""
        return {
            "routes": len(glue.store_dict(self.routes)),
            "routes_ended_index": sum(len(d) for d in self._ended.values()),
            "routes_held_index": self._held.size(),
            "route_clocks": len(self._clock),
        }

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
        latest = int(route["attempt"])
        return any(
            assignment_id_for(task_id, a) == aid for a in range(latest, max(latest - ATTEMPT_LOOKBACK, 0), -1)
        )

    async def _forward(self, kind: bytes, pool: str, value: bytes, partition: int, offset: int) -> None:
        await glue.send(self.pool_topic, pool.encode(), pack(kind, value, partition, offset))

    def _set_route(self, key: bytes, route: dict[str, Any], partition: int) -> None:
        self.routes[key] = orjson.dumps(route)
        glue.track_partition(self.routes, key, partition)  # tracked only for restored keys otherwise

    async def route(self, event: Any) -> dict[str, Any] | None:
        """Route one request/status/lifecycle record; returns the decoded record (None if dead-lettered)."""
        msg = event.message
        if msg.value is None:
            await self._reject(msg, TOMBSTONE, f"a tombstone (null value) on {msg.topic} (not compacted)")
            return None
        record: dict[str, Any] | None = await self.codec.decode(event)
        if record is None:
            DEAD_LETTERED.labels(kind="DECODE").inc()
            return record
        ts = to_ms(record["ts"])
        error = future_skew_error(ts, int(msg.timestamp * 1000), self.config.max_future_skew_s)
        if error is not None:
            await self._reject(msg, FUTURE_TIMESTAMP, f"{msg.topic}: {error}")
            return None
        self._clock[msg.partition] = max(self._clock.get(msg.partition, ts), ts)
        task_id = record.get("task_id")
        if not task_id:
            await self._reject(msg, VALIDATION, "record has no task_id")
            return record
        attempt = record.get("attempt")
        if msg.topic == LIFECYCLE_TOPIC and attempt is not None and not 0 <= attempt <= MAX_ATTEMPT:
            await self._reject(msg, VALIDATION, f"attempt {attempt} is outside 0..{MAX_ATTEMPT}")
            return None
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

    async def _reject(self, msg: Any, kind: str, error: str) -> None:
        DEAD_LETTERED.labels(kind=kind).inc()
        await self.codec.dead_letter(msg, kind, error)

    async def _route_status(
        self, msg: Any, task_id: str, route: dict[str, Any], record: dict[str, Any]
    ) -> None:
        if self.routable(task_id, route, record.get("assignment_id") or ""):
            await self._forward(STATUS, route["pool"], msg.value, msg.partition, msg.offset)
            ROUTED.labels(topic=STATUS_TOPIC).inc()
            return
        held = route["held"]
        aid = record.get("assignment_id") or ""
        now = self._clock[msg.partition]
        held.append([msg.partition, msg.offset, aid, base64.b64encode(msg.value).decode(), now])
        HELD.labels(outcome="held").inc()
        if len(held) == 1:
            self._held.add(msg.partition, now, task_id.encode())
        if len(held) > self.hold_max:
            part, off, _, value, *_ = held.pop(0)
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
            part, off, aid, value, *_ = item
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

    def forget_ended(self, partition: int, now: int, limit: int = 16) -> None:
        """Forget up to ``limit`` routes that ended ``route_ttl_ms`` before the partition's event time
        ``now`` (made only of records within ``max_future_skew_s`` of their arrival: one bogus timestamp
        cannot forget every route)."""
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

    # -- expiring held statuses -------------------------------------------------------------------
    async def expire_held(self, partition: int, now: int, limit: int = 16) -> None:
        """Dead-letter (EXPIRED) the statuses of up to ``limit`` routes held ``held_ttl_ms`` before the
        partition's event time ``now``; a route left with nothing is deleted."""
        if not self._held.known(partition):
            self._held.rebuild(partition, glue.keys_of_partition(self.routes, partition), now)
        cutoff = now - self.held_ttl_ms
        store = glue.store_dict(self.routes)
        for indexed_at, key in self._held.due(partition, cutoff, limit):
            raw = store.get(key)
            if not raw:
                continue
            route = orjson.loads(raw)
            gone, kept = expired_items(route, cutoff, indexed_at)
            if kept:
                self._held.add(partition, min(held_at(item, now) for item in kept), key)
            if not gone:
                continue
            task_id = key.decode(errors="replace")
            for part, off, aid, value, *_ in gone:
                HELD.labels(outcome="expired").inc()
                DEAD_LETTERED.labels(kind=EXPIRED).inc()
                src = SimpleNamespace(topic=STATUS_TOPIC, partition=part, offset=off, key=key,
                                      value=base64.b64decode(value))  # fmt: skip
                await self.codec.dead_letter(src, EXPIRED, (
                    f"status for assignment {aid} of task {task_id} held {self.held_ttl_ms // 1000} s of "
                    f"event time and no assignment matched it (pool {route['pool'] or 'unknown'}, "
                    f"latest attempt {route['attempt']})"))  # fmt: skip
            route["held"] = kept
            if is_empty_route(route):
                del self.routes[key]
                glue.track_partition(self.routes, key, None)
            else:
                self._set_route(key, route, partition)
