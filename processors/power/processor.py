"""The power processor: batches of ``power.events.v1`` -> site detectors -> incidents, alerts and site
power states (``sites.power_state.v1``, keyed by site_id), made durable by the runtime's checkpoint
protocol (``processors.runtime.checkpoint``) under its error policy (``processors.runtime.policy``).

Per batch (``process``), in stream order: screen every record (``_screen``: tombstones, undecodable
bytes, misrouted keys and events stamped beyond ``max_future_skew_s`` past their Kafka timestamp are
dead-lettered with their reason and never reach a detector), run the rest through their sites' detectors
(``run_batch``: an event that breaks a detector is dead-lettered and rewound there), and hand the
outputs and dead letters to the producer at once, without waiting (an alert leaves as soon as its rule
fired, never behind a checkpoint). The batch is then recorded with the checkpointer (its events, the
sites it touched, its outputs' delivery futures). A checkpoint runs beside the batches (its own task,
``_checkpoint_soon``), so writing states never holds up detection: it writes one state per dirty site
(its changelog record goes to the partition of the site's own last event, i.e. its input partition;
encoded copy-on-write, see ``_SiteStates``) and commits the events once Kafka has it all. Ticks
(``tick``) release held events and fire timers; what they change is persisted with the site's next
checkpoint after an event of it, and derived again from the stored state after a crash, with the same
incident ids.

The processor knows no Kafka client: it is handed a ``PowerIO`` (the worker's is
``processors.power.worker.KafkaPowerIO``, on plain confluent-kafka) and a store of site states.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import structlog

from core.metrics import RECORDS_CONSUMED, RECORDS_REJECTED
from processors.power.events import Output
from processors.power.runtime import (
    BATCH_EVENTS,
    BATCH_SECONDS,
    CHECKPOINT_SECONDS,
    DEAD_LETTERED,
    DETECTION_LATENCY,
    EVENTS_PROCESSED,
    LATE,
    STATE_WRITES,
    DetectorCache,
    Emission,
    admission_error,
    encode_state,
    rewind,
    route,
    run_batch,
    set_memory_gauges,
)
from processors.runtime import QUARANTINED, BatchRunner, Checkpointer, RetryPolicy
from streams.deadletter import DECODE, TOMBSTONE, deadletter_record
from streams.event_time import DEFAULT_MAX_FUTURE_SKEW_S
from streams.exceptions import SerializationError
from streams.serde import AvroSerde
from streams.topics import DEADLETTER_TOPIC, INCIDENTS_TOPIC, POWER_EVENTS_TOPIC, SITE_POWER_STATE_TOPIC

log = structlog.get_logger(__name__)

_CONSUMED = RECORDS_CONSUMED.labels(topic=POWER_EVENTS_TOPIC)
_INVALID = EVENTS_PROCESSED.labels(result="invalid")
CHANGELOG_TOPIC = "carnival-power-sites-changelog"
"""site_id -> detector state (orjson), compacted; partition p holds the sites of input partition p."""
_ENCODE_CHUNK = 16  # site states encoded between two yields to the loop (a batch may run in between)


def wall_us() -> int:
    return time.time_ns() // 1000


def arrival_us(msg: Any, wall: int) -> int:
    """The processing clock of an event: its Kafka timestamp (when it was produced), not when this worker
    read it, so that a backlog read after a restart or a stall is judged as it happened: sites in it do
    not look silent and their events do not look late. Never ahead of this machine's clock."""
    ts = msg.timestamp
    return min(int(ts * 1_000_000), wall) if ts else wall


class PowerIO(Protocol):
    """What the processor needs of Kafka (``processors.power.worker.KafkaPowerIO``; fakes in tests)."""

    def send(self, topic: str, key: bytes | None, value: bytes, partition: int = -1) -> asyncio.Future[Any]:
        """Hand a record to the producer; the future is done when Kafka acknowledged (or failed) it."""

    async def flush(self) -> None:
        """Return once every record handed over so far is settled."""

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        """Commit (topic, partition) -> next offset of the input."""

    def highwater(self, partition: int) -> int | None: ...

    def position(self, partition: int) -> int | None: ...

    def assigned(self) -> frozenset[int]:
        """The input partitions this worker owns."""

    def settling(self) -> bool:
        """True while partitions move (ticks must not touch state then)."""


