"""Per-site failover detector: a state machine over event time, fed through the reorder buffer.

Phases of a site (``Detector.phase``)::

    NORMAL --source lost--> SOURCE_LOST --alternate on load--> ON_ALTERNATE --load to grid--> RETRANSFER
       ^                        |  (blip / grid back, no transfer)                               |  |
       +------------------------+<------------- stable on grid for retransfer_stable_s ----------+  |
                                 <------------- grid lost again (flapping) -------------------------+

One *episode* runs from leaving NORMAL to coming back; its FAILOVER incident opens once an alternate
source carries the load and the site has been off grid for ``blip_ignore_s`` (at once on ISLAND_ENTER),
and resolves after the site has been back on grid, stable, for ``retransfer_stable_s``. Other kinds
(FAILED_TRANSFER, SLOW_TRANSFER, PQ_EXCURSION, BATTERY_RESERVE, LOAD_SHED) hang off the episode and
resolve with it at the latest; GEN_START_FAILURE, FLAPPING, SEQUENCE_GAP and SITE_SILENT have their
own lifetimes.

Timers (failed transfer, generator start, stability, hold times) fire in event time, interleaved with
released events, so the output depends only on the events and not on their arrival order within the
allowance. Only SITE_SILENT uses processing time (``on_tick(now_us)``).

Incident ids are ``<site>/<KIND>/<start µs>[/<device>]``: deterministic, readable, unique per site.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.power.config import PowerConfig
from processors.power.events import (
    ALTERNATE_SOURCES,
    Event,
    Incident,
    InvalidPowerEvent,
    LateEvent,
    Output,
    normalize_event,
    to_datetime,
)
from processors.power.reorder import Gap, ReorderBuffer

__all__ = ["Detector", "STATE_VERSION"]

STATE_VERSION = 1
_GEN_EVENTS = frozenset({"GEN_START", "GEN_RUNNING", "GEN_STOP", "GEN_FAIL"})
# Rule keys of incidents that belong to an episode and resolve with it at the latest.
_EPISODE_CHILDREN = ("failed", "slow", "pq", "battery", "shed")


def _t(us: int) -> str:
    return to_datetime(us).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dur(us: float) -> str:
    s = us / 1e6
    if s < 1:
        return f"{us / 1e3:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class Detector:
    """Failover detection for one site. Feed ``on_event``; call ``on_tick`` periodically (e.g. 1 s).

    Both return a list of outputs: ``Incident`` records for ``power.incidents.v1`` (turn them into
    alerts with ``processors.power.alerts.alert_for_incident``) and ``LateEvent`` for events past the
    allowance (dead-letter them). State round-trips through ``to_dict``/``from_dict``.
    """

    def __init__(self, site_id: str, config: PowerConfig | None = None) -> None:
        self.site_id = site_id
        self.config = cfg = config or PowerConfig()
        self.buffer = ReorderBuffer(cfg.lateness_us, cfg.fast_release, cfg.us(cfg.device_forget_s))
        self.last_arrival: int | None = None
        self.source = "GRID"  # what carries the load now, as far as the events say
        self.ep: dict[str, Any] | None = None  # the current off-grid episode
        self.changes: list[int] = []  # times of grid<->alternate changes within the flap window
        self.open: dict[str, dict[str, Any]] = {}  # rule key -> open incident
        self.gens: dict[str, Any] = {"running": [], "starts": {}, "reported": None, "seen": False}
        self.load_mw: float | None = None
        self.stats: dict[str, int] = {
            "events": 0,
            "applied": 0,
            "duplicates": 0,
            "late": 0,
            "gaps": 0,
            "blips": 0,
            "reordered": 0,
            "incidents": 0,
        }
        cfg_us = cfg.us
        self._blip = cfg_us(cfg.blip_ignore_s)
        self._failed = cfg_us(cfg.failed_transfer_s)
        self._gen_timeout = cfg_us(cfg.gen_start_timeout_s)
        self._stable = cfg_us(cfg.retransfer_stable_s)
        self._flap_window = cfg_us(cfg.flap_window_s)
        self._pq_clear = cfg_us(cfg.pq_clear_s)
        self._shed_hold = cfg_us(cfg.load_shed_hold_s)
        self._gap_hold = cfg_us(cfg.gap_hold_s)
        self._silent = cfg_us(cfg.silent_after_s)

    # ================================================================================== public
    @property
    def phase(self) -> str:
        ep = self.ep
        if ep is None:
            return "NORMAL"
        if ep["retransfer_at"] is not None:
            return "RETRANSFER"
        return "ON_ALTERNATE" if ep["alt_since"] is not None else "SOURCE_LOST"

    def on_event(self, record: Mapping[str, Any], arrival_us: int | None = None) -> list[Output]:
        """Take one decoded ``power.events.v1`` record of this site.

        ``arrival_us`` is the processing clock (wall time in µs) when the record was read; without it
        the detector runs purely on event time. Raises ``InvalidPowerEvent`` for unusable records.
        """
        event = normalize_event(record)
        if event["site_id"] != self.site_id:
            raise InvalidPowerEvent(
                f"event of site {event['site_id']!r} given to detector of {self.site_id!r}"
            )
        out: list[Output] = []
        self.stats["events"] += 1
        buf = self.buffer
        if arrival_us is None:
            arrival_us = event["ts"] if buf.clock is None else max(event["ts"], buf.clock)
        if self.last_arrival is None or arrival_us > self.last_arrival:
            self.last_arrival = arrival_us
        if "silent" in self.open:
            self._resolve_silent(out, event["ts"])
        result = buf.push(event)
        if result == "duplicate":
            self.stats["duplicates"] += 1
        elif result == "late":
            self.stats["late"] += 1
            out.append(
                LateEvent(
                    event,
                    f"event time {_t(event['ts'])} is more than "
                    f"{self.config.lateness_ms:g} ms behind the site's clock",
                )
            )
        elif result == "late_gap_fill":
            self.stats["late"] += 1
            out.append(
                LateEvent(
                    event,
                    f"seq {event['seq']} of {event['device_id']} arrived after its sequence gap was reported",
                )
            )
        elif (
            buf.last_released is not None
            and (event["ts"], event["device_id"], event["seq"]) < buf.last_released
        ):
            self.stats["reordered"] += 1  # a first event of a new device, behind a fast release
        self._drain(out)
        return out

    def on_tick(self, now_us: int) -> list[Output]:
        """Advance processing time: release held events and fire timers of a site that went quiet, and
        raise SITE_SILENT after ``silent_after_s`` without any event. ``now_us`` is the same clock as
        ``arrival_us`` (or event time when the detector runs on event time only)."""
        out: list[Output] = []
        buf = self.buffer
        if self.last_arrival is None or buf.max_ts is None:
            return out
        idle = now_us - self.last_arrival
        if idle > 0:
            buf.advance_clock(buf.max_ts + idle)
        self._drain(out)
        if idle >= self._silent and "silent" not in self.open:
            self._open_silent(out, now_us, idle)
        return out

    def flush(self) -> list[Output]:
        """Release everything buffered and fire due timers (tests, shutdown of a replay)."""
        out: list[Output] = []
        if self.buffer.max_ts is not None:
            self.buffer.advance_clock(self.buffer.max_ts + self.buffer.lateness_us + 1)
            self._drain(out)
        return out

    # ============================================================================ state I/O
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable state (for a changelog-backed table)."""
        return {
            "v": STATE_VERSION,
            "site_id": self.site_id,
            "buffer": self.buffer.to_dict(),
            "last_arrival": self.last_arrival,
            "source": self.source,
            "ep": None if self.ep is None else dict(self.ep),
            "changes": list(self.changes),
            "open": {k: dict(v) for k, v in self.open.items()},
            "gens": {
                "running": list(self.gens["running"]),
                "starts": dict(self.gens["starts"]),
                "reported": self.gens["reported"],
                "seen": self.gens["seen"],
            },
            "load_mw": self.load_mw,
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: PowerConfig | None = None) -> Detector:
        if data.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported detector state version {data.get('v')!r}")
        det = cls(data["site_id"], config)
        cfg = det.config
        det.buffer = ReorderBuffer.from_dict(
            data["buffer"], cfg.lateness_us, cfg.fast_release, cfg.us(cfg.device_forget_s)
        )
        det.last_arrival = data["last_arrival"]
        det.source = data["source"]
        det.ep = None if data["ep"] is None else dict(data["ep"])
        det.changes = list(data["changes"])
        det.open = {k: dict(v) for k, v in data["open"].items()}
        gens = data["gens"]
        det.gens = {
            "running": list(gens["running"]),
            "starts": dict(gens["starts"]),
            "reported": gens["reported"],
            "seen": gens["seen"],
        }
        det.load_mw = data["load_mw"]
        det.stats.update(data.get("stats", {}))
        return det

    # ============================================================================ main loop
    def _drain(self, out: list[Output]) -> None:
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
                    self._fire(out, timer[1], due)
                    continue
            if not ready:
                return
            event, gap = buf.pop()
            if gap is not None:
                self._on_gap(out, gap)
            self._apply(out, event)

    def _next_timer(self) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None

        def consider(due: int, name: str) -> None:
            nonlocal best
            if best is None or due < best[0]:
                best = (due, name)

        ep = self.ep
        if ep is not None:
            if not ep["open"] and ep["open_due"] is not None:
                consider(ep["open_due"], "open")
            if ep["lost_at"] is not None and ep["failed_for"] != ep["lost_at"]:
                consider(ep["lost_at"] + self._failed, "failed")
            if ep["retransfer_at"] is not None:
                consider(ep["retransfer_at"] + self._stable, "stable")
        for dev, start in self.gens["starts"].items():
            consider(start + self._gen_timeout, "gen:" + dev)
        if self.open:
            for key, inc in self.open.items():
                if key == "pq":
                    consider(inc["last"] + self._pq_clear, key)
                elif key == "shed" and ep is None:
                    consider(inc["last"] + self._shed_hold, key)
                elif key == "flap":
                    consider(inc["last"] + self._stable, key)
                elif key.startswith("gap:"):
                    consider(inc["last"] + self._gap_hold, key)
        return best

    def _fire(self, out: list[Output], name: str, due: int) -> None:
        ep = self.ep
        if name == "open":
            assert ep is not None
            self._open_failover(out, due)
        elif name == "failed":
            assert ep is not None
            ep["failed_for"] = ep["lost_at"]
            self._open_failed(out, due)
        elif name == "stable":
            self._end_episode(out, due, "stable")
        elif name.startswith("gen:"):
            dev = name[4:]
            start = self.gens["starts"].pop(dev)
            self._open_gen_failure(
                out, dev, due, f"no GEN_RUNNING {_dur(due - start)} after GEN_START at {_t(start)}"
            )
        elif name == "pq":
            inc = self.open["pq"]
            self._emit(out, "pq", "RESOLVED", due, self._pq_text(inc, resolved=True), ended=inc["last"])
        elif name == "shed":
            self._emit(
                out,
                "shed",
                "RESOLVED",
                due,
                self._shed_text(self.open["shed"], resolved=True),
                ended=self.open["shed"]["last"],
            )
        elif name == "flap":
            inc = self.open["flap"]
            self._emit(
                out,
                "flap",
                "RESOLVED",
                due,
                f"{self.site_id}: power source stable for {_dur(self._stable)} after flapping "
                f"({inc['count']} source changes)",
                ended=inc["last"],
            )
        elif name.startswith("gap:"):
            inc = self.open[name]
            self._emit(
                out,
                name,
                "RESOLVED",
                due,
                f"{self.site_id}: device {inc['device']} reported without gaps for "
                f"{_dur(self._gap_hold)} ({inc['missing']} events missing in total)",
                ended=inc["last"],
            )

    # ============================================================================ events
    def _apply(self, out: list[Output], e: Event) -> None:
        self.stats["applied"] += 1
        t = e["ts"]
        ep = self.ep
        load = e.get("load_mw")
        if load is not None:
            self.load_mw = load
        gens = e.get("gens_online")
        if gens is not None:
            self.gens["reported"] = gens
        soc = e.get("battery_soc_pct")
        if soc is not None and ep is not None and (ep["min_soc"] is None or soc < ep["min_soc"]):
            ep["min_soc"] = soc
        kind = e["event_type"]
        if kind == "MEASUREMENT":
            pass
        elif kind == "SOURCE_LOST":
            self._source_lost(out, e)
        elif kind == "SOURCE_RESTORED":
            self._source_restored(out, e)
        elif kind == "TRANSFER":
            to = e.get("source_to")
            if to in ALTERNATE_SOURCES:
                self._alternate_on_load(out, t, to, e)
            elif to == "GRID":
                self._back_on_grid(out, t, e)
            elif to == "NONE":
                self._load_dropped(out, t, e.get("source_from") or self.source)
        elif kind == "ISLAND_ENTER":
            self._island_enter(out, e)
        elif kind == "ISLAND_EXIT":
            self._back_on_grid(out, t, e)
        elif kind in _GEN_EVENTS:
            self._generator(out, e)
        elif kind == "LOAD_SHED":
            self._load_shed(out, e)
        if self.ep is not None and self.ep["alt_since"] is not None and e["device_type"] != "GRID_METER":
            self._islanded_checks(out, e)

    def _new_episode(self, start: int, lost_at: int | None, source_from: str) -> dict[str, Any]:
        self.ep = {
            "start": start,
            "lost_at": lost_at,
            "from": source_from,
            "to": None,
            "alt_since": None,
            "alt_total": 0,
            "islanded": False,
            "open": False,
            "open_due": None,
            "transfer_ms": None,
            "transfer_device": None,
            "retransfer_at": None,
            "restored_at": None,
            "failed_for": None,
            "min_soc": None,
            "retransfers": 0,
        }
        return self.ep

    def _source_lost(self, out: list[Output], e: Event) -> None:
        t, src = e["ts"], e.get("source_from") or "GRID"
        ep = self.ep
        if ep is None:
            if src == "GRID" and self.source == "GRID":
                self._new_episode(t, t, "GRID")
            return
        if ep["retransfer_at"] is not None and src == "GRID":
            # Grid lost again while proving it stable: same incident, and the site is flapping.
            since = t - ep["retransfer_at"]
            ep["retransfer_at"] = None
            ep["lost_at"] = t
            ep["from"] = "GRID"
            self._emit(
                out,
                "failover",
                "UPDATE",
                t,
                f"{self.site_id}: grid lost again {_dur(since)} after retransfer; load has no source",
            )
            self._flap(out, t, f"grid lost again {_dur(since)} after retransfer")
        elif ep["alt_since"] is not None and src == self.source:
            ep["alt_total"] += t - ep["alt_since"]
            ep["alt_since"] = None
            ep["lost_at"] = t
            ep["from"] = src
            if ep["open"]:
                self._emit(
                    out,
                    "failover",
                    "UPDATE",
                    t,
                    f"{self.site_id}: alternate source {src} lost while islanded; load has no source",
                )

    def _source_restored(self, out: list[Output], e: Event) -> None:
        t = e["ts"]
        if (e.get("source_to") or e.get("source_from") or "GRID") != "GRID":
            return
        ep = self.ep
        if ep is None:
            return
        ep["restored_at"] = t
        if ep["alt_since"] is None and ep["retransfer_at"] is None and ep["from"] == "GRID":
            self._back_on_grid(out, t, e)

    def _alternate_on_load(self, out: list[Output], t: int, to: str, e: Event) -> None:
        ep = self.ep
        if ep is None:
            ep = self._new_episode(t, None, self.source if self.source not in ALTERNATE_SOURCES else "GRID")
        if ep["alt_since"] is not None:  # alternate to alternate, e.g. battery bridge -> generators
            if to != ep["to"]:
                previous, ep["to"] = ep["to"], to
                self.source = to
                if ep["open"]:
                    self._emit(
                        out,
                        "failover",
                        "UPDATE",
                        t,
                        f"{self.site_id}: load moved {previous} -> {to} at {_t(t)}",
                    )
            return
        if ep["lost_at"] is not None:
            self._measure_transfer(out, t, ep, e, to)
        if ep["retransfer_at"] is not None:  # left the grid again before it proved stable
            since = t - ep["retransfer_at"]
            ep["retransfer_at"] = None
            self._flap(out, t, f"left grid again {_dur(since)} after retransfer")
        ep["alt_since"] = t
        ep["to"] = to
        self.source = to
        if ep["open"]:
            self._count_change(out, t)
            self._emit(out, "failover", "UPDATE", t, f"{self.site_id}: load on {to} again at {_t(t)}")
            return
        due = max(t, ep["start"] + self._blip)
        if due <= t:
            self._open_failover(out, t)
        else:
            ep["open_due"] = due

    def _measure_transfer(self, out: list[Output], t: int, ep: dict[str, Any], e: Event, to: str) -> None:
        lost_at = ep["lost_at"]
        ep["lost_at"] = None
        ms = (t - lost_at) / 1000
        if ep["transfer_ms"] is None:
            ep["transfer_ms"], ep["transfer_device"] = ms, e["device_id"]
        if "failed" in self.open:
            self._emit(
                out,
                "failed",
                "RESOLVED",
                t,
                f"{self.site_id}: {to} took the load {_dur(t - lost_at)} after {ep['from']} was lost",
                ended=t,
            )
            return  # already reported as failed; a slow-transfer alert would only repeat it
        sts = e["device_type"] == "STS"
        limit = self.config.sts_transfer_limit_ms if sts else self.config.ats_transfer_limit_ms
        if ms > limit:
            text = (
                f"{self.site_id}: {e['device_type']} {e['device_id']} transferred {ep['from']} -> {to} in "
                f"{_dur(t - lost_at)} (limit {_dur(limit * 1000)}); inspect the switch before the next "
                f"failover"
            )
            if "slow" in self.open:
                self.open["slow"]["transfer_ms"] = ms
                self._emit(out, "slow", "UPDATE", t, text)
            else:
                self._open_incident(
                    out,
                    "slow",
                    "SLOW_TRANSFER",
                    lost_at,
                    t,
                    text,
                    device=e["device_id"],
                    transfer_ms=ms,
                    source_from=ep["from"],
                    source_to=to,
                )

    def _load_dropped(self, out: list[Output], t: int, src: str) -> None:
        ep = self.ep
        if ep is None:
            if self.source == "GRID":
                self._new_episode(t, t, "GRID")
                self.source = "NONE"
            return
        if ep["alt_since"] is not None:
            ep["alt_total"] += t - ep["alt_since"]
            ep["alt_since"] = None
            ep["lost_at"] = t
            ep["from"] = src
            self.source = "NONE"
            if ep["open"]:
                self._emit(out, "failover", "UPDATE", t, f"{self.site_id}: load dropped from {src}")

    def _back_on_grid(self, out: list[Output], t: int, e: Event) -> None:
        ep = self.ep
        self.source = "GRID"
        if ep is None or ep["retransfer_at"] is not None:
            return
        if not ep["open"]:
            # Never a failover: a blip, or grid back before any alternate took the load.
            if t - ep["start"] < self._blip:
                self.stats["blips"] += 1
            self._end_episode(out, t, "blip" if t - ep["start"] < self._blip else "grid_back")
            return
        if ep["alt_since"] is not None:
            ep["alt_total"] += t - ep["alt_since"]
            ep["alt_since"] = None
        ep["lost_at"] = None
        ep["retransfer_at"] = t
        ep["retransfers"] += 1
        if "failed" in self.open:
            self._emit(out, "failed", "RESOLVED", t, f"{self.site_id}: load back on GRID at {_t(t)}", ended=t)
        self._count_change(out, t)
        self._emit(
            out,
            "failover",
            "UPDATE",
            t,
            f"{self.site_id}: load back on GRID at {_t(t)} after {_dur(ep['alt_total'])} on alternate; "
            f"resolves after {_dur(self._stable)} stable",
        )

    def _island_enter(self, out: list[Output], e: Event) -> None:
        t = e["ts"]
        ep = self.ep
        if ep is None:
            ep = self._new_episode(t, None, "GRID")
        ep["islanded"] = True
        if ep["retransfer_at"] is not None:
            since = t - ep["retransfer_at"]
            ep["retransfer_at"] = None
            self._flap(out, t, f"islanded again {_dur(since)} after retransfer")
            ep["alt_since"] = t
            self._count_change(out, t)
        elif ep["alt_since"] is None and ep["lost_at"] is None:
            ep["alt_since"] = t
        to = e.get("source_to")
        if to in ALTERNATE_SOURCES and ep["alt_since"] is not None:
            ep["to"] = to
            self.source = to
        if not ep["open"]:
            self._open_failover(out, t)

    def _generator(self, out: list[Output], e: Event) -> None:
        t, dev, kind = e["ts"], e["device_id"], e["event_type"]
        gens = self.gens
        gens["seen"] = True
        key = "gen:" + dev
        if kind == "GEN_START":
            if dev not in gens["running"]:
                gens["starts"].setdefault(dev, t)
            return
        start = gens["starts"].pop(dev, None)
        if kind == "GEN_RUNNING":
            if dev not in gens["running"]:
                gens["running"].append(dev)
            if key in self.open:
                self._emit(
                    out, key, "RESOLVED", t, f"{self.site_id}: generator {dev} running at {_t(t)}", ended=t
                )
            return
        if dev in gens["running"]:
            gens["running"].remove(dev)
        if kind == "GEN_STOP":
            if key in self.open:
                self._emit(
                    out,
                    key,
                    "RESOLVED",
                    t,
                    f"{self.site_id}: generator {dev} stopped/reset at {_t(t)}",
                    ended=t,
                )
        elif key not in self.open:  # GEN_FAIL
            why = f"GEN_FAIL{': ' + e['detail'] if e.get('detail') else ''}"
            if start is not None:
                why += f" {_dur(t - start)} after GEN_START"
            self._open_gen_failure(out, dev, t, why)

    def _load_shed(self, out: list[Output], e: Event) -> None:
        t = e["ts"]
        inc = self.open.get("shed")
        if inc is None:
            inc = self._open_incident(
                out,
                "shed",
                "LOAD_SHED",
                t,
                t,
                "",
                device=e["device_id"],
                count=1,
                last=t,
                detail=e.get("detail"),
                emit=False,
            )
            self._emit(out, "shed", "OPEN", t, self._shed_text(inc))
        else:
            inc["count"] += 1
            inc["last"] = t
            if e.get("detail"):
                inc["detail"] = e["detail"]
            self._emit(out, "shed", "UPDATE", t, self._shed_text(inc))

    def _islanded_checks(self, out: list[Output], e: Event) -> None:
        t, cfg, ep = e["ts"], self.config, self.ep
        assert ep is not None
        soc = e.get("battery_soc_pct")
        if soc is not None:
            inc = self.open.get("battery")
            if inc is None and soc <= cfg.battery_reserve_pct:
                self._open_incident(
                    out,
                    "battery",
                    "BATTERY_RESERVE",
                    t,
                    t,
                    f"{self.site_id}: battery {e['device_id']} at {soc:.1f} % (reserve "
                    f"{cfg.battery_reserve_pct:g} %) while islanded on {ep['to'] or 'alternate'}; start "
                    f"generators or shed load now",
                    device=e["device_id"],
                )
            elif inc is not None and soc > cfg.battery_reserve_pct + cfg.battery_hysteresis_pct:
                self._emit(
                    out,
                    "battery",
                    "RESOLVED",
                    t,
                    f"{self.site_id}: battery back to {soc:.1f} % (min {ep['min_soc']:.1f} %)",
                    ended=t,
                )
        f, v = e.get("frequency_hz"), e.get("voltage_pu")
        if f is None and v is None:
            return
        classes = []
        if f is not None:
            if f < cfg.freq_min_hz:
                classes.append("underfrequency")
            elif f > cfg.freq_max_hz:
                classes.append("overfrequency")
        if v is not None:
            if v < cfg.voltage_interruption_pu:
                classes.append("interruption")
            elif v < cfg.voltage_sag_pu:
                classes.append("sag")
            elif v > cfg.voltage_swell_pu:
                classes.append("swell")
        if not classes:
            return
        inc = self.open.get("pq")
        if inc is None:
            inc = self._open_incident(
                out,
                "pq",
                "PQ_EXCURSION",
                t,
                t,
                "",
                device=e["device_id"],
                last=t,
                classes=classes,
                f_min=f,
                f_max=f,
                v_min=v,
                v_max=v,
                emit=False,
            )
            self._emit(out, "pq", "OPEN", t, self._pq_text(inc))
            return
        inc["last"] = t
        if f is not None:
            inc["f_min"] = f if inc["f_min"] is None else min(inc["f_min"], f)
            inc["f_max"] = f if inc["f_max"] is None else max(inc["f_max"], f)
        if v is not None:
            inc["v_min"] = v if inc["v_min"] is None else min(inc["v_min"], v)
            inc["v_max"] = v if inc["v_max"] is None else max(inc["v_max"], v)
        new = [c for c in classes if c not in inc["classes"]]
        if new:
            inc["classes"] = inc["classes"] + new
            self._emit(out, "pq", "UPDATE", t, self._pq_text(inc))

    def _on_gap(self, out: list[Output], gap: Gap) -> None:
        self.stats["gaps"] += 1
        key = "gap:" + gap.device_id
        seqs = f"seq {gap.first}" if gap.count == 1 else f"seq {gap.first}-{gap.last}"
        inc = self.open.get(key)
        if inc is None:
            self._open_incident(
                out,
                key,
                "SEQUENCE_GAP",
                gap.ts,
                gap.ts,
                f"{self.site_id}: device {gap.device_id} skipped {seqs} ({gap.count} events "
                f"lost); check the device link, incidents of that period may be incomplete",
                device=gap.device_id,
                last=gap.ts,
                missing=gap.count,
            )
        else:
            inc["last"] = gap.ts
            inc["missing"] += gap.count
            self._emit(
                out,
                key,
                "UPDATE",
                gap.ts,
                f"{self.site_id}: device {gap.device_id} skipped {seqs} too "
                f"({inc['missing']} events lost so far)",
            )

    # ============================================================================ rules
    def _failover_id(self) -> str:
        assert self.ep is not None
        return f"{self.site_id}/FAILOVER/{self.ep['start']}"

    def _open_failover(self, out: list[Output], t: int) -> None:
        ep = self.ep
        assert ep is not None
        ep["open"] = True
        ep["open_due"] = None
        self.open["failover"] = {
            "id": self._failover_id(),
            "kind": "FAILOVER",
            "start": ep["start"],
            "device": ep["transfer_device"],
            "parent": None,
        }
        if ep["alt_since"] is not None:
            self._count_change(out, ep["alt_since"])
        how = "island entered" if ep["islanded"] else f"{ep['from']} -> {ep['to']}"
        xfer = (
            ""
            if ep["transfer_ms"] is None
            else (f", transfer {_dur(ep['transfer_ms'] * 1000)} via {ep['transfer_device']}")
        )
        self._emit(out, "failover", "OPEN", t, f"{self.site_id}: failover at {_t(ep['start'])}, {how}{xfer}")
        # Children opened before the failover was confirmed now belong to it.
        for key in _EPISODE_CHILDREN:
            if key in self.open and self.open[key]["parent"] is None and key != "failed":
                self.open[key]["parent"] = self.open["failover"]["id"]

    def _open_failed(self, out: list[Output], t: int) -> None:
        ep = self.ep
        assert ep is not None
        lost_at = ep["lost_at"]
        parent = self.open["failover"]["id"] if "failover" in self.open else None
        self._open_incident(
            out,
            "failed",
            "FAILED_TRANSFER",
            lost_at,
            t,
            f"{self.site_id}: {ep['from']} lost at {_t(lost_at)} and no alternate source on load "
            f"after {_dur(t - lost_at)}; load may be down: check ATS/STS, batteries and "
            f"generators now",
            parent=parent,
            source_from=ep["from"],
        )

    def _open_gen_failure(self, out: list[Output], dev: str, t: int, why: str) -> None:
        key = "gen:" + dev
        if key in self.open:
            return
        self._open_incident(
            out,
            key,
            "GEN_START_FAILURE",
            t,
            t,
            f"{self.site_id}: generator {dev} failed to start ({why}); "
            f"{self._gens_online() or 0} generators online, dispatch a technician",
            device=dev,
            id_suffix=dev,
        )

    def _flap(self, out: list[Output], t: int, why: str) -> None:
        inc = self.open.get("flap")
        if inc is None:
            self._open_incident(
                out,
                "flap",
                "FLAPPING",
                t,
                t,
                f"{self.site_id}: power source flapping: {why}; "
                f"hold the site on its alternate source until grid is stable",
                last=t,
                count=1,
            )
        else:
            inc["last"] = t
            inc["count"] += 1
            self._emit(out, "flap", "UPDATE", t, f"{self.site_id}: still flapping: {why}")

    def _count_change(self, out: list[Output], t: int) -> None:
        changes = self.changes
        changes.append(t)
        horizon = t - self._flap_window
        while changes and changes[0] < horizon:
            changes.pop(0)
        if len(changes) >= self.config.flap_changes:
            inc = self.open.get("flap")
            if inc is None:
                self._open_incident(
                    out,
                    "flap",
                    "FLAPPING",
                    changes[0],
                    t,
                    f"{self.site_id}: power source changed {len(changes)} times in "
                    f"{_dur(t - changes[0])}; hold the site on one source until grid is stable",
                    last=t,
                    count=len(changes),
                )
            elif inc["last"] != t:
                inc["last"] = t
                inc["count"] += 1

    def _end_episode(self, out: list[Output], t: int, why: str) -> None:
        ep = self.ep
        assert ep is not None
        for key in _EPISODE_CHILDREN:
            inc = self.open.get(key)
            if inc is None:
                continue
            if key == "pq":
                text = self._pq_text(inc, resolved=True)
            elif key == "shed":
                text = self._shed_text(inc, resolved=True)
            else:
                text = f"{self.site_id}: {inc['kind'].lower().replace('_', ' ')} over, site back on GRID"
            self._emit(out, key, "RESOLVED", t, text, ended=t)
        if ep["open"]:
            end = ep["retransfer_at"] if ep["retransfer_at"] is not None else t
            soc = "" if ep["min_soc"] is None else f", min battery {ep['min_soc']:.1f} %"
            self._emit(
                out,
                "failover",
                "RESOLVED",
                t,
                f"{self.site_id}: back to normal, on GRID since {_t(end)} and stable; "
                f"{_dur(ep['alt_total'])} on alternate{soc}",
                ended=end,
            )
        self.ep = None

    # ============================================================================ silence
    def _open_silent(self, out: list[Output], now: int, idle: int) -> None:
        last = self.buffer.max_ts
        assert last is not None
        parent = None
        for key in ("failover", "failed"):
            if key in self.open:
                parent = self.open[key]["id"]
                break
        during = f" during open incident {parent}" if parent else ""
        self._open_incident(
            out,
            "silent",
            "SITE_SILENT",
            last,
            now,
            f"{self.site_id}: no events for {_dur(idle)} (last event at {_t(last)}){during}; "
            f"check the site controller and its uplink",
            parent=parent,
        )

    def _resolve_silent(self, out: list[Output], t: int) -> None:
        inc = self.open["silent"]
        t = max(t, inc["start"])
        self._emit(
            out,
            "silent",
            "RESOLVED",
            t,
            f"{self.site_id}: events flowing again after {_dur(t - inc['start'])} of silence",
            ended=t,
        )

    # ============================================================================ emit
    def _open_incident(
        self,
        out: list[Output],
        key: str,
        kind: str,
        start: int,
        t: int,
        summary: str,
        *,
        device: str | None = None,
        parent: str | None = None,
        id_suffix: str | None = None,
        emit: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        if parent is None and key in _EPISODE_CHILDREN and key != "failed" and "failover" in self.open:
            parent = self.open["failover"]["id"]
        inc_id = f"{self.site_id}/{kind}/{start}" + (f"/{id_suffix}" if id_suffix else "")
        inc = {"id": inc_id, "kind": kind, "start": start, "device": device, "parent": parent, **extra}
        self.open[key] = inc
        if emit:
            self._emit(out, key, "OPEN", t, summary)
        return inc

    def _gens_online(self) -> int | None:
        gens = self.gens
        if gens["reported"] is not None:
            return int(gens["reported"])
        return len(gens["running"]) if gens["seen"] else None

    def _emit(
        self, out: list[Output], key: str, state: str, t: int, summary: str, ended: int | None = None
    ) -> None:
        inc = self.open[key] if state != "RESOLVED" else self.open.pop(key)
        ep = self.ep
        if key == "failover" and ep is not None:
            alt = ep["alt_total"] + (t - ep["alt_since"] if ep["alt_since"] is not None else 0)
            fields: dict[str, Any] = {
                "transfer_ms": ep["transfer_ms"],
                "source_from": ep["from"] if ep["from"] != "NONE" else "GRID",
                "source_to": ep["to"],
                "time_on_alternate_ms": alt / 1000,
                "device_id": ep["transfer_device"],
            }
        else:
            fields = {
                "transfer_ms": inc.get("transfer_ms"),
                "source_from": inc.get("source_from"),
                "source_to": inc.get("source_to"),
                "time_on_alternate_ms": None,
                "device_id": inc["device"],
            }
            if ep is not None and key in _EPISODE_CHILDREN:
                fields["source_from"] = fields["source_from"] or ep["from"]
                fields["source_to"] = fields["source_to"] or ep["to"]
        self.stats["incidents"] += 1
        out.append(
            Incident(
                incident_id=inc["id"],
                site_id=self.site_id,
                kind=inc["kind"],
                state=state,
                started_us=inc["start"],
                summary=summary,
                updated_us=t,
                ended_us=ended,
                min_battery_soc_pct=None if ep is None else ep["min_soc"],
                gens_online=self._gens_online(),
                load_mw=self.load_mw,
                parent_incident_id=inc["parent"],
                **fields,
            )
        )

    # ============================================================================ texts
    def _pq_text(self, inc: dict[str, Any], resolved: bool = False) -> str:
        cfg = self.config
        parts = []
        if inc["f_min"] is not None and (
            "underfrequency" in inc["classes"] or "overfrequency" in inc["classes"]
        ):
            parts.append(
                f"frequency {inc['f_min']:.2f}-{inc['f_max']:.2f} Hz (limits {cfg.freq_min_hz:g}-"
                f"{cfg.freq_max_hz:g})"
            )
        if inc["v_min"] is not None and {"sag", "swell", "interruption"} & set(inc["classes"]):
            parts.append(f"voltage {inc['v_min']:.3f}-{inc['v_max']:.3f} pu")
        what = f"{', '.join(inc['classes'])}: {'; '.join(parts)}"
        if resolved:
            return f"{self.site_id}: power quality back within limits (was {what})"
        on = self.ep["to"] if self.ep is not None and self.ep["to"] else "alternate source"
        return (
            f"{self.site_id}: power-quality excursion while islanded on {on}: {what}; check generator "
            f"governors/AVR and load steps"
        )

    def _shed_text(self, inc: dict[str, Any], resolved: bool = False) -> str:
        load = "" if self.load_mw is None else f", load now {self.load_mw:g} MW"
        detail = f" ({inc['detail']})" if inc.get("detail") else ""
        if resolved:
            return f"{self.site_id}: load shedding over after {inc['count']} shed event(s){load}"
        where = f" while on {self.ep['to'] or 'alternate'}" if self.ep is not None else ""
        return (
            f"{self.site_id}: load shed{where}: {inc['count']} shed event(s){detail}{load}; "
            f"check which workloads were dropped"
        )
