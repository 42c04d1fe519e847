"""Late events (issue 12): a late event that fills a reported sequence gap resolves the SEQUENCE_GAP
incident (and its alert); a late sequence-of-events record within ``soe_buffer_s`` is applied, not
dead-lettered. Both fail on the detector before the fix."""

from __future__ import annotations

from typing import Any

import pytest

from processors.power import Detector, Incident, LateEvent, Output, PowerConfig, alert_for_incident
from processors.power.scenario import SiteEvents


def heartbeat(site: SiteEvents, start_s: float, end_s: float, every_s: float = 1.0,
              device: str = "ctl-1") -> list[dict[str, Any]]:  # fmt: skip
    out, t = [], start_s
    while t <= end_s:
        out.append(site.measure(t, device=device))
        t += every_s
    return out


def feed(det: Detector, events: list[dict[str, Any]]) -> list[Output]:
    out: list[Output] = []
    for e in events:
        out += det.on_event(e)
    return out


def incidents(outputs: list[Output], kind: str | None = None) -> list[Incident]:
    return [o for o in outputs if isinstance(o, Incident) and (kind is None or o.kind == kind)]


def late(outputs: list[Output]) -> list[LateEvent]:
    return [o for o in outputs if isinstance(o, LateEvent)]


# ------------------------------------------------------------------------------ (a) gap filled late
def test_late_event_filling_a_gap_resolves_the_gap_and_its_alert() -> None:
    site = SiteEvents()
    events = heartbeat(site, 0, 20)
    held = events.pop(3)  # seq 4 of ctl-1, uploaded late
    det = Detector("dc-1")
    out = feed(det, events)
    (opened,) = incidents(out, "SEQUENCE_GAP")
    assert opened.state == "OPEN" and "seq 4 (1 events lost)" in opened.summary
    back = det.on_event(held)
    (resolved,) = incidents(back, "SEQUENCE_GAP")
    assert resolved.state == "RESOLVED" and resolved.incident_id == opened.incident_id
    assert resolved.updated_us >= site.at(19)  # decided now (latest applied event), not back at 3 s
    assert "gap:ctl-1" not in det.open
    fired, cleared = alert_for_incident(opened), alert_for_incident(resolved)
    assert fired is not None and cleared is not None
    assert (fired["status"], cleared["status"]) == ("FIRING", "RESOLVED")
    assert fired["fingerprint"] == cleared["fingerprint"]
    # a late measurement is still not applied out of order: it is dead-lettered as before
    assert [o.reason for o in late(back)] == ["seq 4 of ctl-1 arrived after its sequence gap was reported"]


def test_gap_resolves_only_when_every_missing_event_arrived() -> None:
    site = SiteEvents()
    events = heartbeat(site, 0, 20)
    held = [events.pop(3) for _ in range(3)]  # seq 4-6
    det = Detector("dc-1")
    feed(det, events)
    states = []
    for e in (held[1], held[0], held[2]):
        states += [(i.state, i.summary) for i in incidents(det.on_event(e), "SEQUENCE_GAP")]
    assert [s for s, _ in states] == ["UPDATE", "UPDATE", "RESOLVED"]
    assert "2 events still missing" in states[0][1] and "1 events still missing" in states[1][1]


def test_fill_of_an_earlier_resolved_gap_leaves_a_newer_gap_open() -> None:
    site = SiteEvents()
    events = heartbeat(site, 0, 400, every_s=5)
    first = events.pop(2)  # seq 3 at 10 s: its gap resolves after gap_hold_s (300 s)
    second = events.pop(-5)  # a later hole, its incident still open at the end
    det = Detector("dc-1")
    out = feed(det, events)
    assert [i.state for i in incidents(out, "SEQUENCE_GAP")] == ["OPEN", "RESOLVED", "OPEN"]
    assert incidents(det.on_event(first), "SEQUENCE_GAP") == []
    assert [i.state for i in incidents(det.on_event(second), "SEQUENCE_GAP")] == ["RESOLVED"]


