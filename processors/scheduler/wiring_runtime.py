"""What the scheduler worker needs around the pure ``Scheduler``, with no faust import: configuration
from the settings, the envelope of the internal pool-partitioned topic, pool -> partition, the
fast region peek for telemetry routing, and the worker's Prometheus metrics.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka.partitioner import murmur2
from prometheus_client import Counter, Gauge, Histogram

from core.settings import ProcessorValues, Settings
from processors.envconfig import check_names, field_values, settings_of
from processors.scheduler.config import SchedulerConfig

__all__ = [
    "BYPOOL_TOPIC",
    "CONFIG_ENV",
    "Envelope",
    "WorkerKnobs",
    "config_from_env",
    "knobs_from_env",
    "local_pools_of",
    "pack",
    "pack_batch",
    "pack_tick",
    "partition_of",
    "peek_region",
    "peek_ts_region",
    "scheduler_config",
    "unpack",
    "unpack_batch",
    "worker_knobs",
]

PROCESSOR = "scheduler"
# Internal topics are named after the faust app id so they sort with its changelogs.
BYPOOL_TOPIC = "carnival-scheduler-bypool"

CONFIG_ENV = "CARNIVAL_SCHEDULER_CONFIG"
"""A JSON object of ``SchedulerConfig`` fields, e.g. ``{"lease_s": 60, "pools": ["us-west"]}``."""
ENV_PREFIX = "CARNIVAL_SCHEDULER_"
"""One variable per field overrides the JSON: ``CARNIVAL_SCHEDULER_LEASE_S=60``; lists comma-separated."""

# Kinds of records on the pool topic (first byte of the value).
TELEMETRY, REQUEST, STATUS, TICK, HANDOFF = b"T", b"R", b"S", b"K", b"H"
TELEMETRY_BATCH = b"B"  # many telemetry records of one pool in one pool-topic record (``pack_batch``)
SITE_CAPACITY = b"C"  # sites.capacity.v1, to the pool of the site's region
SITE_POWER = b"P"  # sites.power_state.v1, to every partition (it names no region; sites are few)
_SOURCE = struct.Struct(">iq")  # source partition, source offset (for dead letters)
_ITEM = struct.Struct(">iqI")  # source partition, source offset, body length
_TICK = struct.Struct(">q")


# -- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerKnobs:
    """Wiring settings (not scheduler logic): ``CARNIVAL_SCHEDULER_<NAME>``."""

    tick_s: float = 1.0  # how often the worker ticks each of its pool partitions (wall clock)
    batch_max: int = 2000  # most pool events processed as one batch (one producer flush per batch)
    batch_within_s: float = 0.005  # longest a batch waits to fill (adds to match latency)
    hold_max: int = 16  # status reports held per task while its pool is unknown
    # A held status no lifecycle record releases within this much event time goes to deadletter.v1 (EXPIRED)
    held_status_ttl_s: float = 3600.0
    linger_s: float = 0.003  # producer batching delay per hop
    session_timeout_s: float = 10.0  # consumer group session: how long a dead worker keeps partitions
    route_batch_max: int = 5000  # telemetry records routed per producer flush + offset commit
    route_pack_max: int = 200  # telemetry records of one pool packed into one pool-topic record
    route_ttl_s: float = 0.0  # event time a finished task's route is kept; 0: tombstone_ttl_s + 1 h
    route_linger_ms: float = 1.0  # the telemetry router's producer batching delay
    gc_freeze_s: float = 10.0  # freeze the surviving heap this often (0 = off; PoolScheduler._gc_maintenance)
    gc_full_s: float = 1800.0  # full collection of everything, frozen too, this often (0 = never)
    checkpoint_s: float = 0.25  # outputs, then state, then input acks, at least this often (runtime)
    max_unconfirmed: int = 8  # checkpoints whose Kafka acks may be outstanding while batches go on


_TUPLE_FIELDS = frozenset({"pools", "plugged_states", "preempt_reasons", "local_pools"})


def _checked(settings: Settings) -> ProcessorValues:
    raw = settings.scheduler
    check_names(raw, ENV_PREFIX, "scheduler", SchedulerConfig, WorkerKnobs)
    return raw


def scheduler_config(settings: Settings) -> SchedulerConfig:
    """``SchedulerConfig`` from ``CARNIVAL_SCHEDULER_CONFIG`` (JSON) and ``CARNIVAL_SCHEDULER_<FIELD>``.

    Unknown ``CARNIVAL_SCHEDULER_*`` names are an error, so a typo does not silently keep a default.
    """
    raw = _checked(settings)
    values = {**raw.config, **field_values(raw, SchedulerConfig, ENV_PREFIX, list_fields=_TUPLE_FIELDS)}
    return SchedulerConfig.from_mapping(values)


def worker_knobs(settings: Settings) -> WorkerKnobs:
    return WorkerKnobs(**field_values(_checked(settings), WorkerKnobs, ENV_PREFIX))


def config_from_env(environ: Mapping[str, str] | None = None) -> SchedulerConfig:
    """``scheduler_config`` of the process's settings (or of the environment ``environ``)."""
    return scheduler_config(settings_of(environ))


def knobs_from_env(environ: Mapping[str, str] | None = None) -> WorkerKnobs:
    return worker_knobs(settings_of(environ))


