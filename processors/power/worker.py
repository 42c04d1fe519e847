"""The power failover worker: ``power.events.v1`` -> site detectors -> ``power.incidents.v1`` + ``alerts.v1``.

Run with ``carnival worker power``. Pieces:

* table ``sites``: site_id -> detector state (orjson bytes), RocksDB, changelog
  ``carnival-power-sites-changelog``, co-partitioned with ``power.events.v1`` (both keyed by site_id,
  murmur2, ``settings.topic_partitions`` partitions).
* agent ``detect`` (concurrency 1): decode, run the site's detector, publish its outputs, persist state.
* timer ``tick`` (every ``TICK_S``): ``Detector.on_tick`` for every site of this worker's partitions,
  so held events are released, failed-transfer/start/stability timers fire and silent sites raise
  SITE_SILENT without new events.

Ordering per event, so that a SIGKILL at any moment loses nothing (at-least-once, no exactly_once):

1. outputs (incidents, alerts, dead letters) are sent and *acknowledged by Kafka*;
2. then the state is written to the table (RocksDB + changelog);
3. faust flushes the producer (changelog) before it commits the input offset.

A crash before 2 replays the event: the restored detector has not seen it and emits the same
records again (deterministic incident ids; the router dedups alerts by fingerprint). A crash after 2
replays it into a detector that drops it as a duplicate (same device and seq), and its outputs are
already durable. Timer-driven changes are persisted with the site's next event (faust tables can only
be written inside a stream iteration with a RocksDB store); after a crash they are derived again from
the stored state, with the same incident ids.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import structlog
from faust.types import TP

from carnival.settings import get_settings
from processors.app import create_app
from processors.codec import AgentCodec
from processors.power.events import InvalidPowerEvent, Output
from processors.power.runtime import (
    DEAD_LETTERED,
    DETECTION_LATENCY,
    EVENT_SECONDS,
    EVENTS_PROCESSED,
    EVENTS_TOPIC,
    INCIDENTS_TOPIC,
    DetectorCache,
    config_from_env,
    encode_state,
    route,
)
from streams.deadletter import VALIDATION

log = structlog.get_logger(__name__)

PROCESSOR = "power"
TABLE = "sites"
TICK_S = 1.0
LATE = "LATE"

settings = get_settings()
config = config_from_env()
# A SIGKILLed worker's partitions move on after this long (faust's default is 60 s; a failover detector
# that is down for a minute is itself an incident).
SESSION_TIMEOUT_S = 10.0
app = create_app(PROCESSOR, settings, broker_session_timeout=SESSION_TIMEOUT_S)
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


def _wall_us() -> int:
    return time.time_ns() // 1000


def _load(site_id: str) -> bytes | None:
    value: bytes | None = sites.get(site_id)
    return value


detectors = DetectorCache(config, _load, _wall_us)
# The agent and the timer both touch detectors and publish; an event's detect/publish/persist (which
# awaits Kafka acks) must not interleave with a tick of the same detector.
_lock = asyncio.Lock()
_scanned_actives: frozenset[Any] | None = None
# Input partition -> (offset, record timestamp µs) of the last event processed; site -> its partition.
_progress: dict[int, tuple[int, int]] = {}
_site_partition: dict[str, int] = {}


def _arrival_us(msg: Any, wall_us: int) -> int:
    """The processing clock of an event: its Kafka timestamp (when it was produced), not when this worker
    read it, so that a backlog read after a restart or a stall is judged as it happened: sites in it do
    not look silent and their events do not look late. Never ahead of this machine's clock."""
    ts = msg.timestamp
    return min(int(ts * 1_000_000), wall_us) if ts else wall_us


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


async def _publish(outputs: list[Output], message: Any | None) -> int:
    """Send the outputs and wait until Kafka has them all. Late events are dead-lettered as
    ``message`` (only ``on_event`` returns them, for the event being processed). Returns how many
    incident/alert records were sent."""
    emissions, late = route(outputs)
    for item in late:
        DEAD_LETTERED.labels(kind=LATE).inc()
        if message is not None:
            await codec.dead_letter(message, LATE, item.reason)
    for emission in emissions:
        await codec.send(emission.topic, emission.key, emission.record)
        emission.count()
        if emission.topic == INCIDENTS_TOPIC:
            rec = emission.record
            log.info("power_incident", incident_id=rec["incident_id"], kind=rec["kind"], state=rec["state"],
                     site_id=rec["site_id"], summary=rec["summary"])  # fmt: skip
    if emissions or late:
        await app.producer.flush()  # acknowledged before the state that produced them is persisted
    return len(emissions)


async def _handle(event: faust.EventT) -> None:
    started = time.perf_counter()
    record = await codec.decode(event)
    if record is None:
        DEAD_LETTERED.labels(kind="DECODE").inc()
        return
    msg = event.message
    site_id = record.get("site_id")
    key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else msg.key
    if not isinstance(site_id, str) or not site_id or key != site_id:
        # A misrouted event would run in another partition's detector: refuse it.
        DEAD_LETTERED.labels(kind=VALIDATION).inc()
        EVENTS_PROCESSED.labels(result="invalid").inc()
        await codec.dead_letter(msg, VALIDATION, f"record key {key!r} is not its site_id {site_id!r}")
        return
    async with _lock:
        det = detectors.get(site_id)
        _site_partition[site_id] = msg.partition
        try:
            outputs = det.on_event(record, arrival_us=_arrival_us(msg, _wall_us()))
        except InvalidPowerEvent as exc:
            DEAD_LETTERED.labels(kind=exc.kind).inc()
            EVENTS_PROCESSED.labels(result="invalid").inc()
            await codec.dead_letter(msg, exc.kind, str(exc))
            return
        except Exception as exc:  # a detector bug must not stop the site: state back to the table's
            detectors.evict(site_id)
            DEAD_LETTERED.labels(kind="PROCESSING").inc()
            EVENTS_PROCESSED.labels(result="failed").inc()
            await codec.processing_failed(event, exc)
            return
        try:
            sent = await _publish(outputs, msg)
        except BaseException:
            detectors.evict(site_id)  # outputs not durable: the replay must see this event again
            raise
        if sent and msg.timestamp:
            DETECTION_LATENCY.observe(max(0.0, time.time() - msg.timestamp))
        sites[site_id] = encode_state(det)
    EVENTS_PROCESSED.labels(result="ok").inc()
    EVENT_SECONDS.observe(time.perf_counter() - started)


@app.agent(events_topic, concurrency=1)
async def detect(stream: faust.StreamT) -> None:
    async for event in stream.events():
        await _handle(event)
        msg = event.message
        _progress[msg.partition] = (msg.offset, _arrival_us(msg, _wall_us()))


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
    detectors.retain(owned)
    _scanned_actives = actives
    log.info("power_sites_loaded", sites=len(detectors), active_topic_partitions=len(actives))


@app.on_partitions_revoked.connect
async def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
    global _scanned_actives
    async with _lock:
        detectors.clear()  # another worker may change them; reload from the table when they return
        _site_partition.clear()
        _progress.clear()
        _scanned_actives = None


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
                detectors.evict(site_id)
                continue
            if out:
                outputs.extend(out)
                ticked.append(site_id)
        if outputs:
            try:
                await _publish(outputs, None)
            except Exception:
                log.exception("power_tick_publish_failed", sites=len(ticked))
                for site_id in ticked:
                    detectors.evict(site_id)  # derive the same outputs again from the stored state


log.info("power_worker_configured", config=config.to_dict(), partitions=settings.topic_partitions)
