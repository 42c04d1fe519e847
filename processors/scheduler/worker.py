"""The scheduler worker: telemetry, requests and status -> pools -> ``Scheduler`` -> nodes, assignments,
lifecycle. Run with ``carnival worker scheduler`` (several processes form one consumer group).

Supply and demand meet in one place: everything is repartitioned by pool (region) into the internal
topic ``carnival-scheduler-bypool`` (key = pool, ``settings.topic_partitions`` partitions), read by ONE
agent that keeps an in-memory ``Scheduler`` per partition of that topic.

Agents (all concurrency 1):

* telemetry router   fleet.telemetry.v1 (key vin) -> bypool, key = region: NOT a faust agent but a
  confluent-kafka thread (``wiring_router.TelemetryRouter``, its own consumer group), consume -> produce
  -> flush -> commit. Reads the region without a full Avro decode when the writer schema allows it;
  undecodable records go to deadletter.v1.
* ``route_tasks``      tasks.requests.v1, tasks.status.v1, tasks.lifecycle.v1 (all keyed by task_id, so
  co-partitioned) with table ``routes`` (task_id -> pool, latest attempt, held statuses):
  a request goes to ``pool_for_request``; a lifecycle record (our own output) tells which pool holds
  the task and which assignment attempts exist; a status goes to that pool once its assignment_id is
  one of the task's attempts (or the task is finished), and is held in the table until then.
* ``schedule``         bypool -> ``Scheduler`` of the event's partition -> outputs. Batches of events:
  decide (pure, in memory), produce every output, apply the batch's state changes to table ``state``
  and queue their changelog records (journal first, see ``wiring_state``) to ``_StateWriter``, which
  produces them once the outputs are acknowledged. Outputs and changelog go through one confluent-kafka
  producer (``BatchProducer``). faust acks the events when the body returns and commits their offsets
  only after its producer flush, which is chained to settle every queued state write.
* timer ``tick``       every ``tick_s``, a tick record (wall-clock ms) to each bypool partition this worker
  owns: leases, claim timeouts, deadlines and spills run in the owning agent, in stream order, and a
  replay after a crash sees the same ticks. A tick runs at event time (``wiring_state.TickClock``): the
  newest record's event time plus the wall time since that record arrived, never the wall clock itself,
  so a simulated or replayed past keeps its own clock.

Tables: ``state`` (changelog ``carnival-scheduler-state-changelog``) holds node and task dicts under
``<partition>/n/<vin>`` and ``<partition>/t/<task_id>``; written with an explicit changelog partition =
the bypool partition, so a partition's scheduler is restored from exactly its own changelog partition.
``routes`` (changelog ``carnival-scheduler-routes-changelog``) is written in ``route_tasks``' stream
context. Both use faust's in-memory store: a worker always restores from the changelog, which is
exactly what was durable when the input offsets were committed. (A RocksDB store can hold writes
whose changelog records a SIGKILL lost, so after a restart its state would be ahead of the changelog
that another worker restores from after a rebalance: two different pasts, and a task assigned twice.)

Partition assignment: faust revokes all partitions on a rebalance after waiting for in-flight batches
(their state writes are settled by the revoke's commit and by the revoke handler). The revoke signal
drops every in-memory ``Scheduler``; the next event of a partition rebuilds it with
``Scheduler.from_parts`` from the table, which faust has recovered by then (streams resume only after
recovery completes). ``local_pools`` of a partition's scheduler are the configured pools that hash to
it, so any-region tasks hand off to other partitions through the bypool topic.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import time
from collections import Counter, defaultdict, deque
from types import SimpleNamespace
from typing import Any, NamedTuple

import faust
import orjson
import structlog

import schemas
from core.settings import get_settings
from processors.app import create_app, declare_internal_topics
from processors.codec import AgentCodec
from processors.scheduler._time import to_ms
from processors.scheduler.config import SchedulerConfig
from processors.scheduler.exceptions import InvalidRecord
from processors.scheduler.matching import pool_for_request
from processors.scheduler.records import HANDOFF as HANDOFF_TOPIC
from processors.scheduler.records import LIFECYCLE_TOPIC, Out
from processors.scheduler.tasks import assignment_id_for
from processors.scheduler.wiring_router import BatchProducer, TelemetryRouter
from processors.scheduler.wiring_runtime import (
    BATCH_SECONDS,
    BATCH_SIZE,
    BYPOOL_TOPIC,
    DEAD_LETTERED,
    DECISIONS,
    EVENTS,
    HANDOFF,
    HELD,
    IDLE,
    OUTPUTS,
    PROCESSOR,
    QUEUED,
    REBUILDS,
    REQUEST,
    REQUESTS_TOPIC,
    ROUTED,
    ROUTES_FORGOTTEN,
    STATUS,
    STATUS_TOPIC,
    TELEMETRY,
    TELEMETRY_BATCH,
    TELEMETRY_TOPIC,
    TICK,
    Envelope,
    config_from_env,
    knobs_from_env,
    local_pools_of,
    pack,
    pack_tick,
    peek_region,
    tick_ms,
    unpack,
    unpack_batch,
)
from processors.scheduler.wiring_state import PartitionState
from streams.deadletter import PROCESSING
from streams.exceptions import SerializationError
from streams.serde import SINGLE_OBJECT_MAGIC, AvroSerde
from streams.topics import DEADLETTER_TOPIC

log = structlog.get_logger(__name__)

TERMINAL_STATES = frozenset({"COMPLETED", "EXPIRED", "REJECTED"})
_CHANGELOG_CONFIG = {
    # Keep the changelogs near one record per key so restore time follows the state size.
    "segment.ms": str(10 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.2",
    "delete.retention.ms": str(24 * 3600 * 1000),
}

settings = get_settings()
config = config_from_env()
knobs = knobs_from_env()
PARTITIONS = settings.topic_partitions

app = create_app(
    PROCESSOR,
    settings,
    # A SIGKILLed worker keeps its partitions until its session times out: 10 s, not faust's 60 s.
    broker_session_timeout=knobs.session_timeout_s,
    broker_heartbeat_interval=knobs.session_timeout_s / 4,
    # Every event is produced twice (pool topic, changelog): batch the producer's requests (one per
    # record costs a syscall and a broker round trip each) at the price of a few ms per hop.
    producer_linger=knobs.linger_s,
    producer_max_batch_size=256 * 1024,
)
codec = AgentCodec(app, settings, PROCESSOR)
serde = AvroSerde(codec.serde.registry, raw_timestamps=True)  # epoch-ms ints, as the scheduler wants

task_topics = app.topic(
    REQUESTS_TOPIC, STATUS_TOPIC, LIFECYCLE_TOPIC,
    key_type=bytes, value_type=bytes,
)  # fmt: skip
bypool_topic = app.topic(
    BYPOOL_TOPIC, partitions=PARTITIONS, internal=True,
    key_type=bytes, value_type=bytes,
)  # fmt: skip
# (A bare "memory://" is a falsy yarl URL, which faust would swap for the app's RocksDB default.)
state_table = app.Table(
    "state", default=None, key_type=bytes, value_type=bytes,
    partitions=PARTITIONS, store="memory://scheduler", extra_topic_configs=_CHANGELOG_CONFIG,
    help="<partition>/n/<vin>, <partition>/t/<task_id>, journal: the pool schedulers' state",
)  # fmt: skip
STATE_CHANGELOG = f"{app.conf.id}-state-changelog"  # faust's name for table ``state``'s changelog
routes = app.Table(
    "routes", default=None, key_type=bytes, value_type=bytes,
    partitions=PARTITIONS, store="memory://scheduler", extra_topic_configs=_CHANGELOG_CONFIG,
    help="task_id -> pool, latest attempt, held status reports",
)  # fmt: skip


_faust_first_start = app.on_first_start


async def _on_first_start() -> None:
    # Before the consumer joins: on a fresh cluster faust's first assignment would miss a pool topic it
    # creates while subscribing (nothing triggers another rebalance for minutes), and its metadata
    # snapshot could hold a changelog with 0 partitions (``declare_internal_topics``).
    await asyncio.to_thread(declare_internal_topics, settings, app, (BYPOOL_TOPIC,))
    _chain_producer_flush()
    await _faust_first_start()


def _chain_producer_flush() -> None:
    """faust flushes its producer before it commits input offsets (and before ``schedule`` returns
    from a batch with hand-offs or dead letters); make that flush wait for ``_out()`` too, so no input
    offset is committed before the state records and outputs of its batch are acknowledged."""
    producer = app.producer
    faust_flush = producer.flush

    async def _flush_all() -> None:
        await faust_flush()
        await _settle_state_writes()

    producer.flush = _flush_all  # type: ignore[method-assign]


app.on_first_start = _on_first_start  # type: ignore[method-assign]


# Writer schemas of telemetry whose first fields are vin, ts, hw, region: peek the region.
_PEEKABLE = {
    SINGLE_OBJECT_MAGIC + sv.fingerprint_bytes
    for sv in schemas.history(TELEMETRY_TOPIC)
    if [f["name"] for f in sv.raw["fields"][:4]] == ["vin", "ts", "hw", "region"]
}

# Partition of the bypool topic -> its scheduler. Only the ``schedule`` agent touches it (the
# revoke signal clears it while no batch is in flight).
states: dict[int, PartitionState] = {}


# ------------------------------------------------------------------------------------------ routing
def _region(value: bytes) -> str:
    if value[:10] in _PEEKABLE:
        try:
            return peek_region(value[10:])
        except (IndexError, UnicodeDecodeError):
            pass  # the full decode below names the problem
    return str(serde.decode(TELEMETRY_TOPIC, value)["region"] or "")


def _start_router() -> TelemetryRouter:
    router = TelemetryRouter(
        settings, _region, serde.encode, session_timeout_s=knobs.session_timeout_s,
        batch_max=knobs.route_batch_max, pack_max=knobs.route_pack_max, linger_ms=knobs.route_linger_ms,
        processor=PROCESSOR,
    )  # fmt: skip
    router.start()
    return router


_router: TelemetryRouter | None = None


@app.task
async def _run_router() -> None:
    """The telemetry route runs in a thread (``wiring_router``); stop the worker if it dies."""
    global _router
    _router = _start_router()
    while not app.should_stop:
        await asyncio.sleep(0.5)
        if not _router.is_alive() and not _router.stopping.is_set():
            log.error("scheduler_router_died", error=repr(_router.failed))
            await app.crash(RuntimeError(f"telemetry router died: {_router.failed!r}"))
            return


@app.on_before_shutdown.connect
async def _stop_router(sender: Any, **kwargs: Any) -> None:
    if _router is not None:
        await asyncio.to_thread(_router.stop)


def _route_of(task_id: str) -> dict[str, Any]:
    raw = routes.get(task_id.encode())
    return orjson.loads(raw) if raw else {"pool": None, "attempt": 0, "done": False, "held": []}


def _routable(task_id: str, route: dict[str, Any], aid: str) -> bool:
    if route["pool"] is None:
        return False
    if route["done"]:
        return True
    return any(assignment_id_for(task_id, a) == aid for a in range(route["attempt"], 0, -1))


async def _forward(kind: bytes, pool: str, value: bytes, partition: int, offset: int) -> None:
    await bypool_topic.send(key=pool.encode(), value=pack(kind, value, partition, offset))


async def _route_task_event(event: faust.EventT) -> dict[str, Any] | None:
    """Route one request/status/lifecycle record; returns the decoded record (None if dead-lettered)."""
    msg = event.message
    record = await codec.decode(event)
    if record is None:
        DEAD_LETTERED.labels(kind="DECODE").inc()
        return record
    task_id = record.get("task_id")
    if not task_id:
        await codec.dead_letter(msg, "VALIDATION", "record has no task_id")
        return record
    if msg.topic == REQUESTS_TOPIC:
        await _forward(REQUEST, pool_for_request(record, config), msg.value, msg.partition, msg.offset)
        ROUTED.labels(topic=REQUESTS_TOPIC).inc()
        return record
    route = _route_of(task_id)
    if msg.topic == STATUS_TOPIC:
        if _routable(task_id, route, record.get("assignment_id") or ""):
            await _forward(STATUS, route["pool"], msg.value, msg.partition, msg.offset)
            ROUTED.labels(topic=STATUS_TOPIC).inc()
            return record
        held = route["held"]
        held.append(
            [
                msg.partition,
                msg.offset,
                record.get("assignment_id") or "",
                base64.b64encode(msg.value).decode(),
            ]
        )
        HELD.labels(outcome="held").inc()
        if len(held) > knobs.hold_max:
            part, off, _, value = held.pop(0)
            HELD.labels(outcome="dropped").inc()
            DEAD_LETTERED.labels(kind="UNROUTABLE").inc()
            gone = SimpleNamespace(topic=STATUS_TOPIC, partition=part, offset=off, key=task_id.encode(),
                                   value=base64.b64decode(value))  # fmt: skip
            await codec.dead_letter(
                gone, "UNROUTABLE", f"no assignment of task {task_id} matches this status"
            )
        _set_route(task_id.encode(), route, msg.partition)
        return record
    # tasks.lifecycle.v1: where the task lives now, and which assignments it has had.
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
            _ended_routes(msg.partition).append((ended, task_id.encode()))
    elif state:
        route.pop("ended_ts", None)  # a FAILED attempt that was requeued: not the end after all
    still: list[Any] = []
    for item in route["held"]:
        part, off, aid, value = item
        if _routable(task_id, route, aid):
            await _forward(STATUS, route["pool"], base64.b64decode(value), part, off)
            HELD.labels(outcome="released").inc()
            ROUTED.labels(topic=STATUS_TOPIC).inc()
        else:
            still.append(item)
    route["held"] = still
    _set_route(task_id.encode(), route, msg.partition)  # always: a replay rewrites what a crash lost


# Routes of finished tasks are forgotten ``ROUTE_TTL_MS`` (event time) after their last lifecycle record,
# in the stream context of a later event of the same partition (faust writes the tombstone to that
# changelog partition), a few per event. They outlive the scheduler's task tombstones, so a late status
# still reaches the pool that knows the task was finished. A final FAILED is followed by nothing, a
# retried one by REQUEUED at once, so FAILED with nothing after it for the TTL is an end too.
_MAY_END = TERMINAL_STATES | {"FAILED"}
ROUTE_TTL_MS = int((knobs.route_ttl_s or config.tombstone_ttl_s + 3600) * 1000)
_ended: dict[int, deque[tuple[int, bytes]]] = {}  # source partition -> (ended_ts, key), oldest first
_route_clock: dict[int, int] = {}  # source partition -> newest event time seen by route_tasks


def _set_route(key: bytes, route: dict[str, Any], partition: int) -> None:
    routes[key] = orjson.dumps(route)
    routes.data._key_partition[key] = partition  # faust's memory store tracks it only for restored keys


def _ended_routes(partition: int) -> deque[tuple[int, bytes]]:
    """The partition's finished routes, oldest first; rebuilt from the table after a (re)assignment."""
    index = _ended.get(partition)
    if index is None:
        store = routes.data
        found = []
        for key, part in list(store._key_partition.items()):
            raw = store.data.get(key) if part == partition else None
            ended = orjson.loads(raw).get("ended_ts") if raw else None
            if ended is not None:
                found.append((int(ended), key))
        index = _ended[partition] = deque(sorted(found))
    return index


