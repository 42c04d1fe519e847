"""The power processor: batches of ``power.events.v1`` -> site detectors -> incidents and alerts, made
durable by the runtime's checkpoint protocol (``processors.runtime.checkpoint``) under its error policy
(``processors.runtime.policy``).

Per batch (``process``), in stream order: screen every message (``_screen``: tombstones, undecodable
bytes, misrouted keys and events stamped beyond ``max_future_skew_s`` past their Kafka timestamp are
dead-lettered with their reason and never reach a detector), run the rest through their sites' detectors
(``run_batch``: an event that breaks a detector is dead-lettered and rewound there), hand the outputs and
dead letters to the producer without waiting, and record the batch with the checkpointer (its events,
the sites it touched, its outputs' delivery futures). The checkpoint then writes one state per dirty site
(its changelog record goes to the partition of the site's own last event, i.e. its input partition) and
acks the events once Kafka has it all. Ticks (``tick``) release held events and fire timers; what they
change is persisted with the site's next checkpoint after an event of it, and derived again from the
stored state after a crash, with the same incident ids.

faust is reached only through ``processors.runtime.faust_glue``; the worker module builds this class
from the app's parts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from core.metrics import RECORDS_CONSUMED
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
from processors.runtime import faust_glue as glue
from streams.deadletter import DECODE, TOMBSTONE
from streams.event_time import DEFAULT_MAX_FUTURE_SKEW_S
from streams.exceptions import SerializationError
from streams.topics import INCIDENTS_TOPIC, POWER_EVENTS_TOPIC

log = structlog.get_logger(__name__)

_CONSUMED = RECORDS_CONSUMED.labels(topic=POWER_EVENTS_TOPIC)
_INVALID = EVENTS_PROCESSED.labels(result="invalid")


def wall_us() -> int:
    return time.time_ns() // 1000


def arrival_us(msg: Any, wall: int) -> int:
    """The processing clock of an event: its Kafka timestamp (when it was produced), not when this worker
    read it, so that a backlog read after a restart or a stall is judged as it happened: sites in it do
    not look silent and their events do not look late. Never ahead of this machine's clock."""
    ts = msg.timestamp
    return min(int(ts * 1_000_000), wall) if ts else wall


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
    def __init__(self, app: Any) -> None:
        self.app = app

    async def flush(self) -> None:
        await glue.flush_producer(self.app)


class _SiteStates:
    """State link: one detector state per dirty site, stored in the table's partition of the site's last
    event and sent to the same changelog partition."""

    def __init__(self, processor: PowerProcessor) -> None:
        self.p = processor

    def prepare(self, dirty: dict[str, Any]) -> list[tuple[str, bytes, int]]:
        items = []
        for site_id, event in dirty.items():
            glue.enter(event)
            partition = event.message.partition
            known = self.p.site_partition.get(site_id)
            if known is not None and known != partition:
                log.error("power_site_partition_changed", site_id=site_id, before=known, now=partition)
            self.p.site_partition[site_id] = partition
            value = encode_state(self.p.detectors.get(site_id))
            self.p.table.data[site_id] = value  # the store of the current event's partition
            items.append((site_id, value, partition))
        return items

    async def send(self, prepared: list[tuple[str, bytes, int]]) -> Sequence[Awaitable[Any]]:
        return await glue.send_changelog(self.p.table, prepared)


class _Inputs:
    def __init__(self) -> None:
        self.stream: Any = None

    async def ack(self, events: Sequence[Any]) -> None:
        await glue.ack(self.stream, events)