class SiteStore(Protocol):
    """site_id -> state bytes of the owned partitions (``processors.runtime.kafka_io.ChangelogStore``)."""

    data: dict[str, bytes]
    partition_of: dict[str, int]

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, partition: int) -> None: ...

    def drop(self, partitions: Sequence[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a message never reaches a detector: its dead-letter kind and reason, the metric label, and
    whether it decoded (an undecodable record is not counted as consumed)."""

    kind: str
    reason: str
    metric: str
    decoded: bool


def _key(msg: Any) -> str:
    raw = msg.key
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class _Outputs:
    def __init__(self, io: PowerIO) -> None:
        self.io = io

    async def flush(self) -> None:
        await self.io.flush()


class _Snapshot:
    """The dirty sites of one checkpoint, as of the moment it was taken, encoded copy-on-write: a site
    is encoded when ``send`` reaches it, or earlier, just before anything changes it again
    (``PowerProcessor._freeze``). Either way the state written holds exactly the checkpoint's events."""

    def __init__(self, dirty: dict[str, Any]) -> None:
        self.remaining: dict[str, int] = {site: event.partition for site, event in dirty.items()}
        self.items: list[tuple[str, bytes, int]] = []


class _SiteStates:
    """State link: one detector state per dirty site, stored under the partition of the site's last
    event and sent to the same changelog partition."""

    def __init__(self, processor: PowerProcessor) -> None:
        self.p = processor

    def prepare(self, dirty: dict[str, Any]) -> _Snapshot:
        snap = _Snapshot(dirty)
        self.p.snapshot = snap
        return snap

    async def send(self, snap: _Snapshot) -> Sequence[Awaitable[Any]]:
        p = self.p
        while snap.remaining:
            for site_id in list(snap.remaining)[:_ENCODE_CHUNK]:
                p.freeze(site_id)
            if snap.remaining:
                await asyncio.sleep(0)  # batches go on between chunks (they freeze what they touch)
        p.snapshot = None
        return [p.io.send(CHANGELOG_TOPIC, site.encode(), value, part) for site, value, part in snap.items]


class _Inputs:
    def __init__(self, io: PowerIO) -> None:
        self.io = io
        self.wait = False  # a synchronous commit (before partitions are given away)

    async def ack(self, events: Sequence[Any]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        for e in events:
            tp = (e.topic, e.partition)
            if offsets.get(tp, -1) <= e.offset:
                offsets[tp] = e.offset + 1
        self.io.commit(offsets, wait=self.wait)


class PowerProcessor:
    """Everything the power worker does, given its Kafka clients and store (no module-level state)."""

    def __init__(
        self,
        io: PowerIO,
        store: SiteStore,
        serde: AvroSerde,
        detectors: DetectorCache,
        *,
        checkpoint_s: float,
        checkpoint_events: int,
        max_unconfirmed: int,
        retry: RetryPolicy | None = None,
        clock_us: Callable[[], int] = wall_us,
        on_failed: Callable[[BaseException], None] | None = None,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> None:
        self.io, self.store, self.serde, self.detectors = io, store, serde, detectors
        self.max_future_skew_s = max_future_skew_s
        detectors.pinned = self._unsaved
        self._clock_us = clock_us
        self._on_failed = on_failed
        self.site_partition: dict[str, int] = {}
        # Input partition -> (offset, record timestamp us) of the last event processed.
        self.progress: dict[int, tuple[int, int]] = {}
        self._scanned: frozenset[int] | None = None
        self.snapshot: _Snapshot | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self.inputs = _Inputs(io)
        self.checkpointer: Checkpointer[Any, str, _Snapshot] = Checkpointer(
            _Outputs(io), _SiteStates(self), self.inputs,
            every_s=checkpoint_s, every_events=checkpoint_events, max_unconfirmed=max_unconfirmed,
            on_written=self._on_written, on_failed=on_failed,
        )  # fmt: skip
        self.runner: BatchRunner[Any] = BatchRunner(
            self.process, self.rewind_events, self.quarantine, retry or RetryPolicy(), processor="power"
        )

    @staticmethod
    def _on_written(states: int, seconds: float) -> None:
        STATE_WRITES.inc(states)
        CHECKPOINT_SECONDS.observe(seconds)

    # -- state snapshots --------------------------------------------------------------------------
    def freeze(self, site_id: str) -> None:
        """Encode a site of the checkpoint being written, before anything changes it (no-op otherwise)."""
        snap = self.snapshot
        if snap is None:
            return
        partition = snap.remaining.pop(site_id, None)
        if partition is None:
            return
        known = self.site_partition.get(site_id)
        if known is not None and known != partition:
            log.error("power_site_partition_changed", site_id=site_id, before=known, now=partition)
        value = encode_state(self.detectors.get(site_id))
        self.store.put(site_id, value, partition)
        snap.items.append((site_id, value, partition))

    def _freeze_all(self) -> None:
        snap = self.snapshot
        if snap is not None:
            for site_id in list(snap.remaining):
                self.freeze(site_id)

    # -- batches ----------------------------------------------------------------------------------
    async def process(self, events: Sequence[Any]) -> None:
        """Apply one batch and hand its outputs over (see the module docstring)."""
        started = time.perf_counter()
        wall = self._clock_us()
        items: list[tuple[str, dict[str, Any], int, Any]] = []
        rejected: list[tuple[Any, str, str]] = []
        undecodable = 0
        for event in events:
            msg = event
            screened = self._screen(msg)
            if isinstance(screened, Refused):
                DEAD_LETTERED.labels(kind=screened.metric).inc()
                if screened.decoded:
                    _INVALID.inc()
                else:
                    undecodable += 1
                rejected.append((msg, screened.kind, screened.reason))
                continue
            items.append((screened["site_id"], screened, arrival_us(msg, wall), event))
        _CONSUMED.inc(len(events) - undecodable)

        cp = self.checkpointer
        async with cp.applying:  # no tick between a batch's detection and its outputs
            if self.snapshot is not None:
                for site_id, *_ in items:
                    self.freeze(site_id)
            run = run_batch(self.detectors, items, None, self._unsaved_of_site)
            dead = rejected + list(run.dead)
            for _, kind, _ in run.dead:
                DEAD_LETTERED.labels(kind=kind).inc()
            outputs: list[Any] = []
            if run.emissions or dead:
                emissions = [(event.timestamp, e) for event, e in run.emissions]
                outputs = self._send(emissions, dead)
            cp.add(events, run.touched, outputs)
            partitions = self.site_partition
            for site_id, event in run.touched.items():
                partitions[site_id] = event.partition
            self.detectors.held.clear()  # the touched sites are dirty now: pinned until saved
        for event in reversed(events):  # the last event of each partition is where the tick's clock stands
            msg = event
            if msg.partition not in self.progress or self.progress[msg.partition][0] < msg.offset:
                self.progress[msg.partition] = (msg.offset, arrival_us(msg, wall))
        BATCH_EVENTS.observe(len(events))
        BATCH_SECONDS.observe(time.perf_counter() - started)

    async def handle(self, events: Sequence[Any]) -> None:
        """One batch: the error policy around ``process``, then a checkpoint (in the background) when due."""
        await self.runner.run(events)
        self.checkpoint_if_due()

    def checkpoint_if_due(self) -> None:
        """Start a checkpoint beside the batches if one is due and none is running."""
        if self.checkpointer.due() and (self._checkpointing is None or self._checkpointing.done()):
            self._checkpointing = asyncio.ensure_future(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            await self.checkpointer.checkpoint()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Kafka refused outputs or state: the worker exits (see policy)
            if self._on_failed is None:
                raise
            self._on_failed(exc)

    async def settle(self, wait_commit: bool = True) -> None:
        """Checkpoint everything and wait for every commit (before partitions move or the worker stops)."""
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        self.inputs.wait = wait_commit
        try:
            await self.checkpointer.settle()
        finally:
            self.inputs.wait = False

    async def rewind_events(self, events: Sequence[Any]) -> None:
        """Undo what a failed ``process`` applied: every site its events name is read again from the
        table and brought forward by its unsaved events of earlier batches."""
        async with self.checkpointer.applying:
            sites = {_key(event) for event in events}
            for site_id in sites:
                if site_id in self.detectors:
                    rewind(self.detectors, site_id, self._unsaved_of_site(site_id))

    async def quarantine(self, event: Any, reason: str) -> None:
        """Dead-letter a record that failed the same way every time, and count it as handled."""
        DEAD_LETTERED.labels(kind=QUARANTINED).inc()
        fut = self.dead_letter(event, QUARANTINED, reason)
        async with self.checkpointer.applying:
            self.checkpointer.add([event], {}, [fut])

    def _screen(self, msg: Any) -> dict[str, Any] | Refused:
        """The decoded event of ``msg``, or why it is refused (a pure function of the message, so a
        rewind refuses exactly what the first pass refused)."""
        if msg.value is None:
            return Refused(
                TOMBSTONE, f"a tombstone (null value) on {POWER_EVENTS_TOPIC}, which is not compacted: "
                "no event to detect from", TOMBSTONE, decoded=False,
            )  # fmt: skip
        try:
            record = self.serde.decode(POWER_EVENTS_TOPIC, msg.value)
        except SerializationError as exc:
            return Refused(exc.kind, str(exc), DECODE, decoded=False)
        produced_ms = int(msg.timestamp * 1000) if msg.timestamp else None
        refused = admission_error(record, _key(msg), produced_ms, self.max_future_skew_s)
        if refused is not None:
            return Refused(refused[0], refused[1], refused[0], decoded=True)
        return record

    def _unsaved(self, site_id: str) -> bool:
        snap = self.snapshot
        return site_id in self.checkpointer.pending.dirty or (snap is not None and site_id in snap.remaining)

    def _unsaved_of_site(self, site_id: str) -> list[tuple[dict[str, Any], int]]:
        """The site's unsaved events again, decoded (only to rewind a detector)."""
        pending = self.checkpointer.pending
        if site_id not in pending.dirty:
            return []
        out = []
        wall = self._clock_us()
        for event in pending.events:
            msg = event
            if _key(msg) == site_id:
                record = self._screen(msg)
                if not isinstance(record, Refused):
                    out.append((record, arrival_us(msg, wall)))
        return out

    def _send(
        self, emissions: Sequence[tuple[float | None, Emission]], dead: Sequence[tuple[Any, str, str]]
    ) -> list[asyncio.Future[Any]]:
        """Hand records (with the Kafka timestamp of the event that decided each, for the latency metric)
        and dead letters to the producer; returns their delivery futures. Nothing waits for Kafka here:
        the next checkpoint does, before it writes any state. Every record is encoded before the first
        is sent, so a failed encoding sends nothing (the batch is retried)."""
        encode = self.serde.encode
        encoded = [(decided_at, e, encode(e.topic, e.record)) for decided_at, e in emissions]
        futures = []
        send = self.io.send
        for decided_at, emission, value in encoded:
            fut = send(emission.topic, emission.key.encode(), value)
            if decided_at:
                fut.add_done_callback(partial(_observe_latency, decided_at))
            futures.append(fut)
            emission.count()
            if emission.topic == INCIDENTS_TOPIC:
                rec = emission.record
                log.info("power_incident", incident_id=rec["incident_id"], kind=rec["kind"],
                         state=rec["state"], site_id=rec["site_id"], summary=rec["summary"])  # fmt: skip
            elif emission.topic == SITE_POWER_STATE_TOPIC:
                rec = emission.record
                log.info("site_power_state", site_id=rec["site_id"], state=rec["state"],
                         runtime_min=rec["battery_runtime_min"], incident_id=rec["incident_id"])  # fmt: skip
        for msg, kind, reason in dead:
            futures.append(self.dead_letter(msg, kind, reason))
        return futures

    def dead_letter(self, msg: Any, kind: str, error: str) -> asyncio.Future[Any]:
        """Send one input record to ``deadletter.v1`` with its reason and source position."""
        RECORDS_REJECTED.labels(topic=msg.topic, kind=kind).inc()
        log.warning("record_dead_lettered", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                    kind=kind, error=error, processor="power")  # fmt: skip
        record = deadletter_record(
            msg.topic, kind, error, value=msg.value, key=msg.key,
            partition=msg.partition, offset=msg.offset, processor="power",
        )  # fmt: skip
        return self.io.send(DEADLETTER_TOPIC, msg.topic.encode(), self.serde.encode(DEADLETTER_TOPIC, record))

    # -- time -------------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Timers of every site this worker owns, at each partition's clock."""
        if self.io.settling():
            return
        async with self.checkpointer.applying:
            self._freeze_all()  # a tick changes detectors too: the checkpoint being written keeps its own
            self._scan_sites()
            wall = self._clock_us()
            clocks: dict[int, int | None] = {}
            outputs: list[Output] = []
            ticked: list[str] = []
            for site_id, det in self.detectors.items():
                partition = self.site_partition.get(site_id)
                if partition is None:
                    continue  # not seen since it was loaded, and not in the store: nothing to time
                if partition not in clocks:
                    clocks[partition] = self._partition_clock(partition, wall)
                now = clocks[partition]
                if now is None:
                    continue
                try:
                    out = det.on_tick(now)
                except Exception:
                    log.exception("power_tick_failed", site_id=site_id)
                    self._forget_tick(site_id)
                    continue
                if out:
                    outputs.extend(out)
                    ticked.append(site_id)
            set_memory_gauges(self.detectors)
            for site_id in [
                s for s in self.site_partition if s not in self.detectors and not self._unsaved(s)
            ]:
                del self.site_partition[site_id]  # evicted: found again from its next event or the store
            if outputs:
                try:
                    futures = self._publish_tick(outputs)
                except Exception:
                    log.exception("power_tick_publish_failed", sites=len(ticked))
                    for site_id in ticked:
                        self._forget_tick(site_id)  # derive the same outputs again
                    return
                # Acknowledged before the next state is written (step 1 of the checkpoint), like a batch's.
                self.checkpointer.add([], {}, futures)

    def _partition_clock(self, partition: int, wall: int) -> int | None:
        """What ``on_tick`` may take as "now" for the sites of an input partition: the wall clock once this
        worker has read everything in it, the timestamp of the last event processed while it is behind
        (silence cannot be judged by the wall clock before the backlog is read), None if unknown yet."""
        if partition not in self.io.assigned():
            return None
        highwater = self.io.highwater(partition)
        done = self.progress.get(partition)
        if done is not None:
            offset, ts_us = done
            return wall if highwater is None or highwater <= offset + 1 else min(ts_us, wall)
        # nothing processed since start: caught up if there is nothing to read
        position = self.io.position(partition)
        return wall if position is None or highwater is None or position >= highwater else None

    def _publish_tick(self, outputs: list[Output]) -> list[asyncio.Future[Any]]:
        """Send what the timer decided (a failed encoding sends nothing: the ticked detectors are rewound
        and derive the same outputs again); a record Kafka refuses fails the next checkpoint."""
        emissions, late = route(outputs)
        for _ in late:  # only on_event returns late events; nothing to dead-letter without a message
            DEAD_LETTERED.labels(kind=LATE).inc()
        return self._send([(None, e) for e in emissions], ())

    def _forget_tick(self, site_id: str) -> None:
        """Undo what a tick did to a site: the state in the store plus the site's unsaved events."""
        rewind(self.detectors, site_id, self._unsaved_of_site(site_id))

    def _scan_sites(self) -> None:
        """Bring every site stored in this worker's partitions into memory (sites that have gone silent
        since a restart or rebalance have no event to load them), and drop sites no longer ours."""
        actives = self.io.assigned()
        if actives == self._scanned:
            return
        owned = set()
        for site_id, partition in list(self.store.partition_of.items()):
            if partition in actives:
                owned.add(site_id)
                self.detectors.get(site_id)
                self.site_partition.setdefault(site_id, partition)
        self.detectors.retain(owned | set(self.checkpointer.pending.dirty))  # dirty: not in the store yet
        self._scanned = actives
        log.info("power_sites_loaded", sites=len(self.detectors), partitions=sorted(actives))

    # -- partitions -------------------------------------------------------------------------------
    async def on_assigned(self, partitions: Sequence[int]) -> None:
        """New partitions: the store has been restored for them; the next tick loads their sites."""
        self._scanned = None

    async def on_revoked(self, partitions: Sequence[int], lost: bool = False) -> None:
        """Partitions leave: checkpoint and commit what was applied (unless the group already gave them to
        another worker: ``lost``), then forget their sites; the next owner restores them from the
        changelog and replays whatever was not committed. Partitions ``lost`` (this worker's session
        expired) stop the worker instead."""
        if lost:
            # Another worker may own them already, and a checkpoint of ours may be half written: commit
            # nothing more, start again from the changelog and the committed offsets.
            exc = RuntimeError(f"input partitions {list(partitions)} lost (session expired)")
            if self._on_failed is None:
                raise exc
            self._on_failed(exc)
        await self.settle()
        async with self.checkpointer.applying:
            self.detectors.clear()  # another worker may change them; reload from the store when back
            self.checkpointer.reset()
            self.store.drop(partitions)
            self.site_partition.clear()
            for p in partitions:
                self.progress.pop(p, None)
            self._scanned = None


def _observe_latency(decided_at: float, fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is None:
        DETECTION_LATENCY.observe(max(0.0, time.time() - decided_at))