# ------------------------------------------------------------------------- (b) SOE uploads late
def failover_with_late_transfer(
    site: SiteEvents, delay_s: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    transfer = site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID")
    events = [*heartbeat(site, 0, 0.5), site.lost(1.0), *heartbeat(site, 2, 1 + delay_s)]
    return events, transfer


def test_late_soe_transfer_within_buffer_is_applied_not_dead_lettered() -> None:
    site = SiteEvents()
    events, transfer = failover_with_late_transfer(site, 20)
    det = Detector("dc-1")  # default soe_buffer_s
    out = feed(det, events)
    out += det.on_event(transfer)  # 20 s late: the recorder uploaded its buffer
    out += feed(det, heartbeat(site, 22, 60))
    assert late(out) == []
    assert det.stats["late_used"] == 1
    assert "FAILED_TRANSFER" not in {i.kind for i in incidents(out)}
    (opened,) = [i for i in incidents(out, "FAILOVER") if i.state == "OPEN"]
    assert opened.started_us == site.at(1.0)
    assert opened.transfer_ms == pytest.approx(4.0)
    assert (opened.source_to, opened.device_id) == ("BATTERY", "sts-1")
    assert opened.updated_us >= site.at(19)  # the latest applied event time, not back at 4 s
    assert det.phase == "ON_ALTERNATE"


def test_late_soe_event_past_the_buffer_is_dead_lettered() -> None:
    site = SiteEvents()
    events, transfer = failover_with_late_transfer(site, 200)
    det = Detector("dc-1", PowerConfig(soe_buffer_s=120))
    out = feed(det, events)
    assert [i.kind for i in incidents(out)] == ["FAILED_TRANSFER"]
    back = det.on_event(transfer)
    assert [type(o) for o in back] == [LateEvent]
    assert "behind the site's clock" in back[0].reason  # type: ignore[union-attr]


def test_soe_buffer_zero_dead_letters_every_late_event() -> None:
    site = SiteEvents()
    events, transfer = failover_with_late_transfer(site, 20)
    det = Detector("dc-1", PowerConfig(soe_buffer_s=0))
    feed(det, events)
    assert [type(o) for o in det.on_event(transfer)] == [LateEvent]


def test_late_source_event_superseded_by_a_newer_one_changes_no_source() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1"),
        *heartbeat(site, 2, 39, every_s=5),
    ]
    stale = site.transfer(40.0, "GENERATOR", device="ats-1", source_from="BATTERY")
    events += [*heartbeat(site, 41, 99, every_s=5), site.transfer(100.0, "GRID", device="sts-1"),
               *heartbeat(site, 101, 150, every_s=5)]  # fmt: skip
    det = Detector("dc-1")
    out = feed(det, events)
    out += det.on_event(stale)  # older than the retransfer already applied
    out += feed(det, heartbeat(site, 151, 420, every_s=10))
    assert late(out) == [] and det.stats["late_used"] == 1
    assert [i.state for i in incidents(out, "FAILOVER")] == ["OPEN", "UPDATE", "RESOLVED"]
    assert det.phase == "NORMAL"


def test_late_generator_running_resolves_its_start_failure() -> None:
    site = SiteEvents()
    running = site.event("gen-1", "GEN_RUNNING", 40.0, gens_online=1)
    events = [*heartbeat(site, 0, 1), site.event("gen-1", "GEN_START", 2.0), *heartbeat(site, 3, 80)]
    det = Detector("dc-1")
    out = feed(det, events)
    assert [i.state for i in incidents(out, "GEN_START_FAILURE")] == ["OPEN"]
    back = det.on_event(running)  # 40 s late
    (resolved,) = incidents(back)
    assert (resolved.kind, resolved.state, resolved.ended_us) == (
        "GEN_START_FAILURE",
        "RESOLVED",
        site.at(40),
    )
    assert resolved.updated_us >= site.at(78)  # the latest applied event time


def test_late_generator_start_after_that_generator_stopped_changes_nothing() -> None:
    site = SiteEvents()
    first = site.measure(0.5, device="gen-1")
    start = site.event("gen-1", "GEN_START", 2.0)
    events = [
        first,
        *heartbeat(site, 0, 1),
        site.event("gen-1", "GEN_RUNNING", 12.0, gens_online=1),
        site.event("gen-1", "GEN_STOP", 40.0),
        *heartbeat(site, 41, 70),
    ]
    det = Detector("dc-1")
    out = feed(det, events)
    out += det.on_event(start)  # 68 s late, older than the generator's RUNNING and STOP
    out += feed(det, heartbeat(site, 71, 120))
    assert det.stats["late_used"] == 1 and late(out) == []
    assert [(i.kind, i.state) for i in incidents(out)] == [
        ("SEQUENCE_GAP", "OPEN"),
        ("SEQUENCE_GAP", "RESOLVED"),
    ]
    assert det.site.gens["starts"] == {}
