"""The power failover worker: ``power.events.v1`` -> site detectors -> ``power.incidents.v1`` + ``alerts.v1``.

Run with ``carnival worker power``. Pieces:

* table ``sites``: site_id -> detector state (orjson bytes), RocksDB, changelog
  ``carnival-power-sites-changelog``, co-partitioned with ``power.events.v1`` (both keyed by site_id,
  murmur2, ``settings.topic_partitions`` partitions).
* agent ``detect`` (concurrency 1): batches of events (what arrived within ``BATCH_WITHIN_S``, at most
  ``BATCH_MAX``), see below.
* timer ``tick`` (every ``TICK_S``): ``Detector.on_tick`` for every site of this worker's partitions,
  so held events are released, failed-transfer/start/stability timers fire and silent sites raise
  SITE_SILENT without new events.

Per batch, in this order, so that a SIGKILL at any moment loses nothing (at-least-once, no
exactly_once):

1. decode every event and run it through its site's detector, in stream order (``run_batch``);
2. hand the batch's outputs (incidents, alerts, dead letters) to the producer, without waiting;
3. the batch's events join the *unsaved* events, its sites the *dirty* sites, its outputs' delivery
   futures the unsaved outputs.

Checkpoint, every ``CHECKPOINT_S`` (or ``CHECKPOINT_EVENTS`` unsaved events), from the agent or, when
no events come, from a timer:

4. wait until Kafka has acknowledged every output sent so far (normally long done);
5. write the state of every dirty site to the table, once per site (RocksDB + changelog, in the
   partition of the site's own last event, i.e. its input partition);
6. when Kafka has acknowledged those changelog records, ack the unsaved events (manual acks with
   ``Stream.noack_take``); faust commits acked offsets only (and flushes its producer before).

4 and 5 hold the lock the agent takes per batch, so a state written never holds an event whose
outputs are not in Kafka, and an event is acked only once its outputs and a state holding it are.
A crash before 6 replays the unsaved events into detectors restored from the last checkpoint, which
have not seen them: the same records again (deterministic incident ids; the router dedups alerts by
fingerprint). A crash after a state write replays events that state already holds into a detector
that drops them as duplicates (same device and seq); their outputs are durable. A failure is never
acked (see ``_fatal``). Timer-driven changes are persisted with the site's next checkpoint after an
event of it; after a crash they are derived again from the stored state, with the same incident ids.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Any, cast

import faust
import structlog
from faust.streams import _current_event
from faust.types import TP

from core.metrics import RECORDS_CONSUMED
from core.settings import get_settings
from processors.app import create_app, declare_internal_topics
from processors.codec import AgentCodec
from processors.power.events import Output
from processors.power.runtime import (
    BATCH_EVENTS,
    BATCH_SECONDS,
    CHECKPOINT_SECONDS,
    DEAD_LETTERED,
    DETECTION_LATENCY,
    EVENTS_PROCESSED,
    EVENTS_TOPIC,
    INCIDENTS_TOPIC,
    LATE,
    STATE_WRITES,
    DetectorCache,
    Emission,
    config_from_env,
    encode_state,
    knobs_from_env,
    rewind,
    route,
    run_batch,
)
from streams.deadletter import VALIDATION
from streams.exceptions import SerializationError

log = structlog.get_logger(__name__)

PROCESSOR = "power"
TABLE = "sites"
knobs = knobs_from_env()  # PowerKnobs (processors/power/config.py): CARNIVAL_POWER_<KNOB>
TICK_S = knobs.tick_s
BATCH_MAX = knobs.batch_max
BATCH_WITHIN_S = knobs.batch_within_s
CHECKPOINT_S = knobs.checkpoint_s
CHECKPOINT_EVENTS = knobs.checkpoint_events
MAX_UNCONFIRMED = knobs.max_unconfirmed
"""A batch is what arrived within ``BATCH_WITHIN_S`` (at low rates: one event, ≤ 5 ms of extra latency),
or ``BATCH_MAX`` events at once under load. Detection latency depends on batches only; the state is
written per checkpoint (``CHECKPOINT_S``): at most one changelog record per site per checkpoint,
however many events it had, and the offsets of its events are acked when those records are in Kafka
(faust commits every ``broker_commit_interval`` = 1 s anyway)."""

settings = get_settings()
config = config_from_env()
# A SIGKILLed worker's partitions move on after this long (faust's default is 60 s; a failover detector
# that is down for a minute is itself an incident).
SESSION_TIMEOUT_S = knobs.session_timeout_s
# A checkpoint writes up to one state (~1-2 KB) per site at once; aiokafka sends one batch per
# partition per request and makes the sender (and faust's producer buffer, and with it the consumer)
# wait when a partition's batch is full: 256 KB batches instead of 16 KB.
PRODUCER_MAX_BATCH_SIZE = knobs.producer_max_batch_size
# Events are acked a checkpoint at a time, thousands at once under load: faust's count-triggered
# commit (``broker_commit_every``, 500 acks) would then run inline in its message drain loop at every
# checkpoint and hold up the delivery of events for a producer flush and a commit round trip. Commits
# come from the 1 s ``broker_commit_interval`` timer instead, which runs beside it.
COMMIT_EVERY = knobs.commit_every
app = create_app(
    PROCESSOR,
    settings,
    broker_session_timeout=SESSION_TIMEOUT_S,
    producer_max_batch_size=PRODUCER_MAX_BATCH_SIZE,
    broker_commit_every=COMMIT_EVERY,
)
codec = AgentCodec(app, settings, PROCESSOR)
events_topic = codec.topic(EVENTS_TOPIC)
sites = app.Table(
    TABLE,
    default=None,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.topic_partitions,
    help="site_id -> failover detector state (orjson)",
)

_faust_first_start = app.on_first_start


async def _on_first_start() -> None:
    # The changelog exists with its partitions before the consumer subscribes (see the function).
    await asyncio.to_thread(declare_internal_topics, settings, app)
    await _faust_first_start()


app.on_first_start = _on_first_start  # type: ignore[method-assign]


def _wall_us() -> int:
    return time.time_ns() // 1000


def _load(site_id: str) -> bytes | None:
    value: bytes | None = sites.get(site_id)
    return value


detectors = DetectorCache(config, _load, _wall_us)
# Batches, ticks and checkpoints all touch the detectors: a tick (which awaits its outputs' acks) must
# not interleave with a batch, and a checkpoint must see no batch between checking that every output
# is in Kafka and writing the states.
_lock = asyncio.Lock()
_checkpoint_lock = asyncio.Lock()
_scanned_actives: frozenset[Any] | None = None
# Input partition -> (offset, record timestamp µs) of the last event processed; site -> its partition.
_progress: dict[int, tuple[int, int]] = {}
_site_partition: dict[str, int] = {}
_CONSUMED = RECORDS_CONSUMED.labels(topic=EVENTS_TOPIC)
_DEAD_DECODE = DEAD_LETTERED.labels(kind="DECODE")
_DEAD_VALIDATION = DEAD_LETTERED.labels(kind=VALIDATION)
_INVALID = EVENTS_PROCESSED.labels(result="invalid")


def _arrival_us(msg: Any, wall_us: int) -> int:
    """The processing clock of an event: its Kafka timestamp (when it was produced), not when this worker
    read it, so that a backlog read after a restart or a stall is judged as it happened: sites in it do
    not look silent and their events do not look late. Never ahead of this machine's clock."""
    ts = msg.timestamp
    return min(int(ts * 1_000_000), wall_us) if ts else wall_us


