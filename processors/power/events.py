"""Input normalization and the detector's output types.

Events arrive as decoded ``power.events.v1`` records (fastavro gives ``ts`` as an aware datetime) or as
plain dicts with ``ts`` in integer microseconds. ``normalize_event`` turns either into one compact,
JSON-friendly dict with ``ts`` in integer microseconds, which is what the reorder buffer stores in state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from processors.power.kinds import KINDS

__all__ = [
    "ALTERNATE_SOURCES",
    "KINDS",
    "READING_RANGES",
    "SOE_EVENT_TYPES",
    "Event",
    "Incident",
    "InvalidPowerEvent",
    "LateEvent",
    "Output",
    "SitePowerState",
    "normalize_event",
    "to_datetime",
    "to_micros",
]

Event = dict[str, Any]

DEVICE_TYPES = frozenset({"GRID_METER", "ATS", "STS", "BREAKER", "GENERATOR", "BATTERY", "CONTROLLER"})
EVENT_TYPES = frozenset(
    {
        "SOURCE_LOST",
        "SOURCE_RESTORED",
        "TRANSFER",
        "GEN_START",
        "GEN_RUNNING",
        "GEN_STOP",
        "GEN_FAIL",
        "BREAKER_OPEN",
        "BREAKER_CLOSE",
        "ISLAND_ENTER",
        "ISLAND_EXIT",
        "LOAD_SHED",
        "MEASUREMENT",
        "ALARM",
    }
)
SOURCES = frozenset({"GRID", "GENERATOR", "BATTERY", "NONE"})
ALTERNATE_SOURCES = frozenset({"GENERATOR", "BATTERY"})
# Discrete sequence-of-events records (everything but periodic measurements): SOE recorders buffer them
# locally and upload late, so a late one within ``PowerConfig.soe_buffer_s`` is still applied.
SOE_EVENT_TYPES = EVENT_TYPES - {"MEASUREMENT"}
# Optional readings and the range a real instrument can report. A value outside it (NaN, +-inf, a
# negative frequency, a state of charge of 250 %) is a broken reading, not a condition: the field is
# "not reported" (dropped from the event, counted) so that no rule fires, resolves or records on it. The
# rest of the event is used: a SOURCE_LOST is still a source lost when its load reading is garbage.
READING_RANGES: dict[str, tuple[float, float]] = {
    "load_mw": (-100_000.0, 100_000.0),  # signed: a site exporting power reports a negative load
    "frequency_hz": (0.0, 1_000.0),
    "voltage_pu": (0.0, 10.0),
    "battery_soc_pct": (0.0, 100.0),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_ID_CHARS = 256
"""Longest ``site_id``/``device_id``: they key state and name incidents; a longer one is refused."""
MAX_DETAIL_CHARS = 500
"""``detail`` is kept (in state, in summaries) cut to this many characters."""


class InvalidPowerEvent(ValueError):
    """An event the detector cannot use; the caller sends it to the dead-letter topic."""

    kind = "VALIDATION"


def to_micros(value: Any) -> int:
    """Event time as integer microseconds since the epoch (UTC); naive datetimes are taken as UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPowerEvent(f"ts must be a datetime or integer microseconds, got {value!r}")
    return value


