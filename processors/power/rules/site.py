"""What the rules of one site share: its facts, its episode, its open incidents, and how records go out.

* facts: ``source`` (what carries the load), ``load_mw``, ``gens`` (generators seen running, pending
  starts, the last reported ``gens_online``, each generator's last event time): incident records carry
  them;
* ``ep``: the current off-grid episode, written by the FAILOVER rule and read by the others (``None``
  while on grid, see ``FailoverRule``);
* ``open``: rule key -> open incident (``id``, ``kind``, ``start``, ``device``, ``parent`` and the rule's
  own fields). Each rule owns its keys (``failover``, ``gap:<device>``, ...); these are the keys of
  the stored state, so they never change;
* ``late``: True while a late sequence-of-events record is applied out of order; then facts are not
  overwritten by older values and records are stamped no earlier than ``floor_us``.

Everything here is plain JSON (``to_dict``/``restore``) in the layout the detector has always stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from processors.power.config import PowerConfig
from processors.power.events import Event, Incident, Output
from processors.power.kinds import BY_NAME, FAILOVER, IncidentKind
from processors.power.rules.signals import Signal

__all__ = ["Site"]

_STATS = ("events", "applied", "duplicates", "late", "late_used", "gaps", "blips", "reordered", "incidents",
          "not_reported")  # fmt: skip


class Site:
    """The shared state of one site's rules; ``publish`` hands a signal to the rules that listen."""

    def __init__(self, site_id: str, config: PowerConfig, publish: Callable[[Signal], None]) -> None:
        self.site_id = site_id
        self.config = config
        self.publish = publish
        self.source = "GRID"
        self.source_ts: int | None = None  # event time of the last applied source event
        self.ep: dict[str, Any] | None = None
        self.open: dict[str, dict[str, Any]] = {}
        self.gens: dict[str, Any] = {"running": [], "starts": {}, "reported": None, "seen": False, "last": {}}
        self.load_mw: float | None = None
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.out: list[Output] = []  # records of the current detector call
        self.late = False
        self.floor_us: int | None = None

    # -- reading -------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        ep = self.ep
        if ep is None:
            return "NORMAL"
        if ep["retransfer_at"] is not None:
            return "RETRANSFER"
        return "ON_ALTERNATE" if ep["alt_since"] is not None else "SOURCE_LOST"

    def open_id(self, kind: IncidentKind) -> str | None:
        """Id of the open incident of ``kind`` (FAILOVER, FAILED_TRANSFER: one at a time), or None."""
        for inc in self.open.values():
            if inc["kind"] == kind.name:
                return str(inc["id"])
        return None

    def on_alternate_at(self, ts: int) -> bool:
        """Whether an alternate source carried the load at event time ``ts`` (as far as we know)."""
        ep = self.ep
        if ep is None or ep["alt_since"] is None:
            return False
        return not self.late or ts >= ep["alt_since"]

    def gens_online(self) -> int | None:
        gens = self.gens
        if gens["reported"] is not None:
            return int(gens["reported"])
        return len(gens["running"]) if gens["seen"] else None

    # -- facts ---------------------------------------------------------------------------------
    def observe(self, e: Event) -> None:
        """Facts every applied event carries; a late event never overwrites a newer value."""
        ep = self.ep
        if not self.late:
            load = e.get("load_mw")
            if load is not None:
                self.load_mw = load
            gens = e.get("gens_online")
            if gens is not None:
                self.gens["reported"] = gens
        soc = e.get("battery_soc_pct")
        if (
            soc is not None
            and ep is not None
            and (ep["min_soc"] is None or soc < ep["min_soc"])
            and (not self.late or e["ts"] >= ep["start"])
        ):
            ep["min_soc"] = soc

    # -- incidents -----------------------------------------------------------------------------
    def open_incident(
        self,
        key: str,
        kind: IncidentKind,
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
        """Register an incident under the rule's ``key`` (and emit its OPEN unless ``emit=False``)."""
        if parent is None and kind.episode == "child" and kind.adopted:
            parent = self.open_id(FAILOVER)
        inc_id = f"{self.site_id}/{kind.name}/{start}" + (f"/{id_suffix}" if id_suffix else "")
        inc = {"id": inc_id, "kind": kind.name, "start": start, "device": device, "parent": parent, **extra}
        self.open[key] = inc
        if emit:
            self.emit(key, "OPEN", t, summary)
        return inc

    def adopt(self, failover_id: str) -> None:
        """The failover is confirmed: children opened before it (inside the blip window) now belong to it."""
        for inc in self.open.values():
            spec = BY_NAME[inc["kind"]]
            if spec.episode == "child" and spec.adopted and inc["parent"] is None:
                inc["parent"] = failover_id

    def emit(
        self,
        key: str,
        state: str,
        t: int,
        summary: str,
        ended: int | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """One record of the open incident ``key`` (RESOLVED removes it). ``fields``: the transfer
        fields, when the rule computes them itself (FAILOVER); otherwise they come from the incident,
        and an episode child takes ``source_from``/``source_to`` from its episode."""
        inc = self.open[key] if state != "RESOLVED" else self.open.pop(key)
        ep = self.ep
        if fields is None:
            fields = {
                "transfer_ms": inc.get("transfer_ms"),
                "source_from": inc.get("source_from"),
                "source_to": inc.get("source_to"),
                "time_on_alternate_ms": None,
                "device_id": inc["device"],
            }
            if ep is not None and BY_NAME[inc["kind"]].episode == "child":
                fields["source_from"] = fields["source_from"] or ep["from"]
                fields["source_to"] = fields["source_to"] or ep["to"]
        if self.floor_us is not None and t < self.floor_us:
            t = self.floor_us  # decided now, while applying a late event: never stamped in the past
        self.stats["incidents"] += 1
        self.out.append(
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
                gens_online=self.gens_online(),
                load_mw=self.load_mw,
                parent_incident_id=inc["parent"],
                **fields,
            )
        )

    # -- state ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_ts": self.source_ts,
            "ep": None if self.ep is None else dict(self.ep),
            "open": {k: dict(v) for k, v in self.open.items()},
            "gens": {
                "running": list(self.gens["running"]),
                "starts": dict(self.gens["starts"]),
                "reported": self.gens["reported"],
                "seen": self.gens["seen"],
                "last": dict(self.gens["last"]),
            },
            "load_mw": self.load_mw,
            "stats": dict(self.stats),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Read a stored state (``source_ts`` came later: older states have none)."""
        self.source = data["source"]
        self.source_ts = data.get("source_ts")
        self.ep = None if data["ep"] is None else dict(data["ep"])
        self.open = {k: dict(v) for k, v in data["open"].items()}
        gens = data["gens"]
        self.gens = {
            "running": list(gens["running"]),
            "starts": dict(gens["starts"]),
            "reported": gens["reported"],
            "seen": gens["seen"],
            "last": dict(gens.get("last", {})),  # came with late SOE records: older states have none
        }
        self.load_mw = data["load_mw"]
        self.stats.update(data.get("stats", {}))
