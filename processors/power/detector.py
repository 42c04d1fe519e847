"""Per-site failover detector: the reorder buffer, then a loop over the power rules in event time.

Events go through the site's ``ReorderBuffer`` and are applied strictly in (event time, device, seq)
order; the rules' timers (``Rule.notify_at``: failed transfer, generator start, stability, hold times)
fire in event time between them, so the output depends only on the events and not on their arrival
order within the allowance. Only SITE_SILENT uses processing time (``on_tick(now_us)``).

What each kind means, and when it fires and resolves, is in its rule (``processors/power/rules/``); the
kinds themselves (severity, episode grouping) are declared in ``processors/power/kinds.py``.

Late events: past the allowance, a discrete sequence-of-events record (any type but MEASUREMENT) that
is at most ``soe_buffer_s`` behind the site's clock is applied at once, in its own event time (SOE
recorders buffer locally and upload late); anything later, and every late measurement, comes back as
``LateEvent``. A late event that fills a reported sequence gap also goes to the SEQUENCE_GAP rule.

Incident ids are ``<site>/<KIND>/<start µs>[/<device>]``: deterministic, readable, unique per site.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.power.config import PowerConfig
from processors.power.events import (
    SOE_EVENT_TYPES,
    Event,
    InvalidPowerEvent,
    LateEvent,
    Output,
    normalize_event,
)
from processors.power.reorder import ReorderBuffer
from processors.power.rules import EVERY_EVENT, Rule, Signal, Site, build_rules
from processors.power.rules.base import fmt_time

__all__ = ["Detector", "STATE_VERSION"]


def _buffer(cfg: PowerConfig, data: dict[str, Any] | None = None) -> ReorderBuffer:
    args = (cfg.lateness_us, cfg.fast_release, cfg.us(cfg.device_forget_s), cfg.max_devices, cfg.max_buffered)
    return ReorderBuffer(*args) if data is None else ReorderBuffer.from_dict(data, *args)


STATE_VERSION = 1


class Detector:
    """Failover detection for one site. Feed ``on_event``; call ``on_tick`` periodically (e.g. 1 s).

    Both return a list of outputs: ``Incident`` records for ``power.incidents.v1`` (turn them into
    alerts with ``processors.power.alerts.alert_for_incident``) and ``LateEvent`` for events past the
    allowance (dead-letter them). State round-trips through ``to_dict``/``from_dict``.
    """

    def __init__(self, site_id: str, config: PowerConfig | None = None) -> None:
        self.site_id = site_id
        self.config = cfg = config or PowerConfig()
        self.buffer = _buffer(cfg)
        self.last_arrival: int | None = None
        self.site = Site(site_id, cfg, self._publish)
        self.rules = build_rules(cfg)
        self._typed: dict[str, list[Rule]] = {}
        self._every = [r for r in self.rules if EVERY_EVENT in r.watches]
        self._timed = [r for r in self.rules if type(r).notify_at is not Rule.notify_at]
        # The earliest rule timer, valid until a rule runs again (rules only run from _apply, _publish
        # and a timer firing, which all clear it): half the lookups of a busy site are saved.
        self._timer: tuple[int, str, Rule] | None = None
        self._timer_stale = True
        self._listeners: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for event_type in rule.watches - {EVERY_EVENT}:
                self._typed.setdefault(event_type, []).append(rule)
            for name in rule.signals:
                self._listeners.setdefault(name, []).append(rule)

    # ================================================================================== public
    @property
    def phase(self) -> str:
        return self.site.phase

    @property
    def open(self) -> dict[str, dict[str, Any]]:
        """Open incidents by rule key (``failover``, ``gap:<device>``, ...)."""
        return self.site.open

    @property
    def stats(self) -> dict[str, int]:
        return self.site.stats

    def on_event(self, record: Mapping[str, Any], arrival_us: int | None = None) -> list[Output]:
        """Take one decoded ``power.events.v1`` record of this site.

        ``arrival_us`` is the processing clock (wall time in µs) when the record was read; without it
        the detector runs purely on event time. Raises ``InvalidPowerEvent`` for unusable records and for
        a new device while the site tracks ``max_devices``; out-of-range readings are dropped, not refused.
        """
        not_reported: list[str] = []
        event = normalize_event(record, not_reported)
        if event["site_id"] != self.site_id:
            raise InvalidPowerEvent(
                f"event of site {event['site_id']!r} given to detector of {self.site_id!r}"
            )
        site, buf = self.site, self.buffer
        if not buf.admits(event["device_id"], event["ts"]):
            raise InvalidPowerEvent(
                f"site {self.site_id} already tracks {len(buf.devices)} devices (max_devices); device "
                f"{event['device_id']!r} is refused until idle ones are forgotten"
            )
        out: list[Output] = []
        site.out = out
        site.stats["events"] += 1
        if not_reported:
            site.stats["not_reported"] += len(not_reported)
        if arrival_us is None:
            arrival_us = event["ts"] if buf.clock is None else max(event["ts"], buf.clock)
        if self.last_arrival is None or arrival_us > self.last_arrival:
            self.last_arrival = arrival_us
        if site.open:  # only an open incident can end because the site spoke again (SITE_SILENT)
            self._publish(Signal("arrival", event["ts"]))
        result = buf.push(event)
        if result == "duplicate":
            site.stats["duplicates"] += 1
        elif result in ("late", "late_gap_fill"):
            self._late(event, result == "late_gap_fill")
        elif (
            buf.last_released is not None
            and (event["ts"], event["device_id"], event["seq"]) < buf.last_released
        ):
            site.stats["reordered"] += 1  # a first event of a new device, behind a fast release
        self._drain()
        site.floor_us = None
        return out

    def on_tick(self, now_us: int) -> list[Output]:
        """Advance processing time: release held events and fire timers of a site that went quiet, and
        raise SITE_SILENT after ``silent_after_s`` without any event. ``now_us`` is the same clock as
        ``arrival_us`` (or event time when the detector runs on event time only)."""
        out: list[Output] = []
        self.site.out = out
        buf = self.buffer
        if self.last_arrival is None or buf.max_ts is None:
            return out
        idle = now_us - self.last_arrival
        if idle > 0:
            buf.advance_clock(buf.max_ts + idle)
        self._drain()
        self._publish(Signal("idle", now_us, idle=idle, last_ts=buf.max_ts))
        return out

    def flush(self) -> list[Output]:
        """Release everything buffered and fire due timers (tests, shutdown of a replay)."""
        out: list[Output] = []
        self.site.out = out
        if self.buffer.max_ts is not None:
            self.buffer.advance_clock(self.buffer.max_ts + self.buffer.lateness_us + 1)
            self._drain()
        return out

    # ============================================================================ state I/O
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable state (for a changelog-backed table). The layout is the one of every
        earlier release plus what rules added since (``source_ts``, a rule's ``state_key``)."""
        state: dict[str, Any] = {
            "v": STATE_VERSION,
            "site_id": self.site_id,
            "buffer": self.buffer.to_dict(),
            "last_arrival": self.last_arrival,
            **self.site.to_dict(),
        }
        for rule in self.rules:
            if rule.state_key is not None:
                state[rule.state_key] = rule.snapshot()
        return state

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: PowerConfig | None = None) -> Detector:
        if data.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported detector state version {data.get('v')!r}")
        det = cls(data["site_id"], config)
        cfg = det.config
        det.buffer = _buffer(cfg, data["buffer"])
        det.last_arrival = data["last_arrival"]
        det.site.restore(data)
        for rule in det.rules:
            if rule.state_key is not None:
                rule.restore(data.get(rule.state_key))
        return det

    # ============================================================================ main loop
    def _publish(self, sig: Signal) -> None:
        self._timer_stale = True
        for rule in self._listeners.get(sig.name, ()):
            rule.on_signal(self.site, sig)

    def _drain(self) -> None:
        """Apply released events and due timers in event-time order."""
        buf = self.buffer
        while True:
            ready = buf.head_ready()
            timer = self._next_timer()
            if timer is not None:
                due = timer[0]
                head = buf.head()
                wm = buf.watermark
                if (ready and head is not None and due < head["ts"]) or (
                    not ready and wm is not None and due < wm
                ):
                    self._timer_stale = True
                    timer[2].on_notify(self.site, due, timer[1])
                    self._publish(Signal("timer", due))
                    continue
            if not ready:
                return
            event, gap = buf.pop()
            if buf.forgotten:
                self._forget(buf.forgotten)
                buf.forgotten = []
            if gap is not None:
                self._publish(Signal("gap", gap.ts, gap=gap))
            self._apply(event)

    def _forget(self, devices: list[str]) -> None:
        """Devices the buffer forgot (silent ``device_forget_s``): the rules forget them too."""
        self._timer_stale = True
        for rule in self.rules:
            rule.forget(self.site, devices)

    def _next_timer(self) -> tuple[int, str, Rule] | None:
        if not self._timer_stale:
            return self._timer
        best: tuple[int, str, Rule] | None = None
        site = self.site
        for rule in self._timed:
            due = rule.notify_at(site)
            if due is not None and (best is None or due[0] < best[0]):
                best = (due[0], due[1], rule)
        self._timer, self._timer_stale = best, False
        return best

    def _apply(self, e: Event) -> None:
        self._timer_stale = True
        site = self.site
        site.stats["applied"] += 1
        site.observe(e)
        for rule in self._typed.get(e["event_type"], ()):
            rule.on_event(site, e)
        for rule in self._every:
            rule.on_event(site, e)

    def _late(self, event: Event, fills_gap: bool) -> None:
        """An event behind the watermark: fill its gap, apply it if it is a buffered SOE upload, else
        hand it back as ``LateEvent``. Records it causes are stamped no earlier than the latest
        applied event time (analysts keep the newest record of an incident)."""
        site, buf = self.site, self.buffer
        if buf.last_released is not None:
            site.floor_us = buf.last_released[0]
        if fills_gap:
            self._publish(Signal("gap_filled", event["ts"], event=event))
        assert buf.clock is not None
        if event["event_type"] in SOE_EVENT_TYPES and buf.clock - event["ts"] <= self.config.soe_buffer_us:
            site.stats["late_used"] += 1
            site.late = True
            try:
                self._apply(event)
            finally:
                site.late = False
            return
        site.stats["late"] += 1
        if fills_gap:
            reason = f"seq {event['seq']} of {event['device_id']} arrived after its sequence gap was reported"
        else:
            reason = (
                f"event time {fmt_time(event['ts'])} is more than "
                f"{self.config.lateness_ms:g} ms behind the site's clock"
            )
        site.out.append(LateEvent(event, reason))