def _enter(event: faust.EventT) -> None:
    """Make ``event`` faust's current event in this task. faust's table takes the changelog partition
    (``Collection.partition_for_key``) and its RocksDB store the partition database (``Store._set`` /
    ``_get``) from ``faust.streams.current_event()``, a ContextVar holding a weakref to the event that
    the stream iteration sets per event; a batch mixes partitions, so a site's state is read and
    written with the site's own event current, exactly as a per-event agent would."""
    _current_event.set(weakref.ref(event))


async def _partition_clock(partition: int, wall_us: int) -> int | None:
    """What ``on_tick`` may take as "now" for the sites of an input partition: the wall clock once this
    worker has read everything in it, the timestamp of the last event processed while it is behind (the
    backlog has not been read: silence cannot be judged by the wall clock), None if unknown yet."""
    tp = TP(EVENTS_TOPIC, partition)
    try:
        highwater = app.consumer.highwater(tp)
    except Exception:  # not assigned or no metadata yet
        return None
    done = _progress.get(partition)
    if done is not None:
        offset, ts_us = done
        return wall_us if highwater is None or highwater <= offset + 1 else min(ts_us, wall_us)
    position = await app.consumer.position(tp)  # nothing processed since start: caught up if nothing to read
    return wall_us if position is None or highwater is None or position >= highwater else None


