"""Per-site reorder buffer: event-time order from out-of-order, duplicated, gappy delivery.

Events are held in a buffer sorted by (ts, device_id, seq) and released when nothing earlier can still
arrive within the lateness allowance:

* **watermark**: ``clock - lateness`` where ``clock`` is the latest event time seen (extrapolated by
  processing time while the site is idle, see ``advance_clock``). An event earlier than the
  watermark when it arrives is *late* and is not applied.
* **fast release** (optional): the head is released early when its own device has delivered every
  sequence number up to it, and every other known device has delivered, without holes, an event
  strictly later than it. Per-device sequence numbers then prove that nothing earlier is in flight.

Bounded: at most ``max_devices`` devices are tracked (``admits`` says whether an event's device fits;
devices silent ``forget_us`` of event time are forgotten and listed in ``forgotten`` for the detector)
and at most ``max_buffered`` events held (past it the head is released at once).

Duplicates (same device and seq, buffered or already released) are dropped. A hole in a device's
sequence numbers that is still open when the watermark passes it is reported as a gap; an event that
fills a reported hole afterwards comes back as late. A device whose sequence restarts below what was
seen, with a newer timestamp, is taken as rebooted.

All state is plain dicts and lists (``to_dict``/``from_dict``) so it can live in a changelog table.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Literal

from processors.power.events import Event

__all__ = ["Gap", "PushResult", "ReorderBuffer"]

PushResult = Literal["buffered", "duplicate", "late", "late_gap_fill"]
_MAX_MISSING_RANGES = 16


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers ``first``..``last`` of ``device_id`` never arrived within the allowance."""

    device_id: str
    first: int
    last: int
    ts: int  # event time of the event that revealed the gap

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def _key(event: Event) -> tuple[int, str, int]:
    return (event["ts"], event["device_id"], event["seq"])


