"""The ``schedule`` side of the scheduler: the pool-partitioned topic -> the in-memory ``Scheduler`` of
each partition -> nodes, assignments, lifecycle, made durable by the runtime's checkpoint protocol
(``processors.runtime.checkpoint``) under its error policy (``processors.runtime.policy``).

Per batch (``process``): decide (pure, in memory, ``run_partition``), produce every output (a
confluent-kafka ``BatchProducer``; hand-offs to other pools and dead letters through faust), then write
each touched partition's changes to table ``state`` (journal first, see ``wiring_state``) and keep their
changelog records for the checkpoint. The checkpoint sends those records once every output is
acknowledged, and acks the batch's events once Kafka has them: faust commits acked offsets only.

A record that breaks its scheduler (a bug) is dead-lettered and its partition rebuilt from the table and
re-run without it (``run_partition``). A batch that fails outside that (say, an output that cannot be
encoded) is retried, then run record by record, and a record that keeps failing is quarantined
(``BatchRunner``). The table is written last in a batch: if that fails, memory and table may disagree,
so the worker exits (``CheckpointFailed``) and restores from the changelog.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any, NamedTuple

import orjson
import structlog

from processors.runtime import (
    PROCESSING,
    QUARANTINED,
    BatchRunner,
    Checkpointer,
    CheckpointFailed,
    RetryPolicy,
    processing_error,
)
from processors.runtime import faust_glue as glue
from processors.scheduler.config import SchedulerConfig
from processors.scheduler.exceptions import InvalidRecord
from processors.scheduler.records import HANDOFF as HANDOFF_TOPIC
from processors.scheduler.records import Out
from processors.scheduler.wiring_router import BatchProducer
from processors.scheduler.wiring_runtime import (
    BATCH_SECONDS,
    BATCH_SIZE,
    BYPOOL_TOPIC,
    DEAD_LETTERED,
    DECISIONS,
    EVENTS,
    HANDOFF,
    IDLE,
    MAP_ENTRIES,
    OUTPUTS,
    QUEUED,
    REBUILDS,
    REQUEST,
    SITE_CAPACITY,
    SITE_POWER,
    STATUS,
    TELEMETRY,
    TELEMETRY_BATCH,
    TICK,
    Envelope,
    WorkerKnobs,
    local_pools_of,
    pack,
    pack_tick,
    tick_ms,
    unpack,
    unpack_batch,
)
from processors.scheduler.wiring_state import PartitionState
from streams.bounds import oversized_error
from streams.deadletter import DECODE, OVERSIZED, TOMBSTONE
from streams.exceptions import SerializationError
from streams.serde import AvroSerde
from streams.topics import (
    REQUESTS_TOPIC,
    SITE_CAPACITY_TOPIC,
    SITE_POWER_STATE_TOPIC,
    STATUS_TOPIC,
    TELEMETRY_TOPIC,
)

log = structlog.get_logger(__name__)

SLOW_BATCH_S = 0.05
_SOURCE_TOPIC = {
    TELEMETRY: TELEMETRY_TOPIC,
    REQUEST: REQUESTS_TOPIC,
    STATUS: STATUS_TOPIC,
    SITE_CAPACITY: SITE_CAPACITY_TOPIC,
    SITE_POWER: SITE_POWER_STATE_TOPIC,
}
_KIND_LABEL = {TELEMETRY: "telemetry", REQUEST: "request", STATUS: "status", TICK: "tick", HANDOFF: "handoff",
               SITE_CAPACITY: "capacity", SITE_POWER: "power_state"}  # fmt: skip

Write = tuple[int, bytes, bytes | None]


class _Input(NamedTuple):
    """One scheduler input of a batch, with what its pool-topic record says once for all it carries."""

    event: Any
    env: Envelope | None  # None: the pool record was undecodable (``error``)
    error: str | None
    pool: str  # the record key
    arrival_ms: int  # the record's Kafka timestamp


def expand(events: Sequence[Any]) -> list[_Input]:
    """One input per scheduler record: telemetry packs (``TELEMETRY_BATCH``) are opened."""
    items: list[_Input] = []
    for event in events:
        msg = event.message
        pool = msg.key.decode(errors="replace") if isinstance(msg.key, bytes) else str(msg.key or "")
        arrival_ms = int(msg.timestamp * 1000)
        if msg.value is None:
            items.append(_Input(event, None, TOMBSTONE, pool, arrival_ms))
            continue
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


def as_source(event: Any, env: Envelope | None) -> Any:
    """What a dead letter should name: the input record that was routed here, where we know it."""
    msg = event.message
    if env is None or env.kind not in _SOURCE_TOPIC:
        return msg
    return SimpleNamespace(topic=_SOURCE_TOPIC[env.kind], partition=env.source_partition,
                           offset=env.source_offset, key=msg.key, value=env.payload)  # fmt: skip


class _Outputs:
    """Output link: the confluent producer of outputs, and faust's (hand-offs, dead letters)."""

    def __init__(self, scheduler: PoolScheduler) -> None:
        self.s = scheduler

    async def flush(self) -> None:
        await asyncio.to_thread(self.s.producer.flush)
        await glue.flush_producer(self.s.app)


