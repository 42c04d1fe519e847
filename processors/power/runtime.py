"""What the power worker needs around the pure detector, with no Kafka import: the detector config from
the settings, the in-memory detector cache, output routing and the worker's Prometheus metrics.

``processors/power/worker.py`` is the Kafka wiring that uses these; tests call them directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
import structlog
from prometheus_client import Counter, Gauge, Histogram

from core.settings import ProcessorValues, Settings
from processors.envconfig import check_names, field_values, settings_of
from processors.power.alerts import alert_for_incident
from processors.power.config import PowerConfig, PowerKnobs
from processors.power.detector import Detector
from processors.power.events import Incident, InvalidPowerEvent, LateEvent, Output, SitePowerState, to_micros
from streams.deadletter import FUTURE_TIMESTAMP, LATE, PROCESSING, VALIDATION
from streams.event_time import future_skew_error
from streams.topics import ALERTS_TOPIC, INCIDENTS_TOPIC, SITE_POWER_STATE_TOPIC

__all__ = [
    "BatchRun",
    "CONFIG_ENV",
    "admission_error",
    "set_memory_gauges",
    "ENV_PREFIX",
    "DetectorCache",
    "Emission",
    "config_from_env",
    "decode_state",
    "encode_state",
    "knobs_from_env",
    "power_config",
    "power_knobs",
    "rewind",
    "route",
    "run_batch",
]

log = structlog.get_logger(__name__)


CONFIG_ENV = "CARNIVAL_POWER_CONFIG"
"""A JSON object of ``PowerConfig`` fields, e.g. ``{"silent_after_s": 30}``."""
ENV_PREFIX = "CARNIVAL_POWER_"
"""One variable per field overrides the JSON: ``CARNIVAL_POWER_SILENT_AFTER_S=30``."""

# -- metrics (carnival_<system>_<verb>_total) -----------------------------------------------------
EVENTS_PROCESSED = Counter(
    "carnival_power_events_processed_total", "Power events handed to a site detector", ["result"]
)
INCIDENTS_EMITTED = Counter(
    "carnival_power_incidents_emitted_total", "Incident records published", ["kind", "state"]
)
ALERTS_EMITTED = Counter("carnival_power_alerts_emitted_total", "Alerts published", ["kind", "status"])
SITE_STATES_EMITTED = Counter(
    "carnival_power_site_states_emitted_total", "Site power state records published", ["state"]
)
DEAD_LETTERED = Counter(
    "carnival_power_deadlettered_total", "Power events sent to the dead-letter topic", ["kind"]
)
DETECTION_LATENCY = Histogram(
    "carnival_power_detection_latency_seconds",
    "Kafka timestamp of the deciding event to its incident/alert acknowledged by Kafka",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SECONDS = Histogram(
    "carnival_power_batch_seconds",
    "Worker time for one batch of power events (decode, detect, publish, persist, ack)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
BATCH_EVENTS = Histogram(
    "carnival_power_batch_events",
    "Power events per batch (the agent takes what is waiting, up to its batch limit)",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000),
)
CHECKPOINT_SECONDS = Histogram(
    "carnival_power_checkpoint_seconds",
    "Worker time to write the dirty sites' states of one checkpoint (the Kafka acks are awaited apart)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
STATE_WRITES = Counter(
    "carnival_power_state_writes_total",
    "Site states written to the table (one per dirty site per checkpoint)",
)
NOT_REPORTED = Counter(
    "carnival_power_readings_not_reported_total",
    "Readings left out of their event as broken (NaN, infinite, outside what an instrument reports)",
)
# What the worker holds in memory, set at every tick (each is bounded: docs/power.md, "Bounded memory").
SITES_IN_MEMORY = Gauge("carnival_power_sites_in_memory", "Site detectors in memory (max_sites)")
DEVICES_TRACKED = Gauge(
    "carnival_power_devices_tracked", "Devices tracked by the in-memory sites (max_devices per site)"
)
EVENTS_BUFFERED = Gauge(
    "carnival_power_events_buffered", "Events held in the sites' reorder buffers (max_buffered per site)"
)
OPEN_INCIDENTS = Gauge("carnival_power_open_incidents", "Open incidents of the in-memory sites")
DETECTORS_EVICTED = Counter(
    "carnival_power_detectors_evicted_total", "Site detectors dropped from memory past max_sites"
)
DETECTORS_LOADED = Counter(
    "carnival_power_detectors_loaded_total", "Site detectors loaded into memory", ["source"]
)


# -- configuration --------------------------------------------------------------------------------
RETIRED = {
    name: "the power worker no longer runs on faust: batches are whatever is waiting, and commits follow "
    "each checkpoint"
    for name in ("batch_within_s", "producer_max_batch_size", "commit_every")
}
"""Settings of the faust power worker, accepted with a warning."""


def _checked(settings: Settings) -> ProcessorValues:
    raw = settings.power
    check_names(raw, ENV_PREFIX, "power detector", PowerConfig, PowerKnobs, retired=RETIRED)
    return raw


def power_config(settings: Settings) -> PowerConfig:
    """``PowerConfig`` from ``CARNIVAL_POWER_CONFIG`` (JSON) and ``CARNIVAL_POWER_<FIELD>`` variables.

    Unknown ``CARNIVAL_POWER_*`` names are an error, so a typo does not silently keep a default.
    """
    raw = _checked(settings)
    return PowerConfig.from_mapping({**raw.config, **field_values(raw, PowerConfig, ENV_PREFIX)})


def power_knobs(settings: Settings) -> PowerKnobs:
    """The worker's ``PowerKnobs`` from ``CARNIVAL_POWER_<KNOB>`` variables."""
    return PowerKnobs(**field_values(_checked(settings), PowerKnobs, ENV_PREFIX))


