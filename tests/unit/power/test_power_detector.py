"""Every failover rule of the power detector, driven through event timelines (no Kafka)."""

from __future__ import annotations

from typing import Any

import pytest

from processors.power import Detector, Incident, InvalidPowerEvent, PowerConfig
from processors.power.scenario import SiteEvents


def heartbeat(site: SiteEvents, start_s: float, end_s: float, every_s: float = 1.0,
              device: str = "ctl-1", **fields: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Periodic measurements from a controller: event time moves on, nothing else happens."""
    out, t = [], start_s
    while t <= end_s:
        out.append(site.measure(t, device=device, **fields))
        t += every_s
    return out


def run(events: list[dict[str, Any]], config: PowerConfig | None = None,
        det: Detector | None = None) -> tuple[Detector, list[Incident]]:  # fmt: skip
    det = det or Detector(events[0]["site_id"], config)
    incidents: list[Incident] = []
    for e in events:
        incidents += [o for o in det.on_event(e) if isinstance(o, Incident)]
    return det, incidents


def states(incidents: list[Incident], kind: str | None = None) -> list[tuple[str, str]]:
    return [(i.kind, i.state) for i in incidents if kind is None or i.kind == kind]


def one(incidents: list[Incident], kind: str, state: str) -> Incident:
    found = [i for i in incidents if i.kind == kind and i.state == state]
    assert len(found) == 1, states(incidents)
    return found[0]


def sts_failover(site: SiteEvents, back_s: float = 100.0, end_s: float = 420.0) -> list[dict[str, Any]]:
    return [
        *heartbeat(site, 0, 0.9),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID"),
        *heartbeat(site, 2, back_s - 1, every_s=5),
        site.transfer(back_s, "GRID", device="sts-1", source_from="BATTERY"),
        *heartbeat(site, back_s + 1, end_s, every_s=5),
    ]


# ----------------------------------------------------------------------------------------- failover
def test_failover_opens_updates_and_resolves_after_stable_retransfer() -> None:
    site = SiteEvents()
    det, inc = run(sts_failover(site))
    assert states(inc) == [("FAILOVER", "OPEN"), ("FAILOVER", "UPDATE"), ("FAILOVER", "RESOLVED")]
    opened, resolved = inc[0], inc[-1]
    assert opened.incident_id == resolved.incident_id == f"dc-1/FAILOVER/{site.at(1.0)}"
    assert opened.started_us == site.at(1.0)
    assert opened.transfer_ms == pytest.approx(4.0)
    assert (opened.source_from, opened.source_to, opened.device_id) == ("GRID", "BATTERY", "sts-1")
    assert resolved.ended_us == site.at(100.0)
    assert resolved.updated_us == site.at(400.0)  # resolved once stable for retransfer_stable_s (300 s)
    assert resolved.time_on_alternate_ms == pytest.approx(98_996.0)
    assert det.phase == "NORMAL"


def test_failover_opens_only_after_blip_threshold() -> None:
    site = SiteEvents()
    events = sts_failover(site)
    det = Detector("dc-1")
    seen: list[Incident] = []
    for e in events:
        seen += [o for o in det.on_event(e) if isinstance(o, Incident)]
        if e["ts"] < site.at(4.0):
            assert seen == [], "no failover before the load spent blip_ignore_s on the alternate"
    assert seen[0].kind == "FAILOVER"
    assert seen[0].updated_us == site.at(4.0)  # off grid for blip_ignore_s, alternate on load


def test_island_enter_opens_failover_at_once() -> None:
    site = SiteEvents()
    events = [*heartbeat(site, 0, 1), site.event("ctl-1", "ISLAND_ENTER", 1.5, source_to="GENERATOR"),
              *heartbeat(site, 2, 3)]  # fmt: skip
    _, inc = run(events)
    opened = one(inc, "FAILOVER", "OPEN")
    assert opened.updated_us == site.at(1.5)
    assert opened.source_to == "GENERATOR"


def test_battery_bridge_then_generator_updates_source() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.003, "BATTERY", device="sts-1"),
        site.event("gen-1", "GEN_START", 1.5),
        site.event("gen-1", "GEN_RUNNING", 12.0, gens_online=1),
        site.transfer(13.0, "GENERATOR", device="ats-1", source_from="BATTERY", load_mw=12.5),
        *heartbeat(site, 14, 20),
    ]
    _, inc = run(events)
    update = one(inc, "FAILOVER", "UPDATE")
    assert (update.source_to, update.gens_online, update.load_mw) == ("GENERATOR", 1, 12.5)
    assert "BATTERY -> GENERATOR" in update.summary
    assert "GEN_START_FAILURE" not in {i.kind for i in inc}


# ---------------------------------------------------------------------------------------------- blips
def test_blip_source_lost_and_restored_is_not_a_failover() -> None:
    site = SiteEvents()
    det, inc = run([*heartbeat(site, 0, 0.5), site.lost(1.0), site.restored(3.5), *heartbeat(site, 4, 90)])
    assert inc == []
    assert det.phase == "NORMAL"


def test_blip_with_sts_ride_through_is_not_a_failover() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1"),
        site.restored(2.0),
        site.transfer(2.5, "GRID", device="sts-1"),
        *heartbeat(site, 3, 60),
    ]
    det, inc = run(events)
    assert inc == []
    assert det.stats["blips"] == 1


# ------------------------------------------------------------------------------------------ transfers
def test_slow_static_switch_transfer() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.020, "BATTERY", device="sts-1"),
        *heartbeat(site, 2, 5),
    ]
    _, inc = run(events)
    slow = one(inc, "SLOW_TRANSFER", "OPEN")
    assert slow.transfer_ms == pytest.approx(20.0)
    assert slow.device_id == "sts-1"
    assert "limit 8.0 ms" in slow.summary


def test_fast_static_switch_and_ats_within_limit_are_not_slow() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(9.0, "GENERATOR", device="ats-1"),
        *heartbeat(site, 10, 15),
    ]
    _, inc = run(events)
    assert states(inc) == [("FAILOVER", "OPEN")]
    assert inc[0].transfer_ms == pytest.approx(8000.0)


def test_slow_automatic_switch_transfer_uses_ats_limit() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(13.0, "GENERATOR", device="ats-1"),
        *heartbeat(site, 14, 20),
    ]
    _, inc = run(events)
    assert one(inc, "SLOW_TRANSFER", "OPEN").transfer_ms == pytest.approx(12_000.0)
    assert one(inc, "FAILOVER", "OPEN").transfer_ms == pytest.approx(12_000.0)


def test_failed_transfer_fires_then_resolves_when_alternate_takes_load() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        *heartbeat(site, 2, 40),
        site.transfer(45.0, "GENERATOR", device="ats-1"),
        *heartbeat(site, 46, 50),
    ]
    _, inc = run(events)
    assert states(inc) == [("FAILED_TRANSFER", "OPEN"), ("FAILED_TRANSFER", "RESOLVED"), ("FAILOVER", "OPEN")]
    failed = inc[0]
    assert failed.started_us == site.at(1.0)
    assert failed.updated_us == site.at(31.0)  # fires in event time at lost + failed_transfer_s
    assert "no alternate source on load" in failed.summary


def test_failed_transfer_resolves_when_grid_returns_without_transfer() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        *heartbeat(site, 2, 40),
        site.restored(50.0),
        *heartbeat(site, 51, 60),
    ]
    det, inc = run(events)
    assert states(inc) == [("FAILED_TRANSFER", "OPEN"), ("FAILED_TRANSFER", "RESOLVED")]
    assert det.phase == "NORMAL"


def test_outage_shorter_than_failed_timeout_without_transfer_raises_nothing() -> None:
    site = SiteEvents()
    _, inc = run(
        [
            *heartbeat(site, 0, 0.5),
            site.lost(1.0),
            *heartbeat(site, 2, 10),
            site.restored(12.0),
            *heartbeat(site, 13, 60),
        ]
    )
    assert inc == []


# ---------------------------------------------------------------------------------------- generators
def test_generator_fail_event_is_a_start_failure() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1"),
        site.event("gen-2", "GEN_START", 2.0),
        site.event("gen-2", "GEN_FAIL", 9.0, detail="low fuel"),
        *heartbeat(site, 10, 12),
    ]
    _, inc = run(events)
    fail = one(inc, "GEN_START_FAILURE", "OPEN")
    assert fail.device_id == "gen-2"
    assert fail.incident_id == f"dc-1/GEN_START_FAILURE/{site.at(9.0)}/gen-2"
    assert "low fuel" in fail.summary


def test_generator_start_timeout_then_running_resolves() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.event("gen-1", "GEN_START", 2.0),
        *heartbeat(site, 3, 40),
        site.event("gen-1", "GEN_RUNNING", 41.0),
        *heartbeat(site, 42, 43),
    ]
    _, inc = run(events)
    assert states(inc) == [("GEN_START_FAILURE", "OPEN"), ("GEN_START_FAILURE", "RESOLVED")]
    assert inc[0].updated_us == site.at(32.0)
    assert inc[1].ended_us == site.at(41.0)


# ------------------------------------------------------------------------------------------ flapping
def test_grid_lost_again_before_retransfer_delay_is_flapping_in_same_incident() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1"),
        *heartbeat(site, 2, 99, every_s=5),
        site.transfer(100.0, "GRID", device="sts-1"),
        *heartbeat(site, 101, 149, every_s=5),
        site.lost(150.0),
        site.transfer(150.004, "BATTERY", device="sts-1"),
        *heartbeat(site, 151, 200, every_s=5),
    ]
    _, inc = run(events)
    flap = one(inc, "FLAPPING", "OPEN")
    assert "50.0 s after retransfer" in flap.summary
    assert {i.incident_id for i in inc if i.kind == "FAILOVER"} == {f"dc-1/FAILOVER/{site.at(1.0)}"}
    assert ("FAILOVER", "RESOLVED") not in states(inc)


def test_too_many_source_changes_in_window_is_flapping() -> None:
    site = SiteEvents()
    cfg = PowerConfig(retransfer_stable_s=60, flap_changes=4)
    events = [*heartbeat(site, 0, 0.5)]
    for start in (1.0, 301.0):
        events += [
            site.lost(start),
            site.transfer(start + 0.004, "BATTERY", device="sts-1"),
            *heartbeat(site, start + 1, start + 99, every_s=10),
            site.transfer(start + 100, "GRID", device="sts-1"),
            *heartbeat(site, start + 101, start + 200, every_s=10),
        ]
    _, inc = run(events, cfg)
    assert (
        states(inc, "FAILOVER")
        == [("FAILOVER", "OPEN"), ("FAILOVER", "UPDATE"), ("FAILOVER", "RESOLVED")] * 2
    )
    flap = one(inc, "FLAPPING", "OPEN")
    assert "changed 4 times" in flap.summary
    assert flap.updated_us == site.at(401.0)
    assert one(inc, "FLAPPING", "RESOLVED").updated_us == site.at(461.0)


# ------------------------------------------------------------------------------------ while islanded
def test_battery_at_reserve_while_islanded_is_critical_and_resolves_with_hysteresis() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1"),
        site.measure(5, device="bat-1", battery_soc_pct=40.0),
        site.measure(6, device="bat-1", battery_soc_pct=9.5),
        site.measure(7, device="bat-1", battery_soc_pct=11.0),  # within hysteresis: still firing
        site.measure(8, device="bat-1", battery_soc_pct=13.0),
        *heartbeat(site, 9, 10),
    ]
    _, inc = run(events)
    opened = one(inc, "BATTERY_RESERVE", "OPEN")
    assert opened.device_id == "bat-1" and opened.min_battery_soc_pct == 9.5
    assert opened.parent_incident_id == f"dc-1/FAILOVER/{site.at(1.0)}"
    assert one(inc, "BATTERY_RESERVE", "RESOLVED").ended_us == site.at(8)


def test_battery_low_on_grid_is_not_an_alert() -> None:
    site = SiteEvents()
    _, inc = run([*heartbeat(site, 0, 2), site.measure(3, device="bat-1", battery_soc_pct=5.0)])
    assert inc == []


def test_frequency_and_voltage_excursions_while_islanded() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(9.0, "GENERATOR", device="ats-1"),
        site.measure(10, device="meter-1", voltage_pu=0.0),  # the lost grid: not the site's power
        site.measure(11, device="gen-1", frequency_hz=60.1, voltage_pu=1.0),
        site.measure(12, device="gen-1", frequency_hz=57.4),
        site.measure(13, device="gen-1", voltage_pu=0.85),
        *heartbeat(site, 14, 30, device="gen-1", frequency_hz=60.0, voltage_pu=1.0),
    ]
    _, inc = run(events)
    assert states(inc, "PQ_EXCURSION") == [
        ("PQ_EXCURSION", "OPEN"),
        ("PQ_EXCURSION", "UPDATE"),
        ("PQ_EXCURSION", "RESOLVED"),
    ]
    opened = one(inc, "PQ_EXCURSION", "OPEN")
    assert "underfrequency" in opened.summary and opened.started_us == site.at(12)
    assert "sag" in one(inc, "PQ_EXCURSION", "UPDATE").summary
    assert one(inc, "PQ_EXCURSION", "RESOLVED").updated_us == site.at(23)


def test_excursion_on_grid_is_not_an_islanded_excursion() -> None:
    site = SiteEvents()
    _, inc = run(
        [*heartbeat(site, 0, 2), site.measure(3, device="meter-1", frequency_hz=57.0, voltage_pu=0.5)]
    )
    assert inc == []


def test_load_shed_during_failover_resolves_with_it() -> None:
    site = SiteEvents()
    events = sts_failover(site)
    events.insert(20, site.event("ctl-1", "LOAD_SHED", 50.0, load_mw=8.0, detail="shed rows 3-4",
                                 device_type="CONTROLLER"))  # fmt: skip
    events.sort(key=lambda e: e["ts"])
    for i, e in enumerate(e for e in events if e["device_id"] == "ctl-1"):
        e["seq"] = i + 1
    _, inc = run(events)
    shed = one(inc, "LOAD_SHED", "OPEN")
    assert shed.parent_incident_id == f"dc-1/FAILOVER/{site.at(1.0)}"
    assert "shed rows 3-4" in shed.summary and shed.load_mw == 8.0
    assert one(inc, "LOAD_SHED", "RESOLVED").updated_us == site.at(400.0)


def test_load_shed_outside_failover_resolves_after_hold() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 1),
        site.event("ctl-1", "LOAD_SHED", 2.0),
        *heartbeat(site, 3, 400, every_s=10),
    ]
    _, inc = run(events)
    assert states(inc) == [("LOAD_SHED", "OPEN"), ("LOAD_SHED", "RESOLVED")]
    assert inc[1].updated_us == site.at(302.0)


# ------------------------------------------------------------------------------------- robustness
def test_sequence_gap_is_reported_and_resolves_after_hold() -> None:
    site = SiteEvents()
    events = heartbeat(site, 0, 10)
    del events[3:6]  # seq 4, 5 and 6 of ctl-1 never arrive
    events += heartbeat(site, 11, 400, every_s=10)
    _, inc = run(events)
    assert states(inc) == [("SEQUENCE_GAP", "OPEN"), ("SEQUENCE_GAP", "RESOLVED")]
    gap = inc[0]
    assert gap.device_id == "ctl-1" and "seq 4-6 (3 events lost)" in gap.summary
    assert gap.started_us == site.at(6)


def test_site_silent_mid_incident_is_raised_and_resolved() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1"),
        *heartbeat(site, 2, 10),
    ]
    det, inc = run(events)
    assert states(inc) == [("FAILOVER", "OPEN")]
    assert det.on_tick(site.at(60)) == []
    silent = [o for o in det.on_tick(site.at(71)) if isinstance(o, Incident)]
    assert states(silent) == [("SITE_SILENT", "OPEN")]
    assert silent[0].parent_incident_id == inc[0].incident_id
    assert silent[0].started_us == site.at(10)
    back = det.on_event(site.measure(80, device="ctl-1"))
    assert [(o.kind, o.state, o.ended_us) for o in back if isinstance(o, Incident)] == [
        ("SITE_SILENT", "RESOLVED", site.at(80))
    ]


def test_silence_releases_held_events_and_fires_timers() -> None:
    site = SiteEvents()
    det, inc = run([*heartbeat(site, 0, 0.5), site.lost(1.0)], PowerConfig(fast_release=False))
    assert inc == [] and len(det.buffer) == 2  # held for the lateness allowance
    outs = det.on_tick(site.at(45))
    assert states([o for o in outs if isinstance(o, Incident)]) == [("FAILED_TRANSFER", "OPEN")]
    assert len(det.buffer) == 0


def test_invalid_events_raise() -> None:
    site = SiteEvents()
    det = Detector("dc-1")
    with pytest.raises(InvalidPowerEvent):
        det.on_event({**site.measure(1), "event_type": "EXPLODED"})
    with pytest.raises(InvalidPowerEvent):
        det.on_event({**site.measure(1), "site_id": "dc-2"})
    with pytest.raises(InvalidPowerEvent):
        det.on_event({k: v for k, v in site.measure(1).items() if k != "seq"})


def test_datetime_timestamps_are_normalized() -> None:
    from processors.power.events import normalize_event, to_datetime

    e = SiteEvents().measure(1.5)
    assert normalize_event({**e, "ts": to_datetime(e["ts"])})["ts"] == e["ts"]


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        PowerConfig(blip_ignore_s=-1)
    with pytest.raises(ValueError):
        PowerConfig(freq_min_hz=63)
    with pytest.raises(ValueError):
        PowerConfig.from_mapping({"blip_ignore": 3})


def test_a_load_restored_from_no_source_past_the_allowance_is_a_failed_transfer_not_a_slow_one() -> None:
    """The switch says the load had no source (a transfer from NONE) for longer than NFPA 110's 10 s:
    the first transfer failed, even though an alternate took the load before ``failed_transfer_s``."""
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        *heartbeat(site, 2, 17),
        site.transfer(18.0, "GENERATOR", device="ats-1", source_from="NONE"),
        *heartbeat(site, 19, 25),
    ]
    _, inc = run(events)
    kinds = {(i.kind, i.state) for i in inc}
    assert ("FAILED_TRANSFER", "OPEN") in kinds and ("FAILED_TRANSFER", "RESOLVED") in kinds
    assert not any(i.kind == "SLOW_TRANSFER" for i in inc)
    failed = one(inc, "FAILED_TRANSFER", "OPEN")
    assert failed.started_us == site.at(1.0) and failed.transfer_ms == pytest.approx(17_000.0)
    assert one(inc, "FAILOVER", "OPEN").transfer_ms == pytest.approx(17_000.0)


def test_a_transfer_from_no_source_within_the_allowance_is_neither_failed_nor_slow() -> None:
    site = SiteEvents()
    events = [
        *heartbeat(site, 0, 0.5),
        site.lost(1.0),
        site.transfer(9.0, "GENERATOR", device="ats-1", source_from="NONE"),
        *heartbeat(site, 10, 15),
    ]
    _, inc = run(events)
    assert states(inc) == [("FAILOVER", "OPEN")]