class _StateRecords:
    """State link: the table is written per batch (``process``); a checkpoint sends the changelog records
    of every batch since the last one, in order, and waits for Kafka to have them all."""

    def __init__(self, scheduler: PoolScheduler) -> None:
        self.s = scheduler

    def prepare(self, dirty: dict[int, Any]) -> list[Write]:
        writes, self.s.unsent = self.s.unsent, []
        return writes

    async def send(self, writes: list[Write]) -> Sequence[Awaitable[Any]]:
        producer, topic = self.s.producer, self.s.state_changelog
        for partition, key, value in writes:
            producer.produce(topic, key, value, partition)
        return [asyncio.ensure_future(asyncio.to_thread(producer.flush))]


class _Inputs:
    def __init__(self) -> None:
        self.stream: Any = None

    async def ack(self, events: Sequence[Any]) -> None:
        await glue.ack(self.stream, events)


class PoolScheduler:
    """Everything the ``schedule`` agent and the tick timer do, given the app's parts."""

    def __init__(
        self,
        app: Any,
        state_table: Any,
        pool_topic: Any,
        codec: Any,
        serde: AvroSerde,
        config: SchedulerConfig,
        knobs: WorkerKnobs,
        producer: Callable[[], BatchProducer],
        *,
        partitions: int,
        state_changelog: str,
        checkpoint_s: float = 0.25,
        checkpoint_events: int = 20_000,
        max_unconfirmed: int = 8,
        retry: RetryPolicy | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.app, self.table, self.pool_topic = app, state_table, pool_topic
        self.codec, self.serde, self.config, self.knobs = codec, serde, config, knobs
        self._make_producer = producer
        self._producer: BatchProducer | None = None
        self.partitions, self.state_changelog = partitions, state_changelog
        self.states: dict[int, PartitionState] = {}  # partition of the pool topic -> its scheduler
        self.unsent: list[Write] = []  # changelog records of the table writes since the last checkpoint
        self._on_failed = on_failed
        self.inputs = _Inputs()
        self.checkpointer: Checkpointer[Any, int, list[Write]] = Checkpointer(
            _Outputs(self), _StateRecords(self), self.inputs,
            every_s=checkpoint_s, every_events=checkpoint_events, max_unconfirmed=max_unconfirmed,
            on_failed=on_failed,
        )  # fmt: skip
        self.runner: BatchRunner[Any] = BatchRunner(
            self.process, self.rewind, self.quarantine, retry or RetryPolicy(), processor="scheduler"
        )
        now = time.monotonic()
        self._gc = {"frozen_at": now, "full_at": now}

    @property
    def producer(self) -> BatchProducer:
        """Made on first use: importing the worker connects to nothing."""
        if self._producer is None:
            self._producer = self._make_producer()
        return self._producer

    # -- partitions -------------------------------------------------------------------------------
    def config_for(self, partition: int) -> SchedulerConfig:
        return dataclasses.replace(
            self.config, local_pools=local_pools_of(self.config, partition, self.partitions)
        )

    def rebuild(self, partition: int) -> PartitionState:
        started = time.perf_counter()
        items = list(glue.store_dict(self.table).items())
        state, restored = PartitionState.rebuild(partition, items, self.config_for(partition))
        self.states[partition] = state
        REBUILDS.inc()
        log.info("scheduler_partition_rebuilt", partition=partition, nodes=len(restored.nodes),
                 tasks=len(restored.tasks), clock=restored.clock, journal_applied=restored.journal_applied,
                 ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip
        return state

    async def on_revoked(self) -> None:
        """Before the partitions go: everything applied is made durable (a checkpoint, awaited), since
        the table in memory already holds it and the next owner restores from the changelog; two
        different pasts would decide differently (one assignment id, two cars). Then the in-memory
        schedulers are dropped and rebuilt from the table when a partition comes back."""
        dropped = sorted(self.states)
        try:
            await self.checkpointer.settle()
        except Exception as exc:
            if self._on_failed is None:
                raise
            self._on_failed(exc)
        async with self.checkpointer.applying:
            self.states.clear()
            self.checkpointer.reset()
            self.unsent = []
        log.info("scheduler_partitions_revoked", dropped=dropped)

    # -- batches ----------------------------------------------------------------------------------
    def dispatch(self, state: PartitionState, env: Envelope, pool: str, arrival_ms: int) -> list[Out]:
        sched, kind = state.scheduler, env.kind

        def decode(topic: str, payload: bytes) -> dict[str, Any]:
            record: dict[str, Any] = self.serde.decode(topic, payload)
            if (too_long := oversized_error(topic, record)) is not None:
                raise InvalidRecord(OVERSIZED, too_long)
            return record

        if kind == TELEMETRY:
            return sched.on_telemetry(decode(TELEMETRY_TOPIC, env.payload), arrival_ms=arrival_ms)
        if kind == TICK:
            return sched.on_tick(state.tick_time(tick_ms(env.payload)))
        if kind == REQUEST:
            return sched.on_request(decode(REQUESTS_TOPIC, env.payload), pool=pool, arrival_ms=arrival_ms)
        if kind == STATUS:
            return sched.on_status(decode(STATUS_TOPIC, env.payload), arrival_ms=arrival_ms)
        if kind == HANDOFF:
            return sched.on_handoff(orjson.loads(env.payload))
        if kind == SITE_CAPACITY:
            return sched.on_site_capacity(decode(SITE_CAPACITY_TOPIC, env.payload), arrival_ms=arrival_ms)
        if kind == SITE_POWER:
            return sched.on_site_power(decode(SITE_POWER_STATE_TOPIC, env.payload), arrival_ms=arrival_ms)
        raise InvalidRecord(DECODE, f"unknown pool record kind {kind!r}")

    def run_partition(
        self, partition: int, events: list[Any]
    ) -> tuple[list[Out], list[tuple[Any, str, str]]]:
        """Feed one partition's events to its scheduler. A record that breaks the scheduler (a bug) is
        dead-lettered and the partition is rebuilt from the table and re-run without it, so the
        half-applied record leaves no trace (decisions are deterministic: the re-run repeats the rest)."""
        broken: dict[int, Exception] = {}
        items = expand(events)
        while True:
            state = self.states.get(partition) or self.rebuild(partition)
            outs: list[Out] = []
            dead: list[tuple[Any, str, str]] = []
            results: Counter[tuple[str, str]] = Counter()
            for i, (event, env, error, pool, arrival_ms) in enumerate(items):
                if env is None and error == TOMBSTONE:
                    dead.append((event.message, TOMBSTONE, "a tombstone (null value) on the pool topic"))
                    results[("unknown", "invalid")] += 1
                    continue
                if env is None:
                    dead.append((event.message, DECODE, error or "undecodable pool record"))
                    results[("unknown", "invalid")] += 1
                    continue
                label = _KIND_LABEL.get(env.kind, "unknown")
                if i in broken:
                    dead.append((as_source(event, env), PROCESSING, processing_error(broken[i])))
                    results[(label, "failed")] += 1
                    continue
                try:
                    outs.extend(self.dispatch(state, env, pool, arrival_ms))
                    if env.kind != TICK:
                        state.observe_record(arrival_ms)
                    results[(label, "ok")] += 1
                except (InvalidRecord, SerializationError) as exc:
                    dead.append((as_source(event, env), exc.kind, str(exc)))
                    results[(label, "invalid")] += 1
                except Exception as exc:
                    log.exception("scheduler_record_failed", partition=partition, index=i, kind=label)
                    broken[i] = exc
                    self.states.pop(partition, None)
                    break
            else:
                for (kind, result), n in results.items():
                    EVENTS.labels(kind=kind, result=result).inc(n)
                return outs, dead

    async def process(self, events: Sequence[Any]) -> None:
        """One batch: decide, hand every output over, write the table; the checkpoint does the rest."""
        started = time.perf_counter()
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for event in events:
            by_partition[event.message.partition].append(event)
        cp = self.checkpointer
        async with cp.applying:
            outs: list[Out] = []
            dead: list[tuple[Any, str, str]] = []
            for partition, evs in by_partition.items():
                o, d = self.run_partition(partition, evs)
                outs.extend(o)
                dead.extend(d)
            emitted: Counter[str] = Counter()
            produce, encode = self.producer.produce, self.codec.serde.encode
            for out in outs:
                if out.topic == HANDOFF_TOPIC:
                    await glue.send(self.pool_topic, out.key.encode(), pack(HANDOFF, orjson.dumps(out.value)))
                else:
                    produce(out.topic, out.key.encode(), encode(out.topic, out.value))
                emitted[out.topic] += 1
            for source, kind, error in dead:
                DEAD_LETTERED.labels(kind=kind).inc()
                await self.codec.dead_letter(source, kind, error)
            t_run = time.perf_counter()
            writes = self._write_table(by_partition)
            cp.add(events, dict.fromkeys(by_partition, events[-1]), (), len(outs) + len(dead))
        for topic, n in emitted.items():
            OUTPUTS.labels(topic=topic).inc(n)
        BATCH_SIZE.observe(len(events))
        ended = time.perf_counter()
        BATCH_SECONDS.observe(ended - started)
        if ended - started > SLOW_BATCH_S:
            log.info("scheduler_slow_batch", events=len(events), outputs=len(outs),
                     ms=round((ended - started) * 1000, 1), run_ms=round((t_run - started) * 1000, 1),
                     writes=writes, persist_ms=round((ended - t_run) * 1000, 1))  # fmt: skip

    def _write_table(self, by_partition: dict[int, list[Any]]) -> int:
        """Persist every touched partition to the table and queue its changelog records. Last in a
        batch, and never retried: a failure half way leaves memory and table apart, so it is fatal."""
        store = glue.store_dict(self.table)
        before = len(self.unsent)

        def record(partition: int, key: bytes, value: bytes | None) -> None:
            glue.track_partition(self.table, key, None if value is None else partition)
            self.unsent.append((partition, key, value))

        try:
            for partition in by_partition:
                state = self.states[partition]
                state.persist(store, record)
                for what, n in state.counter_deltas():
                    DECISIONS.labels(what=what).inc(n)
        except Exception as exc:
            raise CheckpointFailed(f"scheduler state could not be written: {exc!r}") from exc
        return len(self.unsent) - before

    async def handle(self, events: Sequence[Any]) -> None:
        """One batch from the agent: the error policy around ``process``, then a checkpoint when due."""
        await self.runner.run(events)
        if self.checkpointer.due():
            await self.checkpointer.checkpoint()

    async def rewind(self, events: Sequence[Any]) -> None:
        """Undo a failed ``process``: its partitions are rebuilt from the table, which it did not reach."""
        async with self.checkpointer.applying:
            for partition in {event.message.partition for event in events}:
                self.states.pop(partition, None)

    async def quarantine(self, event: Any, reason: str) -> None:
        DEAD_LETTERED.labels(kind=QUARANTINED).inc()
        await self.codec.dead_letter(event.message, QUARANTINED, reason)
        async with self.checkpointer.applying:
            self.checkpointer.add([event], {}, (), 1)

    # -- time -------------------------------------------------------------------------------------
    async def tick(self) -> None:
        """A tick record (wall-clock ms) to each owned partition: leases, claim timeouts, deadlines and
        spills run in the owning agent, in stream order, at event time (``wiring_state.TickClock``)."""
        self._gc_maintenance()
        if glue.is_settling(self.app):
            return
        now = time.time_ns() // 1_000_000
        owned = sorted(tp.partition for tp in glue.assigned_actives(self.app) if tp.topic == BYPOOL_TOPIC)
        for partition in owned:
            await glue.send(self.pool_topic, None, pack_tick(now), partition)
            state = self.states.get(partition)
            if state is not None:
                pools = state.scheduler._pools  # read-only peek for the gauges
                QUEUED.labels(partition=str(partition)).set(sum(len(p.queue) for p in pools.values()))
                IDLE.labels(partition=str(partition)).set(sum(p.free_count for p in pools.values()))
                for name, size in state.scheduler.sizes().items():
                    MAP_ENTRIES.labels(map=name, partition=str(partition)).set(size)

    def _gc_maintenance(self) -> None:
        """Keep the cyclic GC off the scheduler state. 20k nodes are millions of long-lived objects, and a
        full (generation 2) collection walks all of them: 100+ ms on this machine, straight into the match
        latency tail. So the surviving heap is frozen (``gc.freeze``: out of the collector's view) every
        ``gc_freeze_s`` after a cheap young collection; a full collection of everything runs once per
        ``gc_full_s`` to reclaim cycles that died while frozen (rare: state is acyclic dicts and lists)."""
        now, knobs, marks = time.monotonic(), self.knobs, self._gc
        if knobs.gc_full_s and now - marks["full_at"] >= knobs.gc_full_s:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            marks["full_at"] = marks["frozen_at"] = now
        elif knobs.gc_freeze_s and now - marks["frozen_at"] >= knobs.gc_freeze_s:
            gc.collect(1)
            gc.freeze()
            marks["frozen_at"] = now