class ReorderBuffer:
    """Holds one site's events until they can be released in event-time order."""

    __slots__ = (
        "lateness_us",
        "fast_release",
        "forget_us",
        "_buf",
        "_pending",
        "devices",
        "max_ts",
        "clock",
        "last_released",
        "_next_forget",
        "max_devices",
        "max_buffered",
        "forgotten",
    )

    def __init__(
        self, lateness_us: int, fast_release: bool = True, forget_us: int = 3_600_000_000,
        max_devices: int = 1_024, max_buffered: int = 100_000,
    ) -> None:  # fmt: skip
        self.lateness_us = lateness_us
        self.fast_release = fast_release
        self.forget_us = forget_us
        self.max_devices = max_devices
        self.max_buffered = max_buffered
        self.forgotten: list[str] = []  # devices forgotten since the detector last looked
        self._buf: list[Event] = []
        self._pending: dict[tuple[str, int], int] = {}  # (device, seq) -> ts, for buffered events
        # device -> {"rel": last released seq | None, "fr": contiguous frontier seq, "fr_ts": its ts,
        #            "last": latest ts seen, "missing": [[first, last], ...] reported holes}
        self.devices: dict[str, dict[str, Any]] = {}
        self.max_ts: int | None = None
        self.clock: int | None = None
        self.last_released: tuple[int, str, int] | None = None
        self._next_forget = 0

    # -- time ---------------------------------------------------------------------------------
    @property
    def watermark(self) -> int | None:
        """Every event earlier than this that will ever be applied has arrived."""
        return None if self.clock is None else self.clock - self.lateness_us

    def advance_clock(self, clock_us: int) -> None:
        """Move the site's event clock forward (never back), e.g. by processing time while idle."""
        if self.clock is None or clock_us > self.clock:
            self.clock = clock_us

    def __len__(self) -> int:
        return len(self._buf)

    # -- input --------------------------------------------------------------------------------
    def admits(self, device_id: str, ts: int) -> bool:
        """Whether an event of ``device_id`` at ``ts`` fits: a tracked device, or room for one more. When
        full, devices idle ``forget_us`` before ``ts`` are forgotten first (when the next forget pass is
        due), so a flood of devices that then go silent does not keep new devices out for good."""
        if device_id in self.devices or len(self.devices) < self.max_devices:
            return True
        if ts >= self._next_forget:
            self._forget_idle(ts if self.max_ts is None else max(ts, self.max_ts))
        return len(self.devices) < self.max_devices

    def push(self, event: Event) -> PushResult:
        dev_id, seq, ts = event["device_id"], event["seq"], event["ts"]
        if (dev_id, seq) in self._pending:
            return "duplicate"
        dev = self.devices.get(dev_id)
        if dev is not None and dev["rel"] is not None and seq <= dev["rel"]:
            for rng in dev["missing"]:
                if rng[0] <= seq <= rng[1]:
                    self._fill_missing(dev, rng, seq)
                    return "late_gap_fill"
            if ts <= dev["last"]:
                return "duplicate"
            dev = None  # sequence restarted with newer time: the device rebooted
        wm = self.watermark
        if wm is not None and ts < wm:
            self._mark_late(dev_id, dev, seq, ts)
            return "late"
        if dev is None:
            dev = {"rel": None, "fr": seq, "fr_ts": ts, "last": ts, "missing": []}
            self.devices[dev_id] = dev
        elif ts > dev["last"]:
            dev["last"] = ts
        self._pending[(dev_id, seq)] = ts
        if dev["rel"] is None and seq < dev["fr"]:
            # Nothing released yet: an earlier first event of this device; the run starts here now.
            dev["fr"], dev["fr_ts"] = seq, ts
            self._advance_frontier(dev_id, dev)
        elif seq == dev["fr"] + 1:
            self._advance_frontier(dev_id, dev)
        bisect.insort(self._buf, event, key=_key)
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
            self.advance_clock(ts)
        return "buffered"

    def _mark_late(self, dev_id: str, dev: dict[str, Any] | None, seq: int, ts: int) -> None:
        # Record the sequence number as seen so the late event does not also show up as a gap.
        if dev is None:
            self.devices[dev_id] = {"rel": seq, "fr": seq, "fr_ts": ts, "last": ts, "missing": []}
            return
        if dev["rel"] is not None and seq == dev["rel"] + 1 and dev["fr"] <= seq:
            dev["rel"] = seq
        if seq == dev["fr"] + 1:
            dev["fr"], dev["fr_ts"] = seq, max(ts, dev["fr_ts"])
            self._advance_frontier(dev_id, dev)

    @staticmethod
    def _fill_missing(dev: dict[str, Any], rng: list[int], seq: int) -> None:
        dev["missing"].remove(rng)
        if rng[0] < seq:
            dev["missing"].append([rng[0], seq - 1])
        if seq < rng[1]:
            dev["missing"].append([seq + 1, rng[1]])

    def _advance_frontier(self, dev_id: str, dev: dict[str, Any]) -> None:
        pending = self._pending
        nxt = dev["fr"] + 1
        while (dev_id, nxt) in pending:
            dev["fr"], dev["fr_ts"] = nxt, pending[(dev_id, nxt)]
            nxt += 1

    # -- output -------------------------------------------------------------------------------
    def head(self) -> Event | None:
        return self._buf[0] if self._buf else None

    def head_ready(self) -> bool:
        """Whether the earliest buffered event may be applied now."""
        if not self._buf:
            return False
        if len(self._buf) > self.max_buffered:
            return True  # overload: hold no more than the bound
        head = self._buf[0]
        wm = self.watermark
        if wm is not None and head["ts"] < wm:
            return True
        if not self.fast_release:
            return False
        dev_id, ts = head["device_id"], head["ts"]
        if self.devices[dev_id]["fr"] < head["seq"]:
            return False  # an earlier sequence number of this device is still missing
        return all(d["fr_ts"] > ts for other, d in self.devices.items() if other != dev_id)

    def pop(self) -> tuple[Event, Gap | None]:
        """Remove and return the head, plus the sequence gap it reveals, if any."""
        event = self._buf.pop(0)
        dev_id, seq, ts = event["device_id"], event["seq"], event["ts"]
        del self._pending[(dev_id, seq)]
        dev = self.devices[dev_id]
        gap = None
        if dev["rel"] is not None and seq > dev["rel"] + 1:
            gap = Gap(dev_id, dev["rel"] + 1, seq - 1, ts)
            dev["missing"].append([gap.first, gap.last])
            del dev["missing"][:-_MAX_MISSING_RANGES]
        if dev["rel"] is None or seq > dev["rel"]:
            dev["rel"] = seq
        if dev["fr"] < seq:
            dev["fr"], dev["fr_ts"] = seq, ts
            self._advance_frontier(dev_id, dev)
        self.last_released = _key(event)
        if self.max_ts is not None and self.max_ts >= self._next_forget:
            self._forget_idle(self.max_ts)
        return event, gap

    def _forget_idle(self, now: int) -> None:
        horizon = now - self.forget_us
        pending_devices = {d for d, _ in self._pending}
        for dev_id in [
            d for d, v in self.devices.items() if v["last"] < horizon and d not in pending_devices
        ]:
            del self.devices[dev_id]
            self.forgotten.append(dev_id)
        self._next_forget = now + max(self.forget_us // 4, 1)

    # -- state --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "buf": [dict(e) for e in self._buf],
            "devices": {
                k: {**v, "missing": [list(r) for r in v["missing"]]} for k, v in self.devices.items()
            },
            "max_ts": self.max_ts,
            "clock": self.clock,
            "last_released": None if self.last_released is None else list(self.last_released),
            "next_forget": self._next_forget,
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], lateness_us: int, fast_release: bool = True,
        forget_us: int = 3_600_000_000, max_devices: int = 1_024, max_buffered: int = 100_000,
    ) -> ReorderBuffer:  # fmt: skip
        buf = cls(lateness_us, fast_release, forget_us, max_devices, max_buffered)
        buf._buf = sorted((dict(e) for e in data.get("buf", [])), key=_key)
        buf._pending = {(e["device_id"], e["seq"]): e["ts"] for e in buf._buf}
        buf.devices = {
            k: {**v, "missing": [list(r) for r in v.get("missing", [])]}
            for k, v in data.get("devices", {}).items()
        }
        buf.max_ts = data.get("max_ts")
        buf.clock = data.get("clock")
        last = data.get("last_released")
        buf.last_released = None if last is None else (int(last[0]), str(last[1]), int(last[2]))
        buf._next_forget = int(data.get("next_forget", 0))
        return buf