async def _send(
    emissions: Sequence[tuple[float | None, Emission]], dead: Sequence[tuple[Any, str, str]]
) -> list[asyncio.Future[Any]]:
    """Hand the records (with the Kafka timestamp of the event that decided each, for the latency
    metric) and dead letters to the producer; returns the records' delivery futures. Nothing waits for
    Kafka here: the next checkpoint does, before it writes any state (``_outputs_durable``)."""
    futures = []
    encode = codec.serde.encode
    for decided_at, emission in emissions:
        topic = emission.topic
        value = encode(topic, emission.record)
        sent = await codec.topic(topic).send(key=emission.key.encode(), value=value)
        fut = cast("asyncio.Future[Any]", sent)  # aiokafka's delivery future
        if decided_at:
            fut.add_done_callback(partial(_observe_latency, decided_at))
        futures.append(fut)
        emission.count()
        if topic == INCIDENTS_TOPIC:
            rec = emission.record
            log.info("power_incident", incident_id=rec["incident_id"], kind=rec["kind"], state=rec["state"],
                     site_id=rec["site_id"], summary=rec["summary"])  # fmt: skip
    for msg, kind, reason in dead:
        await codec.dead_letter(msg, kind, reason)
    return futures


def _observe_latency(decided_at: float, fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        DETECTION_LATENCY.observe(max(0.0, time.time() - decided_at))


def _store_state(site_id: str, event: faust.EventT, value: bytes) -> None:
    """Write a site's state to the table's RocksDB store, in the database of the site's partition (the
    store takes it from the current event). Its changelog record is sent by ``_send_changelog``."""
    _enter(event)
    sites.data[site_id] = value


async def _send_changelog(states: list[tuple[str, int, bytes]]) -> list[Awaitable[Any]]:
    """Send the changelog records of stored states (site_id, input partition, value) to the site's own
    partition; returns their delivery futures.

    ``table[key] = value`` is ``Table.on_key_set`` (``send_changelog`` + key TTL + sensors) + the
    store write; this is the same minus the unused TTL and sensors, with two differences:
    ``send_changelog`` puts the record in faust's ``ProducerBuffer``, which hands records to aiokafka
    one at a time and makes faust's consumer stop delivering events while it holds over 100 of them
    (``ProducerBuffer.wait_until_ebb``) -- a checkpoint of hundreds of states would stall detection
    -- and it does not return the delivery future to wait for. The record carries the table's own
    callback, which stores the changelog offset in RocksDB for recovery, as ``send_changelog`` does.
    Yields to the event loop now and then so that batches go on while a big checkpoint is sent."""
    table: Any = sites  # faust.Table; ``TableT`` does not declare the serializers and the callback
    topic = table.changelog_topic
    futures = []
    for i, (site_id, partition, value) in enumerate(states, 1):
        fut = await topic.send(
            key=site_id,
            value=value,
            partition=partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
            callback=table._on_changelog_sent,
        )
        futures.append(fut)
        if i % 64 == 0:
            await asyncio.sleep(0)
    return futures


class _Unsaved:
    """What was applied to the detectors since the last checkpoint: its events (not acked), the sites
    it touched (states not written), its outputs' delivery futures and how many dead letters it sent."""

    def __init__(self) -> None:
        self.events: list[faust.EventT] = []
        self.dirty: dict[str, faust.EventT] = {}  # site_id -> its last event (the write's partition)
        self.outputs: list[asyncio.Future[Any]] = []
        self.dead_letters = 0
        self.since = 0.0  # monotonic time of the first unsaved event

    def add(
        self,
        events: Sequence[faust.EventT],
        touched: dict[str, faust.EventT],
        outputs: list[asyncio.Future[Any]],
        dead_letters: int,
    ) -> None:
        if not self.events:
            self.since = time.monotonic()
        self.events.extend(events)
        self.dirty.update(touched)
        self.outputs.extend(outputs)
        self.dead_letters += dead_letters

    def due(self) -> bool:
        return bool(self.events) and (
            len(self.events) >= CHECKPOINT_EVENTS or time.monotonic() - self.since >= CHECKPOINT_S
        )

    def of_site(self, site_id: str) -> list[tuple[dict[str, Any], int]]:
        """The site's unsaved events again, decoded (only to rewind a detector after a bug)."""
        if site_id not in self.dirty:
            return []
        out = []
        wall = _wall_us()
        for event in self.events:
            msg = event.message
            key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else msg.key
            if key == site_id:
                try:
                    out.append((codec.serde.decode(EVENTS_TOPIC, msg.value or b""), _arrival_us(msg, wall)))
                except SerializationError:
                    continue
        return out

    def clear(self) -> None:
        self.events = []
        self.dirty = {}
        self.outputs = []
        self.dead_letters = 0


_unsaved = _Unsaved()
_unconfirmed: deque[asyncio.Future[None]] = deque()
_stream: faust.StreamT | None = None  # the agent's stream, to ack through


async def _process(events: Sequence[faust.EventT]) -> None:
    """Steps 1-3 of the module docstring for one batch."""
    started = time.perf_counter()
    wall = _wall_us()
    decode = codec.serde.decode
    items: list[tuple[str, dict[str, Any], int, faust.EventT]] = []
    rejected: list[tuple[Any, str, str]] = []
    undecodable = 0
    for event in events:
        msg = event.message
        try:
            record = decode(EVENTS_TOPIC, msg.value or b"")  # a tombstone: BAD_MAGIC dead letter
        except SerializationError as exc:
            undecodable += 1
            rejected.append((msg, exc.kind, str(exc)))
            continue
        site_id = record.get("site_id")
        raw_key = msg.key
        key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key
        if not isinstance(site_id, str) or not site_id or key != site_id:
            # A misrouted event would run in another partition's detector: refuse it.
            _DEAD_VALIDATION.inc()
            _INVALID.inc()
            rejected.append((msg, VALIDATION, f"record key {key!r} is not its site_id {site_id!r}"))
            continue
        ts = msg.timestamp
        items.append((site_id, record, min(int(ts * 1_000_000), wall) if ts else wall, event))
    _CONSUMED.inc(len(events) - undecodable)
    if undecodable:
        _DEAD_DECODE.inc(undecodable)

    async with _lock:  # no tick between a batch's detection and its outputs (same order as on_event)
        run = run_batch(detectors, items, _enter, _unsaved.of_site)
        dead = rejected + [(event.message, kind, reason) for event, kind, reason in run.dead]
        for _, kind, _ in run.dead:
            DEAD_LETTERED.labels(kind=kind).inc()
        outputs: list[asyncio.Future[Any]] = []
        if run.emissions or dead:
            emissions = [(event.message.timestamp, e) for event, e in run.emissions]
            outputs = await _send(emissions, dead)
        _unsaved.add(events, run.touched, outputs, len(dead))
    for event in reversed(events):  # the last event of each partition is where the tick's clock stands
        msg = event.message
        if msg.partition not in _progress or _progress[msg.partition][0] < msg.offset:
            _progress[msg.partition] = (msg.offset, _arrival_us(msg, wall))
    BATCH_EVENTS.observe(len(events))
    BATCH_SECONDS.observe(time.perf_counter() - started)


async def _outputs_durable(unsaved: _Unsaved) -> bool:
    """Wait until Kafka has every output sent so far; False if a dead letter was sent meanwhile (the
    caller checks again). Records raise if they were not delivered."""
    dead_letters = unsaved.dead_letters
    if dead_letters or any(not fut.done() for fut in unsaved.outputs):
        # faust's Producer.flush: aiokafka's flush waits for every batch in flight, the dead letters
        # (sent through codec.dead_letter, no future) included.
        await app.producer.flush()
    for fut in unsaved.outputs:
        fut.result()
    return unsaved.dead_letters == dead_letters and all(fut.done() for fut in unsaved.outputs)


async def _checkpoint() -> None:
    """Steps 4-6: once every output so far is in Kafka, store every dirty site's state once and send
    its changelog record; ack the unsaved events once Kafka has those records too. The acks wait in
    the background (up to MAX_UNCONFIRMED checkpoints, acked in order) while the agent goes on."""
    async with _checkpoint_lock:  # the agent and the timer: one checkpoint at a time, in order
        await _outputs_durable(_unsaved)  # mostly long done: wait outside the lock, batches go on
        async with _lock:  # no batch applied between making sure and storing
            if not _unsaved.events:
                return
            while not await _outputs_durable(_unsaved):
                pass
            started = time.perf_counter()
            states = []
            for site_id, event in _unsaved.dirty.items():
                _enter(event)
                det = detectors.get(site_id)  # in memory (a revoke drops detectors, and clears this)
                partition = event.message.partition
                known = _site_partition.get(site_id)
                if known is not None and known != partition:
                    log.error("power_site_partition_changed", site_id=site_id, before=known, now=partition)
                _site_partition[site_id] = partition
                value = encode_state(det)
                _store_state(site_id, event, value)
                states.append((site_id, partition, value))
            events = _unsaved.events
            _unsaved.clear()
        changelog = await _send_changelog(states)
        STATE_WRITES.inc(len(states))
        CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        while _unconfirmed and _unconfirmed[0].done():
            _unconfirmed.popleft().result()
        if len(_unconfirmed) >= MAX_UNCONFIRMED:
            await _unconfirmed.popleft()
        after = _unconfirmed[-1] if _unconfirmed else None
        _unconfirmed.append(asyncio.ensure_future(_confirm(events, changelog, after)))


async def _confirm(events: list[faust.EventT], changelog: list[Awaitable[Any]], after: Any) -> None:
    """Ack a checkpoint's events once its changelog records are acknowledged by Kafka, and not before
    the checkpoint in front of it. A record Kafka refused is fatal: see ``_fatal``."""
    try:
        if after is not None:
            await after
        for fut in changelog:
            await fut
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _fatal(exc)
    assert _stream is not None
    for event in events:
        await _stream.ack(event)


def _fatal(exc: BaseException) -> None:
    """A batch or checkpoint failed outside a detector (Kafka refused outputs or state past the
    producer's own retries, or a bug here). Its events must not be acked and nothing after them
    processed, or the committed offset would move past events whose effects are not durable (and the
    agent faust restarts would go on from the next events). Exit like a SIGKILL: the next start
    replays from the committed offset, which is the case the design already covers."""
    log.critical("power_batch_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(70)


@app.agent(events_topic, concurrency=1)
async def detect(stream: faust.StreamT) -> None:
    # ``noack_take`` yields what arrived within BATCH_WITHIN_S (or BATCH_MAX events at once) and leaves
    # the acks to us. (``take_events`` acks its batch in a ``finally``, even when processing it failed.)
    global _stream
    _stream = stream
    batches = cast(faust.Stream, stream).noack_take(BATCH_MAX, within=BATCH_WITHIN_S)  # not on StreamT
    async for events in batches:
        try:
            await _process(events)
            if _unsaved.due():
                await _checkpoint()
        except asyncio.CancelledError:
            raise  # stopping: unsaved events are not acked, the next start (or owner) replays them
        except Exception as exc:
            _fatal(exc)


@app.timer(interval=CHECKPOINT_S / 2)
async def checkpoint() -> None:
    """Checkpoints when no events come (the agent checkpoints while they do). Also while rebalancing:
    faust waits for every event taken to be acked before it gives partitions away."""
    if _unsaved.due():
        try:
            await _checkpoint()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _fatal(exc)


def _scan_sites() -> None:
    """Bring every site stored in this worker's partitions into memory (sites that have gone silent
    since a restart or rebalance have no event to load them), and drop sites no longer ours."""
    global _scanned_actives
    actives = frozenset(app.assignor.assigned_actives())
    if actives == _scanned_actives:
        return
    owned = set()
    for raw_key in list(sites.keys()):
        site_id = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        owned.add(site_id)
        detectors.get(site_id)
    detectors.retain(owned | set(_unsaved.dirty))  # dirty: new sites, not in the table yet
    _scanned_actives = actives
    log.info("power_sites_loaded", sites=len(detectors), active_topic_partitions=len(actives))


@app.on_partitions_revoked.connect
async def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
    global _scanned_actives
    async with _lock:
        detectors.clear()  # another worker may change them; reload from the table when they return
        # faust waited for every taken event to be acked, so nothing is unsaved here; should a
        # checkpoint have failed, its events stay unacked and are replayed by the next owner.
        _unsaved.clear()
        _site_partition.clear()
        _progress.clear()
        _scanned_actives = None


async def _publish_tick(outputs: list[Output]) -> None:
    """Send what the timer decided and wait for Kafka's acks (on a failure the ticked detectors are
    rewound, and derive the same outputs again)."""
    emissions, late = route(outputs)
    for _ in late:  # only on_event returns late events; nothing to dead-letter without a message
        DEAD_LETTERED.labels(kind=LATE).inc()
    for fut in await _send([(None, e) for e in emissions], ()):
        await fut


def _forget_tick(site_id: str) -> None:
    """Undo what a tick did to a site (a bug in ``on_tick``, or its outputs not delivered): the state
    in the table plus the site's unsaved events, so nothing unsaved is lost (``rewind``)."""
    try:
        rewind(detectors, site_id, _unsaved.of_site(site_id))
    except Exception as exc:
        _fatal(exc)


@app.timer(interval=TICK_S)
async def tick() -> None:
    if app.rebalancing or getattr(app, "in_recovery", False):
        return
    async with _lock:
        _scan_sites()
        wall = _wall_us()
        clocks: dict[int, int | None] = {}
        outputs: list[Output] = []
        ticked: list[str] = []
        for site_id, det in detectors.items():
            partition = _site_partition.get(site_id)
            if partition is None:
                partition = _site_partition[site_id] = app.producer.key_partition(
                    EVENTS_TOPIC, site_id.encode()
                ).partition
            if partition not in clocks:
                clocks[partition] = await _partition_clock(partition, wall)
            now = clocks[partition]
            if now is None:
                continue
            try:
                out = det.on_tick(now)
            except Exception:
                log.exception("power_tick_failed", site_id=site_id)
                _forget_tick(site_id)
                continue
            if out:
                outputs.extend(out)
                ticked.append(site_id)
        if outputs:
            try:
                await _publish_tick(outputs)
            except Exception:
                log.exception("power_tick_publish_failed", sites=len(ticked))
                for site_id in ticked:
                    _forget_tick(site_id)  # derive the same outputs again


log.info("power_worker_configured", config=config.to_dict(), partitions=settings.topic_partitions,
         batch_max=BATCH_MAX)  # fmt: skip