def config_from_env(environ: Mapping[str, str] | None = None) -> PowerConfig:
    """``power_config`` of the process's settings (or of the environment ``environ``)."""
    return power_config(settings_of(environ))


def knobs_from_env(environ: Mapping[str, str] | None = None) -> PowerKnobs:
    return power_knobs(settings_of(environ))


# -- state ----------------------------------------------------------------------------------------
def encode_state(detector: Detector) -> bytes:
    return orjson.dumps(detector.to_dict())


def decode_state(data: bytes, config: PowerConfig) -> Detector:
    return Detector.from_dict(orjson.loads(data), config)


class DetectorCache:
    """Detectors of the sites this worker owns, kept in memory between events.

    The table is the durable copy; the cache only saves a ``from_dict`` per event. ``load`` reads the
    table's bytes for a site (None when unknown). At most ``max_sites`` detectors are kept: loading one
    more evicts the earliest loaded sites, except sites ``pinned`` holds (changes not saved yet) and sites
    in ``held`` (touched by the batch being run).
    A state that cannot be read (say, a state version from an incompatible release) is logged and
    replaced by a fresh detector rather than stopping the site's processing for good.
    """

    def __init__(
        self,
        config: PowerConfig,
        load: Callable[[str], bytes | None],
        clock_us: Callable[[], int],
        max_sites: int = 10_000,
    ) -> None:
        self.config = config
        self._load = load
        self._clock_us = clock_us
        self._dets: dict[str, Detector] = {}
        self.max_sites = max_sites
        self.pinned: Callable[[str], bool] = lambda site_id: False
        self.held: set[str] = set()

    def get(self, site_id: str) -> Detector:
        det = self._dets.get(site_id)
        if det is None:
            if len(self._dets) >= self.max_sites:
                self._evict_for_one()
            det = self._dets[site_id] = self._restore(site_id)
        return det

    def _evict_for_one(self) -> None:
        """Make room: drop the earliest loaded unpinned sites, a quarter of the cache at once (so a flood
        of new sites costs one scan per many loads); pinned sites may leave the cache over its bound."""
        room = max(1, self.max_sites // 4)
        for site_id in [s for s in self._dets if s not in self.held and not self.pinned(s)][:room]:
            del self._dets[site_id]
            DETECTORS_EVICTED.inc()

    def _restore(self, site_id: str) -> Detector:
        det = self._read(site_id)
        # Silence is measured in processing time from the last arrival, and this worker cannot tell a
        # site's silence from its own downtime (or a backlog it has not read yet): a site restored from
        # the table gets ``silent_after_s`` of grace from now instead of paging at once on restart.
        if det.last_arrival is not None:
            det.last_arrival = max(det.last_arrival, self._clock_us())
        return det

    def _read(self, site_id: str) -> Detector:
        data = self._load(site_id)
        if data is None:
            DETECTORS_LOADED.labels(source="new").inc()
            return Detector(site_id, self.config)
        try:
            det = decode_state(data, self.config)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("power_state_unreadable", site_id=site_id, error=f"{type(exc).__name__}: {exc}")
            DETECTORS_LOADED.labels(source="reset").inc()
            return Detector(site_id, self.config)
        DETECTORS_LOADED.labels(source="table").inc()
        return det

    def peek(self, site_id: str) -> Detector | None:
        """The in-memory detector of a site, None if it is not loaded (no table read)."""
        return self._dets.get(site_id)

    def __contains__(self, site_id: object) -> bool:
        return site_id in self._dets

    def __len__(self) -> int:
        return len(self._dets)

    def items(self) -> Iterator[tuple[str, Detector]]:
        return iter(list(self._dets.items()))

    def evict(self, site_id: str) -> None:
        self._dets.pop(site_id, None)

    def clear(self) -> None:
        self._dets.clear()

    def retain(self, site_ids: set[str]) -> None:
        for site_id in [s for s in self._dets if s not in site_ids]:
            del self._dets[site_id]


def set_memory_gauges(cache: DetectorCache) -> None:
    """The memory gauges from the in-memory sites (one pass over them, at tick time)."""
    devices = buffered = incidents = 0
    for _, det in cache.items():
        devices += len(det.buffer.devices)
        buffered += len(det.buffer)
        incidents += len(det.open)
    SITES_IN_MEMORY.set(len(cache))
    DEVICES_TRACKED.set(devices)
    EVENTS_BUFFERED.set(buffered)
    OPEN_INCIDENTS.set(incidents)


# -- outputs --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Emission:
    """One record to publish: an incident on ``power.incidents.v1``, an alert on ``alerts.v1`` or a site
    power state on ``sites.power_state.v1``."""

    topic: str
    key: str
    record: dict[str, Any]

    def count(self) -> None:
        rec = self.record
        if self.topic == INCIDENTS_TOPIC:
            INCIDENTS_EMITTED.labels(kind=rec["kind"], state=rec["state"]).inc()
        elif self.topic == SITE_POWER_STATE_TOPIC:
            SITE_STATES_EMITTED.labels(state=rec["state"]).inc()
        else:
            ALERTS_EMITTED.labels(kind=rec["kind"], status=rec["status"]).inc()


def route(outputs: list[Output]) -> tuple[list[Emission], list[LateEvent]]:
    """Detector outputs -> records to publish (incident first, then its alert; site power states keyed
    by site_id) and late events."""
    emissions: list[Emission] = []
    late: list[LateEvent] = []
    for out in outputs:
        if isinstance(out, Incident):
            emissions.append(Emission(INCIDENTS_TOPIC, out.site_id, out.to_record()))
            alert = alert_for_incident(out)
            if alert is not None:
                emissions.append(Emission(ALERTS_TOPIC, alert["fingerprint"], alert))
        elif isinstance(out, SitePowerState):
            emissions.append(Emission(SITE_POWER_STATE_TOPIC, out.site_id, out.to_record()))
        else:
            late.append(out)
    return emissions, late


# -- batches --------------------------------------------------------------------------------------
S = TypeVar("S")


@dataclass(slots=True)
class BatchRun(Generic[S]):
    """What one batch of events did to the detectors. ``S`` is whatever identifies an event's source
    (the faust event in the worker): dead letters name it, and the table write of a site uses the
    source of its last event (its partition)."""

    emissions: list[tuple[S, Emission]] = field(default_factory=list)
    """Records to publish, in event order, with the event that produced them."""
    dead: list[tuple[S, str, str]] = field(default_factory=list)
    """(source, dead-letter kind, reason): invalid events, late events, events that broke a detector."""
    touched: dict[str, S] = field(default_factory=dict)
    """site_id -> source of the last event applied to it, in order of first touch: states to write."""
    ok: int = 0
    invalid: int = 0
    failed: int = 0
    late: int = 0


_OK = EVENTS_PROCESSED.labels(result="ok")
_INVALID = EVENTS_PROCESSED.labels(result="invalid")
_FAILED = EVENTS_PROCESSED.labels(result="failed")


def admission_error(
    record: Mapping[str, Any], key: str, produced_ms: int | None, max_future_skew_s: float
) -> tuple[str, str] | None:
    """Why a decoded event may not reach a detector at all, as (dead-letter kind, reason), or None.

    A misrouted event (key is not its site_id) would run in another partition's detector. An event more
    than ``max_future_skew_s`` past ``produced_ms`` (its Kafka timestamp: the check never reads the wall
    clock) would move its site's watermark: every later event of the site would be late. A ``ts`` the
    detector cannot read is left to it (VALIDATION)."""
    site_id = record.get("site_id")
    if not isinstance(site_id, str) or not site_id or key != site_id:
        return VALIDATION, f"record key {key!r} is not its site_id {site_id!r}"
    try:
        ts_us = to_micros(record.get("ts"))
    except InvalidPowerEvent:
        return None
    why = future_skew_error(ts_us // 1000, produced_ms, max_future_skew_s)
    return None if why is None else (FUTURE_TIMESTAMP, f"site {site_id}: {why}")


def run_batch(
    cache: DetectorCache,
    items: Sequence[tuple[str, Mapping[str, Any], int, S]],
    before_load: Callable[[S], object] | None = None,
    unsaved: Callable[[str], Iterable[tuple[Mapping[str, Any], int]]] | None = None,
) -> BatchRun[S]:
    """Feed a batch of decoded events, ``(site_id, record, arrival_us, source)`` in stream order, to
    the sites' detectors. Pure (no I/O): the caller publishes ``emissions`` and dead letters, and
    persists the ``touched`` sites' states before it acks the batch; they stay in ``cache.held`` (never
    evicted) until the caller has them in its unsaved set and clears it.

    ``before_load(source)`` runs before a site's detector is read from the table (faust's RocksDB
    store reads the partition of the current event).

    An event that makes a detector raise (a bug) is dead-lettered as PROCESSING and leaves no trace:
    that site's detector (the only one it touched: detectors are independent) is read again from the
    table and brought forward by the site's events that are applied but not saved yet (``unsaved``:
    those of earlier batches since the site's state was last written, as ``(record, arrival_us)``),
    then by its earlier events in this batch. Detectors are deterministic, so this repeats what was
    already emitted; those outputs are dropped."""
    run: BatchRun[S] = BatchRun()
    emissions, dead, touched = run.emissions, run.dead, run.touched
    peek = cache._dets.get
    for i, (site_id, record, arrival_us, source) in enumerate(items):
        det = peek(site_id)
        if det is None:
            if before_load is not None:
                before_load(source)
            det = cache.get(site_id)
        stats = det.stats
        broken = stats["not_reported"]
        try:
            outputs = det.on_event(record, arrival_us=arrival_us)
        except InvalidPowerEvent as exc:  # raised before the detector changes anything
            dead.append((source, exc.kind, str(exc)))
            run.invalid += 1
            continue
        except Exception as exc:
            log.exception("power_event_failed", site_id=site_id, index=i)
            dead.append((source, PROCESSING, f"{type(exc).__name__}: {exc}"))
            run.failed += 1
            _rewind(cache, site_id, source, items[:i], before_load, unsaved)
            continue
        touched[site_id] = source
        cache.held.add(site_id)
        run.ok += 1
        if stats["not_reported"] != broken:
            NOT_REPORTED.inc(stats["not_reported"] - broken)
        if outputs:
            for out in outputs:
                if isinstance(out, LateEvent):
                    dead.append((source, LATE, out.reason))
                    run.late += 1
                else:
                    emissions.extend((source, e) for e in route([out])[0])
    if run.ok:
        _OK.inc(run.ok)
    if run.invalid:
        _INVALID.inc(run.invalid)
    if run.failed:
        _FAILED.inc(run.failed)
    return run


def _rewind(
    cache: DetectorCache,
    site_id: str,
    source: S,
    before: Sequence[tuple[str, Mapping[str, Any], int, S]],
    before_load: Callable[[S], object] | None,
    unsaved: Callable[[str], Iterable[tuple[Mapping[str, Any], int]]] | None,
) -> None:
    """Rebuild a site's detector as it was before the event that broke it (see ``run_batch``)."""
    if before_load is not None:
        before_load(source)
    replay = list(unsaved(site_id)) if unsaved is not None else []
    replay += [(record, arrival) for sid, record, arrival, _ in before if sid == site_id]
    rewind(cache, site_id, replay)


def rewind(cache: DetectorCache, site_id: str, replay: Iterable[tuple[Mapping[str, Any], int]]) -> None:
    """Read a site's detector again from the table and apply ``replay``, its events that were applied
    since its state was last written, ``(record, arrival_us)`` in the order they were applied; their
    outputs are dropped (they were emitted the first time). Detectors are deterministic; should the
    replay raise all the same, the exception propagates: the caller cannot keep a detector that lacks
    events it will ack."""
    cache.evict(site_id)
    det = cache.get(site_id)
    for record, arrival in replay:
        # Refused before it changed anything, the first time too (it was dead-lettered then).
        with contextlib.suppress(InvalidPowerEvent):
            det.on_event(record, arrival_us=arrival)