def _forget_ended_routes(partition: int, event_ts: Any, arrival_ms: int, limit: int = 16) -> None:
    """Forget up to ``limit`` routes that ended ``ROUTE_TTL_MS`` before the partition's event time
    (never trusted further than ``max_future_skew_s`` past the record's arrival: one bogus timestamp
    must not forget every route)."""
    try:
        ts = min(to_ms(event_ts), arrival_ms + int(config.max_future_skew_s * 1000))
    except TypeError:
        return
    now = max(_route_clock.get(partition, 0), ts)
    _route_clock[partition] = now
    index = _ended_routes(partition)
    while index and limit and index[0][0] < now - ROUTE_TTL_MS:
        ended, key = index.popleft()
        limit -= 1
        raw = routes.data.data.get(key)
        if raw and orjson.loads(raw).get("ended_ts") == ended:  # not revived since
            del routes[key]
            routes.data._key_partition.pop(key, None)
            ROUTES_FORGOTTEN.inc()


@app.agent(task_topics, concurrency=1)
async def route_tasks(stream: faust.StreamT) -> None:
    async for event in stream.events():
        try:
            record = await _route_task_event(event)
            if record is not None and record.get("ts") is not None:
                msg = event.message
                _forget_ended_routes(msg.partition, record["ts"], int(msg.timestamp * 1000))
        except (KeyError, TypeError, ValueError) as exc:
            DEAD_LETTERED.labels(kind=PROCESSING).inc()
            await codec.processing_failed(event, exc)


