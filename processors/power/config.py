"""Thresholds of the failover detector: one frozen dataclass, every value configurable.

Defaults follow the "Datacenter power failover" section of DOMAIN.md; where the domain gives a
nominal value and a detector needs a margin, the choice is written next to the field.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from streams.event_time import DEFAULT_MAX_FUTURE_SKEW_S

__all__ = ["PowerConfig", "PowerKnobs"]

_S = 1_000_000  # microseconds per second
_MS = 1_000  # microseconds per millisecond


@functools.cache
def battery_mwh_by_site(text: str) -> dict[str, float]:
    """``dc-ams-1=31.2,dc-fra-2=7.8`` -> {site: MWh}; ``ValueError`` for a malformed pair."""
    out: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        site, sep, value = pair.partition("=")
        try:
            mwh = float(value) if sep and site.strip() else math.nan
        except ValueError:
            mwh = math.nan
        if not 0 < mwh < math.inf:
            raise ValueError(f"PowerConfig.battery_mwh_by_site: {pair!r} is not site=MWh (MWh > 0)")
        out[site.strip()] = mwh
    return out


@dataclass(frozen=True, slots=True)
class PowerConfig:
    """Detector thresholds. Durations are seconds or milliseconds as the name says."""

    # -- ordering ---------------------------------------------------------------------------------
    lateness_ms: float = 1_000.0
    """Reorder allowance: an event may arrive this much event time after a later one and still be
    processed in event-time order. Decisions wait for it unless ``fast_release`` proves no earlier
    event can still come."""
    fast_release: bool = True
    """Release an event before the allowance elapsed when every known device has already delivered,
    without sequence holes, an event later than it (per-device sequence numbers prove nothing earlier
    is in flight). Only a device never seen before can then still deliver something earlier."""
    device_forget_s: float = 3_600.0
    """A device silent this long (event time) is forgotten: it no longer holds back fast release, and
    the time of its last generator event goes too."""
    max_devices: int = 1_024
    """Most devices one site tracks at a time (real sites have dozens). While that many are tracked,
    an event of a further device is refused (VALIDATION dead letter) until idle ones are forgotten."""
    max_buffered: int = 100_000
    """Most events one site's reorder buffer holds; past it the earliest is released at once (an
    overload: ordering within the allowance is then no longer guaranteed)."""
    soe_buffer_s: float = 120.0
    """Sequence-of-events recorders buffer locally and upload when they can (DOMAIN.md), so discrete
    events (every event type but MEASUREMENT) may come minutes late. One that arrives past
    ``lateness_ms`` but at most this far behind the site's clock is applied when it arrives, in its
    own event time (it revises the incident), instead of being dead-lettered as LATE. The simulator
    delivers 1 % of events 5-60 s late; 120 s covers that with a margin. Late measurements are always
    dead-lettered (newer readings superseded them). 0 dead-letters every late event."""

    # -- transfers -------------------------------------------------------------------------------
    blip_ignore_s: float = 3.0
    """An off-grid episode shorter than this (source lost and back, or alternate on load and back) is
    a blip, not a failover. Island entry is deliberate and never a blip."""
    sts_transfer_limit_ms: float = 8.0
    """Static transfer switch limit. Nominal is a quarter cycle (4.2 ms at 60 Hz); the default alarms
    past half a cycle (8.3 ms) so that skew between the detecting meter and the switch does not page
    anyone. Set 4.2 for the strict reading."""
    ats_transfer_limit_ms: float = 10_000.0
    """Automatic transfer switch (and any other device) limit: NFPA 110 Type 10."""
    failed_transfer_s: float = 30.0
    """No alternate source on load this long after the normal source was lost: failed transfer.
    Batteries bridge 10-30 s of generator start, so past 30 s the load is at risk."""
    gen_start_timeout_s: float = 30.0
    """GEN_START without GEN_RUNNING from that generator within this time: start failure."""

    # -- stability and flapping ------------------------------------------------------------------
    retransfer_stable_s: float = 300.0
    """After retransfer to grid, the site must stay on grid this long before the incident resolves;
    losing grid again inside it is flapping (and the same incident continues)."""
    flap_window_s: float = 1_800.0
    """Window in which ``flap_changes`` source changes count as flapping."""
    flap_changes: int = 4
    """Grid<->alternate source changes within ``flap_window_s`` that count as flapping."""

    # -- while islanded --------------------------------------------------------------------------
    battery_reserve_pct: float = 10.0
    """State of charge below which an islanded site raises BATTERY_RESERVE."""
    battery_hysteresis_pct: float = 2.0
    """BATTERY_RESERVE resolves once state of charge is above reserve + hysteresis."""
    freq_min_hz: float = 58.0
    """Underfrequency trip setting (DOMAIN: 58 Hz)."""
    freq_max_hz: float = 62.0
    """Overfrequency, symmetric to the underfrequency setting around 60 Hz."""
    voltage_sag_pu: float = 0.9
    """Sag below this (per unit), see ``voltage_interruption_pu``."""
    voltage_swell_pu: float = 1.1
    """Swell above this (per unit), see ``voltage_interruption_pu``."""
    voltage_interruption_pu: float = 0.1
    """IEEE 1159 classes: sag below 0.9 pu, swell above 1.1 pu, interruption below 0.1 pu."""
    pq_clear_s: float = 10.0
    """A power-quality excursion resolves after this long without an out-of-bounds measurement."""

    # -- site power state (sites.power_state.v1) ----------------------------------------------------
    battery_mwh: float = 15.6
    """Battery energy of a site, MWh, for the runtime estimate (energy above ``battery_reserve_pct`` at
    the present load). DOMAIN: Megapack-class units hold about 3.9 MWh; the default is 4 units."""
    battery_mwh_by_site: str = ""
    """Sites whose battery differs from ``battery_mwh``: ``site=MWh`` pairs, comma separated
    (``dc-ams-1=31.2,dc-fra-2=7.8``)."""
    runtime_step_min: float = 1.0
    """A new power state record without a state change only when the battery runtime estimate moved by
    at least this many minutes since the last record ..."""
    runtime_step_pct: float = 5.0
    """... and by at least this share of it (percent), so that a noisy load reading does not publish a
    record per event: a whole discharge publishes a bounded number of runtime updates."""

    # -- other -----------------------------------------------------------------------------------
    load_shed_hold_s: float = 300.0
    """A LOAD_SHED incident outside a failover resolves after this long without further shedding."""
    gap_hold_s: float = 300.0
    """A SEQUENCE_GAP incident resolves after this long without a further gap from that device."""
    silent_after_s: float = 60.0
    """No event from a site for this long (processing time, see ``Detector.on_tick``): SITE_SILENT."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or f.name == "battery_mwh_by_site":
                continue
            if not isinstance(value, int | float) or not 0 <= value < math.inf:  # NaN fails too
                raise ValueError(f"PowerConfig.{f.name} must be a finite non-negative number, got {value!r}")
        if self.max_devices < 1 or self.max_buffered < 1:
            raise ValueError("PowerConfig.max_devices and max_buffered must be at least 1")
        if self.flap_changes < 2:
            raise ValueError("PowerConfig.flap_changes must be at least 2")
        if not self.voltage_interruption_pu <= self.voltage_sag_pu <= 1.0 <= self.voltage_swell_pu:
            raise ValueError("PowerConfig voltages must satisfy interruption <= sag <= 1.0 <= swell")
        if self.freq_min_hz >= self.freq_max_hz:
            raise ValueError("PowerConfig.freq_min_hz must be below freq_max_hz")
        if not isinstance(self.battery_mwh_by_site, str):
            raise ValueError("PowerConfig.battery_mwh_by_site must be a string of site=MWh pairs")
        battery_mwh_by_site(self.battery_mwh_by_site)  # raises on a malformed pair

    def battery_mwh_of(self, site_id: str) -> float:
        """The battery energy of ``site_id``, MWh (``battery_mwh_by_site``, else ``battery_mwh``)."""
        return battery_mwh_by_site(self.battery_mwh_by_site).get(site_id, self.battery_mwh)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PowerConfig:
        """Build from a mapping (e.g. settings); unknown keys are an error so typos do not pass."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown PowerConfig keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Microsecond views used by the detector (event time is integer microseconds).
    @property
    def lateness_us(self) -> int:
        return int(self.lateness_ms * _MS)

    @property
    def soe_buffer_us(self) -> int:
        return int(self.soe_buffer_s * _S)

    def us(self, seconds: float) -> int:
        return int(seconds * _S)


@dataclass(frozen=True, slots=True)
class PowerKnobs:
    """Wiring of the power worker (not detector logic): batches, checkpoints, the Kafka clients."""

    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S
    """An event whose ``ts`` is more than this past its Kafka timestamp (when the broker got it, never the
    wall clock: a replay of a simulated past is judged like live traffic) is dead-lettered as
    FUTURE_TIMESTAMP: it would move its site's watermark and make every later event of the site late."""
    max_sites: int = 10_000
    """Most site detectors kept in memory. Past it the least recently active site without unsaved changes
    is evicted (its state stays in the table and is read again on its next event); an evicted site is
    not ticked, so it raises no SITE_SILENT until it is loaded again."""
    tick_s: float = 1.0
    """How often the worker ticks every site of its partitions (``Detector.on_tick``), wall clock."""
    batch_max: int = 5000
    """Most events processed as one batch: a batch is what is waiting when the worker asks (one event
    at low rates, no batching window), up to this many under load."""
    checkpoint_s: float = 0.5
    """Site states are written at most once per checkpoint (one changelog record per dirty site); the
    offsets of their events are committed when those records are in Kafka. Checkpoints run beside the
    batches: their cadence sets how much is replayed after a crash, never the detection latency."""
    checkpoint_events: int = 20_000
    """... or after this many unsaved events, whichever comes first."""
    max_unconfirmed: int = 4
    """Checkpoints whose Kafka acks may still be outstanding while the worker goes on."""
    session_timeout_s: float = 10.0
    """A SIGKILLed worker's partitions move on after this long (a failover detector that is down for a
    minute is itself an incident)."""
    linger_ms: float = 0.0
    """How long the producer may hold an incident or alert to batch it with others (librdkafka
    ``linger.ms``): 0, an alert leaves as soon as its rule fired (records produced while a request is in
    flight are batched anyway)."""
    fetch_wait_ms: int = 5
    """Longest the broker holds a fetch while it has nothing new (``fetch.wait.max.ms``): what an
    event produced into an idle partition may wait before the worker sees it."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low_ok = value >= 0 if f.name == "linger_ms" else value > 0
            if not (low_ok and value < math.inf):  # NaN fails too
                raise ValueError(f"PowerKnobs.{f.name} must be positive and finite, got {value!r}")