def to_datetime(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def normalize_event(record: Mapping[str, Any], not_reported: list[str] | None = None) -> Event:
    """A decoded power event as a compact dict; raises InvalidPowerEvent if unusable.

    Readings outside ``READING_RANGES`` are left out of the event and their names appended to
    ``not_reported``."""
    try:
        site_id = record["site_id"]
        device_id = record["device_id"]
        seq = record["seq"]
        device_type = record["device_type"]
        event_type = record["event_type"]
        ts = to_micros(record["ts"])
    except KeyError as exc:
        raise InvalidPowerEvent(f"missing field {exc.args[0]!r}") from None
    if not isinstance(site_id, str) or not site_id or not isinstance(device_id, str) or not device_id:
        raise InvalidPowerEvent("site_id and device_id must be non-empty strings")
    if len(site_id) > MAX_ID_CHARS or len(device_id) > MAX_ID_CHARS:
        raise InvalidPowerEvent(f"site_id and device_id are at most {MAX_ID_CHARS} characters")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise InvalidPowerEvent(f"seq must be an integer, got {seq!r}")
    if device_type not in DEVICE_TYPES:
        raise InvalidPowerEvent(f"unknown device_type {device_type!r}")
    if event_type not in EVENT_TYPES:
        raise InvalidPowerEvent(f"unknown event_type {event_type!r}")
    event: Event = {
        "site_id": site_id,
        "device_id": device_id,
        "device_type": device_type,
        "event_type": event_type,
        "ts": ts,
        "seq": seq,
    }
    for name in ("source_from", "source_to"):
        value = record.get(name)
        if value is not None:
            if value not in SOURCES:
                raise InvalidPowerEvent(f"unknown {name} {value!r}")
            event[name] = value
    for name, (low, high) in READING_RANGES.items():
        value = record.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidPowerEvent(f"{name} must be a number, got {value!r}")
            if low <= value <= high:  # False for NaN
                event[name] = float(value)
            elif not_reported is not None:
                not_reported.append(name)
    gens = record.get("gens_online")
    if gens is not None:
        if isinstance(gens, bool) or not isinstance(gens, int) or gens < 0:
            raise InvalidPowerEvent(f"gens_online must be a non-negative integer, got {gens!r}")
        event["gens_online"] = gens
    detail = record.get("detail")
    if detail is not None:
        event["detail"] = str(detail)[:MAX_DETAIL_CHARS]
    return event


@dataclass(frozen=True, slots=True)
class Incident:
    """One OPEN / UPDATE / RESOLVED record for ``power.incidents.v1``. Times in microseconds."""

    incident_id: str
    site_id: str
    kind: str
    state: str
    started_us: int
    summary: str
    updated_us: int
    ended_us: int | None = None
    transfer_ms: float | None = None
    source_from: str | None = None
    source_to: str | None = None
    min_battery_soc_pct: float | None = None
    device_id: str | None = None
    time_on_alternate_ms: float | None = None
    gens_online: int | None = None
    load_mw: float | None = None
    parent_incident_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The Avro record for ``power.incidents.v1`` (timestamps as aware UTC datetimes)."""
        return {
            "incident_id": self.incident_id,
            "site_id": self.site_id,
            "kind": self.kind,
            "state": self.state,
            "started_at": to_datetime(self.started_us),
            "ended_at": None if self.ended_us is None else to_datetime(self.ended_us),
            "transfer_ms": self.transfer_ms,
            "source_from": self.source_from,
            "source_to": self.source_to,
            "min_battery_soc_pct": self.min_battery_soc_pct,
            "summary": self.summary,
            "device_id": self.device_id,
            "updated_at": to_datetime(self.updated_us),
            "time_on_alternate_ms": self.time_on_alternate_ms,
            "gens_online": self.gens_online,
            "load_mw": self.load_mw,
            "parent_incident_id": self.parent_incident_id,
        }


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event that arrived after the lateness allowance; not applied. Send it to the dead-letter topic
    (error kind ``LATE``) so nothing is dropped silently."""

    event: Event
    reason: str


@dataclass(frozen=True, slots=True)
class SitePowerState:
    """One record for ``sites.power_state.v1`` (see ``processors.power.site_state``). Times in
    microseconds; ``grid_since_us`` only while not GRID."""

    site_id: str
    ts_us: int
    state: str
    since_us: int
    battery_runtime_min: float | None = None
    incident_id: str | None = None
    load_mw: float | None = None
    battery_soc_pct: float | None = None
    grid_since_us: int | None = None

    def to_record(self) -> dict[str, Any]:
        """The Avro record for ``sites.power_state.v1`` (timestamps as aware UTC datetimes)."""
        grid_since = self.grid_since_us
        return {
            "site_id": self.site_id,
            "ts": to_datetime(self.ts_us),
            "state": self.state,
            "since": to_datetime(self.since_us),
            "battery_runtime_min": self.battery_runtime_min,
            "incident_id": self.incident_id,
            "load_mw": self.load_mw,
            "battery_soc_pct": self.battery_soc_pct,
            "grid_since": None if grid_since is None else to_datetime(grid_since),
        }


Output = Incident | LateEvent | SitePowerState
