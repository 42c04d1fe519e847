"""The site power state (``sites.power_state.v1``) the detector publishes, driven by the simulator's
failover scripts and by hand-made timelines: states and their order, ``since``, the retransfer clock
(``grid_since``) and its hysteresis, the battery runtime estimate, out-of-order delivery, restore."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from processors.power import Detector, Incident, PowerConfig
from processors.power.events import SitePowerState
from processors.power.runtime import route
from processors.power.scenario import SiteEvents
from processors.power.site_state import battery_runtime_min, runtime_moved
from simulator.power import Step, failover_script
from simulator.power import device_type as sim_device_type
from streams.serde import AvroSerde
from streams.topics import SITE_POWER_STATE_TOPIC

S = 1_000_000
T0 = 1_700_000_000_000_000
SITE = "dc-ams-1"
CONFIG = PowerConfig()


# ------------------------------------------------------------------------------------------ helpers
def script_events(
    fault: str | None, seed: int = 7, delay_s: float = 600.0
) -> tuple[Any, list[dict[str, Any]]]:
    """The simulator's failover script as ``power.events.v1`` records (seq numbered per device), after a
    measurement of every device of it (as the simulator's background measurements do: a device first
    heard mid-failover may be released out of order, see ``ReorderBuffer``)."""
    fo = failover_script(random.Random(seed), SITE, T0, 3, 40.0, 90.0, fault, delay_s)
    seq: dict[str, int] = {}
    events = []
    devices = sorted({step.device_id for step in fo.steps})
    warm = [Step(T0 - 10 * S + i, i, device, "MEASUREMENT") for i, device in enumerate(devices)]
    for step in warm + fo.steps:
        seq[step.device_id] = seq.get(step.device_id, 0) + 1
        events.append({
            "site_id": SITE, "device_id": step.device_id, "device_type": sim_device_type(step.device_id),
            "event_type": step.event_type, "ts": step.ts_us, "seq": seq[step.device_id], **step.fields,
        })  # fmt: skip
    return fo, events


def run(
    events: list[dict[str, Any]], config: PowerConfig = CONFIG, tick_at: int | None = None
) -> tuple[list[SitePowerState], list[Incident]]:
    """Feed in order (event time is the processing clock), tick once at ``tick_at`` if given, flush."""
    det = Detector(SITE, config)
    out: list[Any] = []
    for e in events:
        out += det.on_event(e, arrival_us=e["ts"])
    if tick_at is not None:
        out += det.on_tick(tick_at)
    out += det.flush()
    return [o for o in out if isinstance(o, SitePowerState)], [o for o in out if isinstance(o, Incident)]


def states(records: list[SitePowerState]) -> list[str]:
    return [r.state for r in records]


def first(records: list[SitePowerState], state: str) -> SitePowerState:
    return next(r for r in records if r.state == state)


def ts_of(events: list[dict[str, Any]], event_type: str, nth: int = 0, **match: Any) -> int:
    found = [
        e["ts"]
        for e in events
        if e["event_type"] == event_type and all(e.get(k) == v for k, v in match.items())
    ]
    return found[nth]


def failover_id(incidents: list[Incident]) -> str:
    return next(i.incident_id for i in incidents if i.kind == "FAILOVER")


# ----------------------------------------------------------------------------- simulator scripts
def test_a_normal_failover_goes_battery_generator_then_grid_at_the_retransfer() -> None:
    fo, events = script_events(None)
    recs, incidents = run(events)
    assert states(recs) == ["ISLANDED_BATTERY", "ISLANDED_GENERATOR", "ISLANDED_GENERATOR", "GRID"]
    lost = ts_of(events, "SOURCE_LOST")
    battery, generator, clock, grid = recs
    assert battery.since_us == lost  # off the grid since the loss, published once the failover opened
    assert battery.ts_us == ts_of(events, "ISLAND_ENTER") and battery.incident_id == failover_id(incidents)
    assert generator.since_us == generator.ts_us == ts_of(events, "TRANSFER", source_to="GENERATOR")
    # Utility back: the clock shows it; the load stays on generators until the site's own ATS retransfers
    # (its delay, 600 s here, is longer than retransfer_stable_s), and the site is GRID then.
    restored = ts_of(events, "SOURCE_RESTORED")
    assert clock.grid_since_us == restored and clock.since_us == generator.since_us
    assert grid.ts_us == grid.since_us == ts_of(events, "TRANSFER", source_to="GRID")
    assert grid.grid_since_us is None and grid.incident_id is None and grid.battery_runtime_min is None
    assert grid.ts_us >= restored + CONFIG.us(CONFIG.retransfer_stable_s)


def test_flapping_stays_islanded_until_the_grid_is_stable_after_the_last_loss() -> None:
    fo, events = script_events("FLAPPING")
    recs, incidents = run(events)
    grids = [r for r in recs if r.state == "GRID"]
    assert len(grids) == 1 and recs[-1] is grids[0]  # the too-early retransfer never made it GRID
    second_loss = ts_of(events, "SOURCE_LOST", nth=1)
    reset = next(r for r in recs if r.ts_us == second_loss)
    assert reset.grid_since_us is None and reset.state != "GRID"  # the loss stopped the retransfer clock
    assert {r.incident_id for r in recs[:-1]} == {failover_id(incidents)}  # one episode throughout
    last_restore = ts_of(events, "SOURCE_RESTORED", nth=1)
    assert grids[0].ts_us >= last_restore + CONFIG.us(CONFIG.retransfer_stable_s)
    assert "ISLANDED_BATTERY" in states(recs[recs.index(reset) :])  # the second loss went to battery


def test_battery_reserve_then_shedding_with_a_falling_runtime() -> None:
    fo, events = script_events("BATTERY_RESERVE")
    recs, incidents = run(events)
    order = states(recs)
    assert order.index("RESERVE") < order.index("SHEDDING") < order.index("GRID") == len(order) - 1
    reserve = first(recs, "RESERVE")
    assert reserve.battery_soc_pct is not None and reserve.battery_soc_pct <= CONFIG.battery_reserve_pct
    assert reserve.battery_runtime_min == 0.0
    reserve_incident = next(i for i in incidents if i.kind == "BATTERY_RESERVE" and i.state == "OPEN")
    assert reserve.ts_us == reserve_incident.started_us
    shed = first(recs, "SHEDDING")
    assert shed.ts_us == ts_of(events, "LOAD_SHED") and shed.load_mw == pytest.approx(24.0)
    on_battery = [r for r in recs if r.state == "ISLANDED_BATTERY" and r.battery_runtime_min is not None]
    runtimes = [r.battery_runtime_min for r in on_battery]
    assert len(runtimes) >= 5 and runtimes == sorted(runtimes, reverse=True)
    for r in on_battery:
        assert r.battery_runtime_min == battery_runtime_min(15.6, r.battery_soc_pct, 10.0, r.load_mw)
    # Severe states apply while an alternate carries the load; back on grid, the clock runs as islanded.
    assert not [r for r in recs if r.grid_since_us is not None and r.state in ("RESERVE", "ISLANDED_BATTERY")]


def test_a_generator_start_failure_changes_no_state() -> None:
    fo, events = script_events("GEN_START_FAILURE")
    recs, incidents = run(events)
    assert any(i.kind == "GEN_START_FAILURE" for i in incidents)
    assert states(recs) == ["ISLANDED_BATTERY", "ISLANDED_GENERATOR", "ISLANDED_GENERATOR", "GRID"]


@pytest.mark.parametrize(
    "fault", [None, "FLAPPING", "BATTERY_RESERVE", "GEN_START_FAILURE", "FAILED_TRANSFER"]
)
def test_records_are_ordered_encode_and_replay_identically(fault: str | None) -> None:
    fo, events = script_events(fault)
    recs, _ = run(events)
    assert recs == run(events)[0]  # deterministic
    assert [r.ts_us for r in recs] == sorted(r.ts_us for r in recs)
    assert all(r.since_us <= r.ts_us for r in recs) and recs[-1].state == "GRID"
    serde = AvroSerde()
    for emission in route(list(recs))[0]:
        assert emission.topic == SITE_POWER_STATE_TOPIC and emission.key == SITE
        assert serde.decode(SITE_POWER_STATE_TOPIC, serde.encode(SITE_POWER_STATE_TOPIC, emission.record))


# ----------------------------------------------------------------------------- hand-made timelines
def islanded_on_battery(site: SiteEvents) -> list[dict[str, Any]]:
    """Grid lost at 1 s, the load on batteries (50 %, 10 MW); the failover opens at 4 s (blip_ignore_s)."""
    return [
        site.measure(0.5, device="ctl-1", load_mw=10.0),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID"),
        site.measure(2.0, device="bat-1", battery_soc_pct=50.0),
        site.measure(5.0, device="ctl-1", load_mw=10.0),
    ]


def test_a_site_that_never_leaves_the_grid_has_no_record() -> None:
    site = SiteEvents(SITE, T0)
    before = site.measure(0.5)
    blip = [site.lost(1.0), site.transfer(1.004, "BATTERY", device="sts-1"), site.transfer(2.0, "GRID")]
    shed_on_grid = [site.event("ctl-1", "LOAD_SHED", 3.0)]
    recs, incidents = run([before, *blip, *shed_on_grid, site.measure(400)])
    assert recs == [] and {i.kind for i in incidents} == {"LOAD_SHED"}


def test_no_grid_before_the_retransfer_delay_and_a_quiet_site_gets_there_by_ticks() -> None:
    site = SiteEvents(SITE, T0)
    events = [*islanded_on_battery(site), site.transfer(100.0, "GRID", device="sts-1", source_from="BATTERY")]
    events += [site.measure(t, device="ctl-1") for t in range(110, 400, 10)]  # 399 s < 100 s + 300 s
    recs, _ = run(events[:-1] + [events[-1]])
    assert states(recs) == ["ISLANDED_BATTERY", "ISLANDED_BATTERY"]
    assert recs[-1].grid_since_us == site.at(100.0) and recs[-1].battery_runtime_min is None
    # Quiet from 399 s on: the detector's clock (ticks) fires the retransfer timer at exactly 400 s.
    ticked, _ = run(events, tick_at=site.at(399.0) + 5 * S)
    assert states(ticked)[-1] == "GRID" and ticked[-1].ts_us == site.at(400.0) == ticked[-1].since_us


def test_a_loss_before_the_delay_resets_the_clock() -> None:
    site = SiteEvents(SITE, T0)
    events = [
        *islanded_on_battery(site),
        site.transfer(100.0, "GRID", device="sts-1"),
        site.lost(250.0),
        site.transfer(250.004, "BATTERY", device="sts-1"),
        site.transfer(300.0, "GRID", device="sts-1"),
        site.measure(450.0, device="ctl-1"),
        site.measure(650.0, device="ctl-1"),
    ]
    recs, incidents = run(events)
    assert [(r.state, r.ts_us, r.grid_since_us, r.battery_runtime_min) for r in recs] == [
        ("ISLANDED_BATTERY", site.at(4.0), None, 37.4),
        ("ISLANDED_BATTERY", site.at(100.0), site.at(100.0), None),  # on grid: no battery runtime
        ("ISLANDED_BATTERY", site.at(250.0), None, None),  # grid lost again: flapping, still islanded
        ("ISLANDED_BATTERY", site.at(250.004), None, 37.4),  # on batteries again
        ("ISLANDED_BATTERY", site.at(300.0), site.at(300.0), None),
        ("GRID", site.at(600.0), None, None),
    ]
    # GRID 300 s after the second retransfer, not after the first
    assert any(i.kind == "FLAPPING" for i in incidents)


def test_utility_back_starts_the_clock_while_the_load_stays_on_alternate() -> None:
    site = SiteEvents(SITE, T0)
    events = [
        *islanded_on_battery(site),
        site.transfer(20.0, "GENERATOR", device="ats-1", source_from="BATTERY"),
        site.restored(100.0),
        site.transfer(200.0, "GRID", device="ats-1", source_from="GENERATOR"),  # 100 s after: too soon
        site.measure(450.0, device="ctl-1"),
    ]
    recs, _ = run(events)
    assert [(r.state, r.grid_since_us) for r in recs] == [
        ("ISLANDED_BATTERY", None),
        ("ISLANDED_GENERATOR", None),
        ("ISLANDED_GENERATOR", site.at(100.0)),
        ("GRID", None),
    ]
    assert recs[-1].ts_us == site.at(400.0)  # utility stable 300 s, the load on grid since 200 s


def test_a_failed_transfer_is_shedding_until_an_alternate_takes_the_load() -> None:
    site = SiteEvents(SITE, T0)
    events = [site.measure(0.5), site.lost(1.0), *[site.measure(t) for t in range(2, 45)]]
    events += [site.transfer(45.0, "GENERATOR", device="ats-1", source_from="NONE"), site.measure(46.0)]
    recs, incidents = run(events)
    failed = next(i for i in incidents if i.kind == "FAILED_TRANSFER")
    assert [(r.state, r.ts_us, r.incident_id) for r in recs] == [
        ("SHEDDING", site.at(31.0), failed.incident_id),
        ("ISLANDED_GENERATOR", site.at(45.0), failover_id(incidents)),
    ]
    assert recs[0].since_us == site.at(1.0)


def test_battery_runtime_from_soc_and_load_and_the_per_site_battery() -> None:
    site = SiteEvents(SITE, T0)
    recs, _ = run(islanded_on_battery(site))
    # 15.6 MWh * (50 % - 10 % reserve) = 6.24 MWh at 10 MW: 37.4 min.
    assert recs[-1].battery_runtime_min == 37.4 and recs[-1].battery_soc_pct == 50.0
    big = PowerConfig(battery_mwh_by_site=f"dc-other=1.0, {SITE}=31.2")
    assert run(islanded_on_battery(SiteEvents(SITE, T0)), big)[0][-1].battery_runtime_min == 74.9
    assert battery_runtime_min(15.6, None, 10.0, 10.0) is None
    assert battery_runtime_min(15.6, 50.0, 10.0, 0.0) is None  # no (or exported) load: not known


def test_runtime_records_are_bounded_under_a_noisy_load() -> None:
    site = SiteEvents(SITE, T0)
    rng = random.Random(3)
    events = islanded_on_battery(site)
    soc = 50.0
    for k in range(1, 600):  # ten minutes of 1 s readings, load +-2 %, draining the battery
        soc -= 0.02
        events.append(site.measure(2.0 + k, device="bat-1", battery_soc_pct=round(soc, 2),
                                   load_mw=round(10.0 * rng.uniform(0.98, 1.02), 2)))  # fmt: skip
    recs, _ = run(events)
    assert states(recs) == ["ISLANDED_BATTERY"] * len(recs) and 2 <= len(recs) <= 12
    published = [r.battery_runtime_min for r in recs]
    for before, after in zip(published, published[1:], strict=False):
        assert before is not None and after is not None
        assert abs(after - before) >= max(CONFIG.runtime_step_min, before * CONFIG.runtime_step_pct / 100)


def test_runtime_moved_rule() -> None:
    assert runtime_moved(None, 5.0, 1.0, 5.0) and runtime_moved(5.0, None, 1.0, 5.0)
    assert not runtime_moved(None, None, 1.0, 5.0)
    assert not runtime_moved(10.0, 9.1, 1.0, 5.0) and runtime_moved(10.0, 9.0, 1.0, 5.0)
    assert not runtime_moved(100.0, 96.0, 1.0, 5.0) and runtime_moved(100.0, 95.0, 1.0, 5.0)


def test_a_malformed_per_site_battery_is_refused() -> None:
    for text in ("dc-1", "dc-1=", "=3.9", "dc-1=-1", "dc-1=nan", "dc-1=x"):
        with pytest.raises(ValueError, match="battery_mwh_by_site"):
            PowerConfig(battery_mwh_by_site=text)
    assert PowerConfig(battery_mwh_by_site="dc-1=3.9").battery_mwh_of("dc-1") == 3.9
    assert PowerConfig(battery_mwh=7.8).battery_mwh_of("dc-1") == 7.8


# --------------------------------------------------------------------- ordering, late events, restore
def test_out_of_order_delivery_within_the_allowance_gives_the_same_records() -> None:
    fo, events = script_events("BATTERY_RESERVE")
    expected, _ = run(events)
    allowance = CONFIG.lateness_us - 1
    for seed in range(5):
        rng = random.Random(seed)
        delivery = sorted(((e["ts"] + rng.randrange(allowance), i, e) for i, e in enumerate(events)))
        det = Detector(SITE, CONFIG)
        out: list[Any] = []
        for arrival, _, e in delivery:
            out += det.on_tick(arrival)
            out += det.on_event(e, arrival_us=arrival)
        out += det.flush()
        assert [o for o in out if isinstance(o, SitePowerState)] == expected, seed


def test_a_late_sequence_of_events_record_is_never_stamped_before_the_last_record() -> None:
    site = SiteEvents(SITE, T0)
    events = islanded_on_battery(site)
    late_shed = site.event("ctl-1", "LOAD_SHED", 3.0)  # recorded at 3 s, uploaded after 60 s
    events += [site.measure(t, device="ctl-1", load_mw=10.0) for t in range(4, 64)]
    det = Detector(SITE, CONFIG)
    out: list[Any] = []
    for e in [*events, late_shed]:
        out += det.on_event(e, arrival_us=e["ts"] if e is not late_shed else site.at(64.0))
    recs = [o for o in out if isinstance(o, SitePowerState)]
    shed = next(o for o in out if isinstance(o, Incident) and o.kind == "LOAD_SHED")
    assert recs[-1].state == "SHEDDING" and recs[-1].since_us == recs[-1].ts_us == shed.updated_us
    assert shed.updated_us > site.at(60.0)  # stamped as the incident: at the latest applied event time
    assert [r.ts_us for r in recs] == sorted(r.ts_us for r in recs)


@pytest.mark.parametrize("cut", [3, 10, 25, 40, 55])
def test_restored_state_continues_with_the_same_records(cut: int) -> None:
    fo, events = script_events("FLAPPING")
    expected, _ = run(events)
    det = Detector(SITE, CONFIG)
    got: list[Any] = []
    for i, e in enumerate(events):
        if i == cut:
            det = Detector.from_dict(json.loads(json.dumps(det.to_dict())), CONFIG)  # the changelog copy
        got += [o for o in det.on_event(e, arrival_us=e["ts"]) if isinstance(o, SitePowerState)]
    got += [o for o in det.flush() if isinstance(o, SitePowerState)]
    assert got == expected


def test_restore_keeps_a_pending_retransfer_timer() -> None:
    site = SiteEvents(SITE, T0)
    det = Detector(SITE, CONFIG)
    events = [*islanded_on_battery(site), site.restored(50.0), site.transfer(100.0, "GRID", device="sts-1")]
    for e in [*events, site.measure(150.0)]:
        det.on_event(e, arrival_us=e["ts"])
    det.on_tick(site.at(152.0))  # everything applied: only a timer can make it GRID now
    assert len(det.buffer) == 0
    restored = Detector.from_dict(json.loads(json.dumps(det.to_dict())), CONFIG)
    out = restored.on_tick(site.at(152.0) + 300 * S)
    # Utility back at 50 s: GRID at 350 s, before the FAILOVER resolves (300 s after the retransfer).
    assert [(o.state, o.ts_us) for o in out if isinstance(o, SitePowerState)] == [("GRID", site.at(350.0))]
    resolved = [o for o in out if isinstance(o, Incident) and o.kind == "FAILOVER"]
    assert [(o.state, o.updated_us) for o in resolved] == [("RESOLVED", site.at(400.0))]


def test_grid_lost_again_after_a_grid_record_inside_the_same_failover() -> None:
    """Utility back at 50 s, load on grid at 100 s: GRID at 350 s, while the FAILOVER still proves the
    grid stable (until 400 s); lost at 380 s, the same incident goes on and the site is islanded since
    380 s, not since the episode began."""
    site = SiteEvents(SITE, T0)
    events = [*islanded_on_battery(site), site.restored(50.0), site.transfer(100.0, "GRID", device="sts-1")]
    events += [site.measure(t, device="ctl-1") for t in range(110, 380, 10)]
    events += [site.lost(380.0), site.transfer(380.004, "BATTERY", device="sts-1"), site.measure(390.0)]
    recs, incidents = run(events)
    assert [(r.state, r.ts_us, r.since_us) for r in recs[-3:]] == [
        ("GRID", site.at(350.0), site.at(350.0)),
        ("ISLANDED_BATTERY", site.at(380.0), site.at(380.0)),
        ("ISLANDED_BATTERY", site.at(380.004), site.at(380.0)),  # runtime known again on batteries
    ]
    assert recs[-1].incident_id == failover_id(incidents) and recs[-1].battery_runtime_min == 37.4
    assert not [i for i in incidents if i.kind == "FAILOVER" and i.state == "RESOLVED"]