# --------------------------------------------------------------------------------------- scheduling
def _config_for(partition: int) -> SchedulerConfig:
    return dataclasses.replace(config, local_pools=local_pools_of(config, partition, PARTITIONS))


def _store() -> Any:
    return state_table.data  # faust's in-memory store: ``.data`` is its dict, bytes -> bytes


def _rebuild(partition: int) -> PartitionState:
    started = time.perf_counter()
    state, restored = PartitionState.rebuild(partition, list(_store().data.items()), _config_for(partition))
    states[partition] = state
    REBUILDS.inc()
    log.info("scheduler_partition_rebuilt", partition=partition, nodes=len(restored.nodes),
             tasks=len(restored.tasks), clock=restored.clock, journal_applied=restored.journal_applied,
             ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip
    return state


_batch_producer: BatchProducer | None = None


def _out() -> BatchProducer:
    global _batch_producer
    if _batch_producer is None:
        _batch_producer = BatchProducer(settings, linger_ms=knobs.linger_s * 1000)
    return _batch_producer


def _track_key(partition: int, key: bytes, value: bytes | None) -> None:
    """faust's memory store maps keys to partitions, to drop them when a partition goes elsewhere."""
    if value is None:
        _store()._key_partition.pop(key, None)
    else:
        _store()._key_partition[key] = partition


def _dispatch(state: PartitionState, env: Envelope, pool: str, arrival_ms: int) -> list[Out]:
    sched = state.scheduler
    kind = env.kind
    if kind == TELEMETRY:
        return sched.on_telemetry(serde.decode(TELEMETRY_TOPIC, env.payload), arrival_ms=arrival_ms)
    if kind == TICK:
        return sched.on_tick(state.tick_time(tick_ms(env.payload)))
    if kind == REQUEST:
        return sched.on_request(serde.decode(REQUESTS_TOPIC, env.payload), pool=pool)
    if kind == STATUS:
        return sched.on_status(serde.decode(STATUS_TOPIC, env.payload))
    if kind == HANDOFF:
        return sched.on_handoff(orjson.loads(env.payload))
    raise InvalidRecord("unknown_kind", f"unknown pool record kind {kind!r}")


_SOURCE_TOPIC = {TELEMETRY: TELEMETRY_TOPIC, REQUEST: REQUESTS_TOPIC, STATUS: STATUS_TOPIC}
_KIND_LABEL = {TELEMETRY: "telemetry", REQUEST: "request", STATUS: "status", TICK: "tick", HANDOFF: "handoff"}


def _as_source(event: faust.EventT, env: Envelope | None) -> Any:
    """What a dead letter should name: the input record that was routed here, where we know it."""
    msg = event.message
    if env is None or env.kind not in _SOURCE_TOPIC:
        return msg
    return SimpleNamespace(topic=_SOURCE_TOPIC[env.kind], partition=env.source_partition,
                           offset=env.source_offset, key=msg.key, value=env.payload)  # fmt: skip


class _Input(NamedTuple):
    """One scheduler input of a batch, with what its pool-topic record says once for all it carries."""

    event: faust.EventT
    env: Envelope | None  # None: the pool record was undecodable (``error``)
    error: str | None
    pool: str  # the record key
    arrival_ms: int  # the record's Kafka timestamp


def _expand(events: list[faust.EventT]) -> list[_Input]:
    """One input per scheduler record: telemetry packs (``TELEMETRY_BATCH``) are opened."""
    items: list[_Input] = []
    for event in events:
        msg = event.message
        pool = msg.key.decode() if isinstance(msg.key, bytes) else str(msg.key or "")
        arrival_ms = int(msg.timestamp * 1000)
        try:
            env = unpack(msg.value)
            if env.kind == TELEMETRY_BATCH:
                items.extend(_Input(event, sub, None, pool, arrival_ms) for sub in unpack_batch(env.payload))
                continue
        except ValueError as exc:
            items.append(_Input(event, None, str(exc), pool, arrival_ms))
            continue
        items.append(_Input(event, env, None, pool, arrival_ms))
    return items


def _run_partition(
    partition: int, events: list[faust.EventT]
) -> tuple[list[Out], list[tuple[Any, str, str]]]:
    """Feed one partition's events to its scheduler. A record that breaks the scheduler (a bug) is
    dead-lettered and the partition is rebuilt from the table and re-run without it, so the
    half-applied record leaves no trace (decisions are deterministic: the re-run repeats the rest)."""
    broken: dict[int, Exception] = {}
    items = _expand(events)
    while True:
        state = states.get(partition) or _rebuild(partition)
        outs: list[Out] = []
        dead: list[tuple[Any, str, str]] = []
        results: Counter[tuple[str, str]] = Counter()
        for i, (event, env, error, pool, arrival_ms) in enumerate(items):
            if env is None:
                dead.append((event.message, "DECODE", error or "undecodable pool record"))
                results[("unknown", "invalid")] += 1
                continue
            label = _KIND_LABEL.get(env.kind, "unknown")
            if i in broken:
                exc = broken[i]
                dead.append((_as_source(event, env), PROCESSING, f"{type(exc).__name__}: {exc}"))
                results[(label, "failed")] += 1
                continue
            try:
                outs.extend(_dispatch(state, env, pool, arrival_ms))
                if env.kind != TICK:
                    state.observe_record(arrival_ms)
                results[(label, "ok")] += 1
            except (InvalidRecord, SerializationError) as exc:
                dead.append((_as_source(event, env), exc.kind, str(exc)))
                results[(label, "invalid")] += 1
            except Exception as exc:
                log.exception("scheduler_record_failed", partition=partition, index=i, kind=label)
                broken[i] = exc
                states.pop(partition, None)
                break
        else:
            for (kind, result), n in results.items():
                EVENTS.labels(kind=kind, result=result).inc(n)
            return outs, dead


SLOW_BATCH_S = 0.05
MAX_PENDING_WRITES = 64  # batches whose state write may wait for their outputs' acks (backpressure)


class _StateWriter:
    """Writes each batch's state records once the batch's outputs are acknowledged, in batch order,
    off the agent's path. One flush covers every batch queued before it (their outputs were produced
    before they were queued), so a slow broker costs one round trip per wake-up, not per batch."""

    def __init__(self) -> None:
        self.queue: list[tuple[bool, list[tuple[int, bytes, bytes | None]], asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last: asyncio.Future[None] | None = None
        self.failed: BaseException | None = None

    def put(self, wait_outputs: bool, writes: list[tuple[int, bytes, bytes | None]]) -> None:
        if self.failed is not None:
            raise RuntimeError("a state write failed") from self.failed
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((wait_outputs, writes, done))
        self.last = done
        self.wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        producer = _out()
        while True:
            await self.wake.wait()
            self.wake.clear()
            items, self.queue = self.queue, []
            try:
                if any(wait for wait, _, _ in items):
                    await asyncio.to_thread(producer.flush)  # outputs durable before their state
                for _, writes, _ in items:
                    for partition, key, value in writes:
                        producer.produce(STATE_CHANGELOG, key, value, partition)
            except BaseException as exc:
                self.failed = exc
                for _, _, done in items + self.queue:
                    if not done.done():
                        done.set_exception(exc)
                        done.exception()  # retrieved here; settle() re-raises
                raise
            for _, _, done in items:
                done.set_result(None)

    async def settle(self) -> None:
        """Every write queued so far produced and acknowledged (raises if one failed)."""
        if self.failed is not None:
            raise RuntimeError("a state write failed") from self.failed
        if self.last is not None:
            await asyncio.shield(self.last)
        await asyncio.to_thread(_out().flush)


_writer: _StateWriter | None = None


def _state_writer() -> _StateWriter:
    global _writer
    if _writer is None:
        _writer = _StateWriter()
    return _writer


async def _settle_state_writes() -> None:
    await _state_writer().settle()


async def _schedule_batch(events: list[faust.EventT]) -> None:
    writer = _state_writer()
    started = time.perf_counter()
    by_partition: dict[int, list[faust.EventT]] = defaultdict(list)
    for event in events:
        by_partition[event.message.partition].append(event)
    try:
        outs: list[Out] = []
        dead: list[tuple[Any, str, str]] = []
        for partition, evs in by_partition.items():
            o, d = _run_partition(partition, evs)
            outs.extend(o)
            dead.extend(d)
        emitted: Counter[str] = Counter()
        out_producer, encode = _out(), codec.serde.encode
        via_faust = bool(dead)
        for out in outs:
            if out.topic == HANDOFF_TOPIC:
                await bypool_topic.send(key=out.key.encode(), value=pack(HANDOFF, orjson.dumps(out.value)))
                via_faust = True
            else:
                out_producer.produce(out.topic, out.key.encode(), encode(out.topic, out.value))
            emitted[out.topic] += 1
        for source, kind, error in dead:
            DEAD_LETTERED.labels(kind=kind).inc()
            await codec.dead_letter(source, kind, error)
        t_run = time.perf_counter()
        if via_faust:  # (rare) hand-offs and dead letters went through faust's producer: wait here
            await app.producer.flush()  # (chained: settles ``out_producer`` and earlier state writes)
        t_flushed = time.perf_counter()
        writes: list[tuple[int, bytes, bytes | None]] = []

        def _record(partition: int, key: bytes, value: bytes | None) -> None:
            _track_key(partition, key, value)
            writes.append((partition, key, value))

        for partition in by_partition:
            state = states[partition]
            state.persist(_store().data, _record)  # the table now; the changelog once outputs are acked
            for what, n in state.counter_deltas():
                DECISIONS.labels(what=what).inc(n)
        t_persisted = time.perf_counter()
        if writes or (outs and not via_faust):
            # Not awaited: the next batch runs while this one's outputs travel. Its events are acked when
            # this returns, but faust commits their offsets only after its producer flush, which settles
            # every queued state write first (``_flush_all``); a crash before that replays the batch.
            writer.put(bool(outs) and not via_faust, writes)
        if len(writer.queue) > MAX_PENDING_WRITES:
            await writer.settle()  # the broker is behind: stop running ahead of it
    except BaseException:
        for partition in by_partition:  # memory is ahead of what is durable: restore from the table
            states.pop(partition, None)
        raise
    for topic, n in emitted.items():
        OUTPUTS.labels(topic=topic).inc(n)
    BATCH_SIZE.observe(len(events))
    ended = time.perf_counter()
    BATCH_SECONDS.observe(ended - started)
    if ended - started > SLOW_BATCH_S:
        log.info("scheduler_slow_batch", events=len(events), outputs=len(outs),
                 ms=round((ended - started) * 1000, 1), run_ms=round((t_run - started) * 1000, 1),
                 faust_flush_ms=round((t_flushed - t_run) * 1000, 1), writes=len(writes),
                 persist_ms=round((t_persisted - t_flushed) * 1000, 1),
                 pending_writes=len(writer.queue))  # fmt: skip


@app.agent(bypool_topic, concurrency=1)
async def schedule(stream: faust.StreamT) -> None:
    # take_events acks a batch's events only after this body returns, i.e. after they are persisted.
    async for events in stream.take_events(knobs.batch_max, knobs.batch_within_s):
        await _schedule_batch(list(events))


# ---------------------------------------------------------------------------------- time, rebalance
def _owned_partitions() -> list[int]:
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == BYPOOL_TOPIC)


_gc_state = {"frozen_at": time.monotonic(), "full_at": time.monotonic()}


def _gc_maintenance() -> None:
    """Keep the cyclic GC off the scheduler state. 20k nodes are millions of long-lived objects, and a
    full (generation 2) collection walks all of them: 100+ ms on this machine, straight into the match
    latency tail. So the surviving heap is frozen (``gc.freeze``: out of the collector's view) every
    ``gc_freeze_s`` after a cheap young collection; a full collection of everything runs once per
    ``gc_full_s`` to reclaim cycles that died while frozen (rare: state is acyclic dicts and lists)."""
    now = time.monotonic()
    if knobs.gc_full_s and now - _gc_state["full_at"] >= knobs.gc_full_s:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        _gc_state["full_at"] = _gc_state["frozen_at"] = now
    elif knobs.gc_freeze_s and now - _gc_state["frozen_at"] >= knobs.gc_freeze_s:
        gc.collect(1)
        gc.freeze()
        _gc_state["frozen_at"] = now


@app.timer(interval=knobs.tick_s)
async def tick() -> None:
    _gc_maintenance()
    if app.rebalancing or not app.tables.recovery.completed.is_set():
        return
    now = time.time_ns() // 1_000_000
    for partition in _owned_partitions():
        await bypool_topic.send(key=None, value=pack_tick(now), partition=partition)
        state = states.get(partition)
        if state is not None:
            pools = state.scheduler._pools  # read-only peek for the gauges
            QUEUED.labels(partition=str(partition)).set(sum(len(p.queue) for p in pools.values()))
            IDLE.labels(partition=str(partition)).set(sum(p.free_count for p in pools.values()))


@app.on_partitions_revoked.connect
async def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
    # faust has waited for in-flight batches; their state writes are settled by the commit faust makes
    # on revoke (its producer flush is chained to ours) and, to be sure, here. Rebuild from the table later.
    await _settle_state_writes()
    dropped = sorted(states)
    states.clear()
    _ended.clear()  # rebuilt from the table for the partitions this worker gets next
    log.info("scheduler_partitions_revoked", dropped=dropped)


@app.on_partitions_assigned.connect
async def _on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
    mine = sorted(tp.partition for tp in assigned if tp.topic == BYPOOL_TOPIC)
    log.info("scheduler_partitions_assigned", partitions=mine, topic=BYPOOL_TOPIC)


log.info("scheduler_worker_configured", partitions=PARTITIONS, knobs=dataclasses.asdict(knobs),
         ranking=config.ranking, pools=list(config.pools), lease_s=config.lease_s,
         claim_timeout_s=config.claim_timeout_s, deadletter_topic=DEADLETTER_TOPIC)  # fmt: skip
