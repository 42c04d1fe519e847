"""Power: every injected failover fault found or MISSED, every other incident explained or not.

Matching: a truth failover (site, start, end) explains incidents of its expected kinds at that site that
start within ``[start - MATCH_BEFORE_S, end + MATCH_AFTER_S]`` (the detector resolves a failover once
the grid has been stable for its retransfer window, 300 s by default). Noise the simulator injects on
purpose explains the rest, with evidence from the truth:

* SEQUENCE_GAP: every sequence number the incident reports skipped was held back by the simulator's
  late-delivery model (``power_late`` truth rows, 5-60 s late: past the detector's reorder allowance);
* LATE dead letters: each one (site, device, seq) is one of those late deliveries;
* SITE_SILENT: the site's last event came within ``END_SILENCE_S`` of the run's end (the simulator
  stopped, so every site goes quiet).

Anything else is listed as unexplained and fails the check.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from carnival.report.model import Section

MATCH_BEFORE_S = 10.0
MATCH_AFTER_S = 600.0
END_SILENCE_S = 120.0
TRANSFER_TOLERANCE_MS = 1.0  # the detector times from SOURCE_LOST or BREAKER_OPEN (0.3 ms apart)
TRANSFER_TOLERANCE_SHARE = 0.02
SKIPPED_RE = re.compile(r"skipped seq (\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class Incident:
    incident_id: str
    site_id: str
    kind: str
    started_at_ms: int
    transfer_ms: float | None = None
    device_id: str | None = None
    summaries: tuple[str, ...] = ()


def incident_from_row(row: dict[str, Any]) -> Incident:
    return Incident(
        incident_id=row["incident_id"],
        site_id=row["site_id"],
        kind=row["kind"],
        started_at_ms=int(row["started_at_ms"]),
        transfer_ms=row.get("transfer_ms"),
        device_id=row.get("device_id"),
        summaries=tuple(row.get("summaries") or ()),
    )


def skipped_seqs(incident: Incident) -> set[int]:
    """Sequence numbers a SEQUENCE_GAP incident reported skipped, over all its records."""
    out: set[int] = set()
    for text in incident.summaries:
        for first, last in SKIPPED_RE.findall(text):
            out.update(range(int(first), int(last or first) + 1))
    return out


def _injected_transfer(failover: dict[str, Any]) -> float | None:
    value = failover.get("transfer_ms", failover.get("alternate_source_after_ms"))
    return None if value is None else float(value)


def _transfer_ok(measured: float | None, injected: float | None) -> bool:
    if injected is None:
        return True
    if measured is None:
        return False
    return abs(measured - injected) <= max(TRANSFER_TOLERANCE_MS, TRANSFER_TOLERANCE_SHARE * injected)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def check_power(
    failovers: list[dict[str, Any]],
    incidents: list[Incident],
    late_power: list[dict[str, Any]],
    late_dead_letters: list[tuple[str, str, int]],
    run_end_ms: int,
) -> Section:
    """``late_dead_letters``: (site_id, device_id, seq) of each LATE dead letter of power.events.v1."""
    section = Section("Power: injected faults vs incidents found")
    used: set[str] = set()
    missed, bad_transfer = 0, 0
    for f in sorted(failovers, key=lambda r: (r["started_at_us"], r["site_id"])):
        lo = f["started_at_us"] // 1000 - MATCH_BEFORE_S * 1000
        hi = f["ended_at_us"] // 1000 + MATCH_AFTER_S * 1000
        window = [
            i
            for i in incidents
            if i.site_id == f["site_id"] and lo <= i.started_at_ms <= hi and i.incident_id
        ]
        injected = _injected_transfer(f)
        section.lines.append(
            f"failover {f['site_id']} at {_clock(f['started_at_us'] // 1000)}, injected fault "
            f"{f['fault'] or 'none'}, transfer {_fmt_ms(injected)}"
            + (" (alternate source after the failed transfer)" if f.get("fault") == "FAILED_TRANSFER" else "")
        )
        for kind in f["expected_incidents"]:
            found = next((i for i in window if i.kind == kind and i.incident_id not in used), None)
            if found is None:
                missed += 1
                section.lines.append(f"  MISSED {kind}")
                continue
            used.add(found.incident_id)
            note = ""
            if kind in ("FAILOVER", "SLOW_TRANSFER", "FAILED_TRANSFER") and injected is not None:
                ok = _transfer_ok(found.transfer_ms, injected)
                bad_transfer += 0 if ok else 1
                note = f", measured {_fmt_ms(found.transfer_ms)} vs injected {_fmt_ms(injected)}" + (
                    "" if ok else " (OFF)"
                )
            section.lines.append(f"  found  {kind:17} {found.incident_id}{note}")
    expected = sum(len(f["expected_incidents"]) for f in failovers)
    section.check(
        "every injected failover and fault found",
        missed == 0,
        f"{expected - missed}/{expected} expected incidents found over {len(failovers)} failovers",
    )
    section.check(
        "measured transfer times match the injected ones",
        bad_transfer == 0,
        f"{bad_transfer} off by more than {TRANSFER_TOLERANCE_MS:g} ms / {TRANSFER_TOLERANCE_SHARE:.0%}",
    )
    _explain_rest(section, [i for i in incidents if i.incident_id not in used], late_power, run_end_ms)
    _explain_late(section, late_power, late_dead_letters)
    return section


def _explain_rest(
    section: Section, rest: list[Incident], late_power: list[dict[str, Any]], end_ms: int
) -> None:
    late = {(r["site_id"], r["device_id"], int(r["seq"])) for r in late_power}
    explained: Counter[str] = Counter()
    unexplained: list[Incident] = []
    for inc in rest:
        if inc.kind == "SEQUENCE_GAP":
            seqs = skipped_seqs(inc)
            if seqs and all((inc.site_id, inc.device_id, s) in late for s in seqs):
                explained["SEQUENCE_GAP"] += 1
                continue
        elif inc.kind == "SITE_SILENT" and inc.started_at_ms >= end_ms - END_SILENCE_S * 1000:
            explained["SITE_SILENT"] += 1
            continue
        unexplained.append(inc)
    if explained["SEQUENCE_GAP"]:
        section.lines.append(
            f"explained: {explained['SEQUENCE_GAP']} SEQUENCE_GAP from the simulator's late-delivery model "
            f"(every skipped seq is one of the {len(late)} events it delivered 5-60 s late)"
        )
    if explained["SITE_SILENT"]:
        section.lines.append(
            f"explained: {explained['SITE_SILENT']} SITE_SILENT after the run's end (the simulator stopped)"
        )
    for inc in unexplained[:20]:
        section.lines.append(
            f"unexplained: {inc.kind} {inc.incident_id} at {_clock(inc.started_at_ms)}"
            + (f" ({inc.summaries[0]})" if inc.summaries else "")
        )
    if len(unexplained) > 20:
        section.lines.append(f"unexplained: ... {len(unexplained) - 20} more")
    section.check(
        "no incident without an injected cause",
        not unexplained,
        f"{len(unexplained)} unexplained"
        + (f" ({', '.join(f'{k} {n}' for k, n in Counter(i.kind for i in unexplained).most_common())})"
           if unexplained else ""),
    )  # fmt: skip


def _explain_late(
    section: Section, late_power: list[dict[str, Any]], dead: list[tuple[str, str, int]]
) -> None:
    late = {(r["site_id"], r["device_id"], int(r["seq"])) for r in late_power}
    stray = [d for d in dead if d not in late]
    section.lines.append(
        f"late power events: {len(late)} injected (5-60 s late), {len(dead)} dead-lettered as LATE"
        + (f", {len(late) - len(set(dead) & late)} of them used by the detector" if late else "")
    )
    section.check(
        "every LATE dead letter is an injected late delivery",
        not stray,
        f"{len(dead) - len(stray)}/{len(dead)} matched to the truth",
    )


def _clock(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
