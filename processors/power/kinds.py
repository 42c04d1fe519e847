"""Incident kinds of ``power.incidents.v1``, declared once: severity, episode grouping, what fires them.

Everything else derives from this table: ``events.KINDS``, ``alerts.SEVERITY``, the alert name and
runbook anchor, which incidents belong to a failover episode (and resolve with it at the latest), and
the generic texts. A unit test checks it against the Avro enum ``IncidentKind`` of
``power.incidents.v1`` and against the simulator's injected fault kinds, and checks that every kind
has exactly one rule in ``processors.power.rules`` that fires it.

Episode grouping (``episode``):

* ``root``: the FAILOVER itself; the episode runs from leaving NORMAL to coming back.
* ``child``: happens inside an episode; its record carries the episode's ``source_from``/``source_to``,
  its ``parent_incident_id`` is the FAILOVER, and it resolves with the episode at the latest.
  ``adopted``: opened before the failover was confirmed (inside the blip window), it becomes the
  failover's child once the failover opens. A FAILED_TRANSFER is not adopted: it precedes the failover.
* ``own``: its own lifetime; a parent only where the rule says so (SITE_SILENT during a failover).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALL",
    "BATTERY_RESERVE",
    "BY_NAME",
    "FAILED_TRANSFER",
    "FAILOVER",
    "FLAPPING",
    "GEN_START_FAILURE",
    "KINDS",
    "LOAD_SHED",
    "PQ_EXCURSION",
    "SEQUENCE_GAP",
    "SEVERITY",
    "SITE_SILENT",
    "SLOW_TRANSFER",
    "IncidentKind",
    "alertname",
    "anchor",
]

Severity = Literal["critical", "warning", "info"]
Episode = Literal["root", "child", "own"]


@dataclass(frozen=True, slots=True)
class IncidentKind:
    """One symbol of the ``IncidentKind`` Avro enum and how Carnival treats it."""

    name: str
    severity: Severity
    episode: Episode
    fires: str
    """When it fires and when it resolves (docs, and the runbook anchor's heading)."""
    adopted: bool = True
    """For ``child`` kinds: opened before the failover was confirmed, it becomes the failover's child."""
    critical_in_episode: bool = False
    """Severity goes to critical when the incident has a parent (it happened during a failover)."""

    @property
    def title(self) -> str:
        """Human words for generic texts: ``failed transfer``."""
        return self.name.lower().replace("_", " ")

    @property
    def alertname(self) -> str:
        return alertname(self.name)

    @property
    def anchor(self) -> str:
        return anchor(self.name)

    def severity_for(self, parent_incident_id: str | None) -> Severity:
        return "critical" if self.critical_in_episode and parent_incident_id else self.severity


def alertname(kind: str) -> str:
    """The alert's ``alertname`` label: ``PowerFailedTransfer``."""
    return "Power" + "".join(w.capitalize() for w in kind.split("_"))


def anchor(kind: str) -> str:
    """The runbook anchor in docs/power.md: ``failed-transfer``."""
    return kind.lower().replace("_", "-")


FAILOVER = IncidentKind(
    "FAILOVER", "info", "root",
    "alternate source on load and off grid for blip_ignore_s, or ISLAND_ENTER; resolves on grid and "
    "stable for retransfer_stable_s",
)  # fmt: skip
FAILED_TRANSFER = IncidentKind(
    "FAILED_TRANSFER", "critical", "child",
    "normal source lost and no alternate on load after failed_transfer_s; resolves when an alternate "
    "takes the load or grid is back",
    adopted=False,
)  # fmt: skip
SLOW_TRANSFER = IncidentKind(
    "SLOW_TRANSFER", "warning", "child",
    "transfer time over sts_transfer_limit_ms (STS) or ats_transfer_limit_ms (others); resolves with "
    "the episode",
)  # fmt: skip
GEN_START_FAILURE = IncidentKind(
    "GEN_START_FAILURE", "critical", "own",
    "GEN_FAIL, or no GEN_RUNNING gen_start_timeout_s after GEN_START; resolves on GEN_RUNNING or GEN_STOP",
)  # fmt: skip
FLAPPING = IncidentKind(
    "FLAPPING", "warning", "own",
    "grid lost (or left) again inside the retransfer delay, or flap_changes source changes within "
    "flap_window_s; resolves after retransfer_stable_s without a change",
)  # fmt: skip
BATTERY_RESERVE = IncidentKind(
    "BATTERY_RESERVE", "critical", "child",
    "battery SoC <= battery_reserve_pct while on alternate; resolves above reserve + hysteresis",
)  # fmt: skip
PQ_EXCURSION = IncidentKind(
    "PQ_EXCURSION", "warning", "child",
    "while on alternate, frequency or voltage out of bounds (IEEE 1159 classes); resolves after "
    "pq_clear_s in bounds",
)  # fmt: skip
LOAD_SHED = IncidentKind(
    "LOAD_SHED", "warning", "child",
    "LOAD_SHED event; resolves with the episode, outside one after load_shed_hold_s quiet",
)  # fmt: skip
SITE_SILENT = IncidentKind(
    "SITE_SILENT", "warning", "own",
    "no event from the site for silent_after_s of processing time; resolves on the next event",
    critical_in_episode=True,
)  # fmt: skip
SEQUENCE_GAP = IncidentKind(
    "SEQUENCE_GAP", "warning", "own",
    "a device's seq skipped numbers that did not arrive within the allowance; resolves when they all "
    "arrive late, or after gap_hold_s without another gap",
)  # fmt: skip

ALL: tuple[IncidentKind, ...] = (
    FAILOVER,
    FAILED_TRANSFER,
    SLOW_TRANSFER,
    GEN_START_FAILURE,
    FLAPPING,
    BATTERY_RESERVE,
    PQ_EXCURSION,
    LOAD_SHED,
    SITE_SILENT,
    SEQUENCE_GAP,
)
BY_NAME: dict[str, IncidentKind] = {k.name: k for k in ALL}
KINDS: tuple[str, ...] = tuple(BY_NAME)
SEVERITY: dict[str, Severity] = {k.name: k.severity for k in ALL}