# -- partitioning ------------------------------------------------------------------------------------
def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key`` (Java, aiokafka, ours)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def local_pools_of(config: SchedulerConfig, partition: int, partitions: int) -> frozenset[str] | None:
    """Pools whose records land in ``partition``: the scheduler of that partition owns exactly these.

    None when no pools are configured (then any-region tasks spill only among the pools seen there).
    """
    if not config.pools:
        return None
    return frozenset(p for p in config.pools if partition_of(p, partitions) == partition)


# -- envelopes on the pool topic -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Envelope:
    kind: bytes
    payload: bytes
    source_partition: int = -1
    source_offset: int = -1


def pack(kind: bytes, payload: bytes, source_partition: int = -1, source_offset: int = -1) -> bytes:
    return kind + _SOURCE.pack(source_partition, source_offset) + payload


def pack_tick(wall_ms: int) -> bytes:
    return pack(TICK, _TICK.pack(wall_ms))


def unpack(value: bytes) -> Envelope:
    if len(value) < 13:
        raise ValueError("pool record too short")
    part, off = _SOURCE.unpack_from(value, 1)
    return Envelope(value[:1], value[13:], part, off)


def pack_batch(items: list[tuple[bytes, int, int]]) -> bytes:
    """Telemetry bodies of one pool, in order, as one pool-topic record: ``(body, partition, offset)``.

    A pool-topic record costs the worker far more in faust (fetch, event, ack) than the scheduler's
    work on one telemetry record; packing ``route_pack_max`` of them pays that once per pack.
    """
    parts = [TELEMETRY_BATCH, _SOURCE.pack(-1, -1)]
    for body, part, off in items:
        parts.append(_ITEM.pack(part, off, len(body)))
        parts.append(body)
    return b"".join(parts)


def unpack_batch(payload: bytes) -> list[Envelope]:
    """The telemetry envelopes of a ``TELEMETRY_BATCH`` payload (``ValueError`` if truncated)."""
    out: list[Envelope] = []
    pos, end, size = 0, len(payload), _ITEM.size
    while pos < end:
        if pos + size > end:
            raise ValueError("truncated telemetry pack")
        part, off, n = _ITEM.unpack_from(payload, pos)
        pos += size
        if pos + n > end:
            raise ValueError("truncated telemetry pack")
        out.append(Envelope(TELEMETRY, payload[pos : pos + n], part, off))
        pos += n
    return out


def tick_ms(payload: bytes) -> int:
    return int(_TICK.unpack(payload)[0])


# -- fast region peek ----------------------------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def peek_ts_region(body: bytes) -> tuple[int, str]:
    """``(ts, region)`` of a telemetry body written with a schema that starts vin, ts, hw, region.

    Skips a full Avro decode on the router's hot path; the caller checks the writer fingerprint.
    """
    n, pos = _varint(body, 0)  # vin
    pos += n
    ts, pos = _varint(body, pos)
    _, pos = _varint(body, pos)  # hw enum index
    n, pos = _varint(body, pos)
    if n < 0 or pos + n > len(body):
        raise IndexError("region runs past the record")
    return ts, body[pos : pos + n].decode()


def peek_region(body: bytes) -> str:
    """``region`` of a telemetry body (see ``peek_ts_region``)."""
    return peek_ts_region(body)[1]


# -- metrics (carnival_<system>_<verb>_total) ------------------------------------------------------------
EVENTS = Counter(
    "carnival_scheduler_events_processed_total",
    "Pool-stream events given to the scheduler",
    ["kind", "result"],
)
ROUTED = Counter("carnival_scheduler_events_routed_total", "Input records repartitioned by pool", ["topic"])
HELD = Counter(
    "carnival_scheduler_status_held_total",
    "Status reports held until their task's pool is known",
    ["outcome"],
)
OUTPUTS = Counter("carnival_scheduler_records_emitted_total", "Records published by the scheduler", ["topic"])
DECISIONS = Counter(
    "carnival_scheduler_decisions_total",
    "Scheduler counters (assignments, preemptions, stale reports...)",
    ["what"],
)
DEAD_LETTERED = Counter("carnival_scheduler_deadlettered_total", "Records sent to deadletter.v1", ["kind"])
ROUTES_FORGOTTEN = Counter(
    "carnival_scheduler_routes_forgotten_total", "Routes of finished tasks dropped from table routes"
)
REBUILDS = Counter(
    "carnival_scheduler_partition_rebuilds_total", "Scheduler partitions rebuilt from the table"
)
BATCH_SECONDS = Histogram(
    "carnival_scheduler_batch_seconds",
    "Worker time per pool batch (schedule, publish and wait for acks, persist)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "carnival_scheduler_batch_events",
    "Events per pool batch",
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 2000, 5000),
)
QUEUED = Gauge("carnival_scheduler_queued_tasks", "Tasks waiting in this worker's pools", ["partition"])
IDLE = Gauge("carnival_scheduler_idle_nodes", "Eligible idle nodes in this worker's pools", ["partition"])
MAP_ENTRIES = Gauge(
    "carnival_scheduler_map_entries",
    "Entries of each in-memory map that grows with input (docs/scheduler.md, bounded memory)",
    ["map", "partition"],
)