class PowerProcessor:
    """Everything the power worker does, given the app's parts (no module-level state)."""

    def __init__(
        self,
        app: Any,
        table: Any,
        codec: Any,
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
        self.app, self.table, self.codec, self.detectors = app, table, codec, detectors
        self.max_future_skew_s = max_future_skew_s
        detectors.pinned = self._unsaved
        self._clock_us = clock_us
        self.site_partition: dict[str, int] = {}
        # Input partition -> (offset, record timestamp us) of the last event processed.
        self.progress: dict[int, tuple[int, int]] = {}
        self._scanned_actives: frozenset[Any] | None = None
        self.inputs = _Inputs()
        self.checkpointer: Checkpointer[Any, str, list[tuple[str, bytes, int]]] = Checkpointer(
            _Outputs(app), _SiteStates(self), self.inputs,
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

    # -- batches ----------------------------------------------------------------------------------
    async def process(self, events: Sequence[Any]) -> None:
        """Apply one batch and hand its outputs over (see the module docstring)."""
        started = time.perf_counter()
        wall = self._clock_us()
        items: list[tuple[str, dict[str, Any], int, Any]] = []
        rejected: list[tuple[Any, str, str]] = []
        undecodable = 0
        for event in events:
            msg = event.message
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
            run = run_batch(self.detectors, items, glue.enter, self._unsaved_of_site)
            dead = rejected + [(event.message, kind, reason) for event, kind, reason in run.dead]
            for _, kind, _ in run.dead:
                DEAD_LETTERED.labels(kind=kind).inc()
            outputs: list[Any] = []
            if run.emissions or dead:
                emissions = [(event.message.timestamp, e) for event, e in run.emissions]
                outputs = await self._send(emissions, dead)
            cp.add(events, run.touched, outputs, len(dead))
            self.detectors.held.clear()  # the touched sites are dirty now: pinned until saved
        for event in reversed(events):  # the last event of each partition is where the tick's clock stands
            msg = event.message
            if msg.partition not in self.progress or self.progress[msg.partition][0] < msg.offset:
                self.progress[msg.partition] = (msg.offset, arrival_us(msg, wall))
        BATCH_EVENTS.observe(len(events))
        BATCH_SECONDS.observe(time.perf_counter() - started)

    async def handle(self, events: Sequence[Any]) -> None:
        """One batch from the agent: the error policy around ``process``, then a checkpoint when due."""
        await self.runner.run(events)
        if self.checkpointer.due():
            await self.checkpointer.checkpoint()

    async def rewind_events(self, events: Sequence[Any]) -> None:
        """Undo what a failed ``process`` applied: every site its events name is read again from the
        table and brought forward by its unsaved events of earlier batches."""
        async with self.checkpointer.applying:
            sites = {_key(event.message) for event in events}
            for site_id in sites:
                if site_id in self.detectors:
                    rewind(self.detectors, site_id, self._unsaved_of_site(site_id))

    async def quarantine(self, event: Any, reason: str) -> None:
        """Dead-letter a record that failed the same way every time, and count it as handled."""
        DEAD_LETTERED.labels(kind=QUARANTINED).inc()
        await self.codec.dead_letter(event.message, QUARANTINED, reason)
        async with self.checkpointer.applying:
            self.checkpointer.add([event], {}, (), 1)

    def _screen(self, msg: Any) -> dict[str, Any] | Refused:
        """The decoded event of ``msg``, or why it is refused (a pure function of the message, so a
        rewind refuses exactly what the first pass refused)."""
        if msg.value is None:
            return Refused(
                TOMBSTONE, f"a tombstone (null value) on {POWER_EVENTS_TOPIC}, which is not compacted: "
                "no event to detect from", TOMBSTONE, decoded=False,
            )  # fmt: skip
        try:
            record = self.codec.serde.decode(POWER_EVENTS_TOPIC, msg.value)
        except SerializationError as exc:
            return Refused(exc.kind, str(exc), DECODE, decoded=False)
        produced_ms = int(msg.timestamp * 1000) if msg.timestamp else None
        refused = admission_error(record, _key(msg), produced_ms, self.max_future_skew_s)
        if refused is not None:
            return Refused(refused[0], refused[1], refused[0], decoded=True)
        return record

    def _unsaved(self, site_id: str) -> bool:
        return site_id in self.checkpointer.pending.dirty

    def _unsaved_of_site(self, site_id: str) -> list[tuple[dict[str, Any], int]]:
        """The site's unsaved events again, decoded (only to rewind a detector)."""
        pending = self.checkpointer.pending
        if site_id not in pending.dirty:
            return []
        out = []
        wall = self._clock_us()
        for event in pending.events:
            msg = event.message
            if _key(msg) == site_id:
                record = self._screen(msg)
                if not isinstance(record, Refused):
                    out.append((record, arrival_us(msg, wall)))
        return out

    async def _send(
        self, emissions: Sequence[tuple[float | None, Emission]], dead: Sequence[tuple[Any, str, str]]
    ) -> list[Any]:
        """Hand records (with the Kafka timestamp of the event that decided each, for the latency metric)
        and dead letters to the producer; returns the records' delivery futures. Nothing waits for Kafka
        here: the next checkpoint does, before it writes any state."""
        futures = []
        encode, topic_of = self.codec.serde.encode, self.codec.topic
        for decided_at, emission in emissions:
            topic = emission.topic
            fut = await glue.send(topic_of(topic), emission.key.encode(), encode(topic, emission.record))
            if decided_at:
                fut.add_done_callback(partial(_observe_latency, decided_at))
            futures.append(fut)
            emission.count()
            if topic == INCIDENTS_TOPIC:
                rec = emission.record
                log.info("power_incident", incident_id=rec["incident_id"], kind=rec["kind"],
                         state=rec["state"], site_id=rec["site_id"], summary=rec["summary"])  # fmt: skip
        for msg, kind, reason in dead:
            await self.codec.dead_letter(msg, kind, reason)
        return futures

    # -- time -------------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Timers of every site this worker owns, at each partition's clock."""
        if glue.is_settling(self.app):
            return
        async with self.checkpointer.applying:
            self._scan_sites()
            wall = self._clock_us()
            clocks: dict[int, int | None] = {}
            outputs: list[Output] = []
            ticked: list[str] = []
            for site_id, det in self.detectors.items():
                partition = self.site_partition.get(site_id)
                if partition is None:
                    partition = self.site_partition[site_id] = glue.key_partition(
                        self.app, POWER_EVENTS_TOPIC, site_id.encode()
                    )
                if partition not in clocks:
                    clocks[partition] = await self._partition_clock(partition, wall)
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
                del self.site_partition[site_id]  # evicted: found again from its next event
            if outputs:
                try:
                    await self._publish_tick(outputs)
                except Exception:
                    log.exception("power_tick_publish_failed", sites=len(ticked))
                    for site_id in ticked:
                        self._forget_tick(site_id)  # derive the same outputs again

    async def _partition_clock(self, partition: int, wall: int) -> int | None:
        """What ``on_tick`` may take as "now" for the sites of an input partition: the wall clock once this
        worker has read everything in it, the timestamp of the last event processed while it is behind
        (silence cannot be judged by the wall clock before the backlog is read), None if unknown yet."""
        try:
            highwater = glue.highwater(self.app, POWER_EVENTS_TOPIC, partition)
        except LookupError:
            return None
        done = self.progress.get(partition)
        if done is not None:
            offset, ts_us = done
            return wall if highwater is None or highwater <= offset + 1 else min(ts_us, wall)
        # nothing processed since start: caught up if there is nothing to read
        position = await glue.position(self.app, POWER_EVENTS_TOPIC, partition)
        return wall if position is None or highwater is None or position >= highwater else None

    async def _publish_tick(self, outputs: list[Output]) -> None:
        """Send what the timer decided and wait for Kafka's acks (on a failure the ticked detectors are
        rewound, and derive the same outputs again)."""
        emissions, late = route(outputs)
        for _ in late:  # only on_event returns late events; nothing to dead-letter without a message
            DEAD_LETTERED.labels(kind=LATE).inc()
        for fut in await self._send([(None, e) for e in emissions], ()):
            await fut

    def _forget_tick(self, site_id: str) -> None:
        """Undo what a tick did to a site: the state in the table plus the site's unsaved events."""
        rewind(self.detectors, site_id, self._unsaved_of_site(site_id))

    def _scan_sites(self) -> None:
        """Bring every site stored in this worker's partitions into memory (sites that have gone silent
        since a restart or rebalance have no event to load them), and drop sites no longer ours."""
        actives = frozenset(glue.assigned_actives(self.app))
        if actives == self._scanned_actives:
            return
        owned = set()
        for raw_key in list(self.table.keys()):
            site_id = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            owned.add(site_id)
            self.detectors.get(site_id)
        self.detectors.retain(owned | set(self.checkpointer.pending.dirty))  # dirty: not in the table yet
        self._scanned_actives = actives
        log.info("power_sites_loaded", sites=len(self.detectors), active_topic_partitions=len(actives))

    # -- partitions -------------------------------------------------------------------------------
    async def on_revoked(self) -> None:
        async with self.checkpointer.applying:
            self.detectors.clear()  # another worker may change them; reload from the table when back
            # faust waited for every taken event to be acked, so nothing is pending here; should a
            # checkpoint have failed, its events stay unacked and are replayed by the next owner.
            self.checkpointer.reset()
            self.site_partition.clear()
            self.progress.clear()
            self._scanned_actives = None


def _observe_latency(decided_at: float, fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is None:
        DETECTION_LATENCY.observe(max(0.0, time.time() - decided_at))
