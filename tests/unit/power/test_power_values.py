"""Readings a broken instrument sends (NaN, infinities, values no instrument reports) are "not
reported": left out of their event, counted, and never make a rule fire, resolve or record anything.
The rest of the event is used. Values inside the physical range are used as they are."""

from __future__ import annotations

import math
from typing import Any

import pytest

from processors.power import Detector, Incident, InvalidPowerEvent, PowerConfig
from processors.power.events import MAX_DETAIL_CHARS, MAX_ID_CHARS, READING_RANGES, normalize_event
from processors.power.scenario import SiteEvents

BROKEN = [math.nan, math.inf, -math.inf]


def _islanded(site: SiteEvents) -> list[dict[str, Any]]:
    """Grid lost at 1 s, on battery 4 ms later: the failover is open from 4 s."""
    return [
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID"),
        site.measure(4.0, device="ctl-1"),
    ]


def _run(events: list[dict[str, Any]]) -> tuple[Detector, list[Incident]]:
    det = Detector("dc-1", PowerConfig())
    out: list[Incident] = []
    for e in events:
        out += [o for o in det.on_event(e, arrival_us=e["ts"]) if isinstance(o, Incident)]
    out += [o for o in det.flush() if isinstance(o, Incident)]
    return det, out


def _kinds(incidents: list[Incident]) -> list[tuple[str, str]]:
    return [(i.kind, i.state) for i in incidents]


@pytest.mark.parametrize("value", [*BROKEN, -5.0, 250.0])
def test_a_broken_state_of_charge_never_raises_battery_reserve(value: float) -> None:
    site = SiteEvents()
    det, out = _run([*_islanded(site), site.measure(6.0, device="bat-1", battery_soc_pct=value)])
    assert "BATTERY_RESERVE" not in {k for k, _ in _kinds(out)}
    assert all(i.min_battery_soc_pct is None for i in out)
    assert det.stats["not_reported"] == 1


@pytest.mark.parametrize("value", BROKEN)
def test_a_broken_state_of_charge_never_resolves_battery_reserve(value: float) -> None:
    site = SiteEvents()
    low = site.measure(6.0, device="bat-1", battery_soc_pct=8.0)
    broken = site.measure(7.0, device="bat-1", battery_soc_pct=value)
    _, out = _run([*_islanded(site), low, broken])
    battery = [i for i in out if i.kind == "BATTERY_RESERVE"]
    assert [i.state for i in battery] == ["OPEN"]  # still open: nothing reported it above reserve
    assert all(i.min_battery_soc_pct in (None, 8.0) for i in out)


@pytest.mark.parametrize("field", ["frequency_hz", "voltage_pu"])
@pytest.mark.parametrize("value", [*BROKEN, -1.0, 1e300])
def test_a_broken_frequency_or_voltage_is_no_power_quality_excursion(field: str, value: float) -> None:
    site = SiteEvents()
    _, out = _run([*_islanded(site), site.measure(6.0, device="gen-1", **{field: value})])
    assert "PQ_EXCURSION" not in {k for k, _ in _kinds(out)}


def test_a_source_lost_with_a_broken_load_reading_is_still_a_failover() -> None:
    site = SiteEvents()
    lost = site.event("meter-1", "SOURCE_LOST", 1.0, source_from="GRID", load_mw=math.nan)
    events = [lost, site.transfer(1.004, "BATTERY", device="sts-1"), site.measure(4.0, device="ctl-1")]
    det, out = _run(events)
    assert ("FAILOVER", "OPEN") in _kinds(out)
    assert all(i.load_mw is None for i in out)
    assert det.stats["not_reported"] == 1


def test_readings_in_range_are_used_as_they_are() -> None:
    site = SiteEvents()
    events = [
        *_islanded(site),
        site.measure(5.0, device="ctl-1", load_mw=-3.5),  # a site exporting power
        site.measure(6.0, device="gen-1", voltage_pu=5.0),  # a huge swell, but a reading
        site.measure(7.0, device="bat-1", battery_soc_pct=0.0),
    ]
    _, out = _run(events)
    kinds = {k for k, _ in _kinds(out)}
    assert {"PQ_EXCURSION", "BATTERY_RESERVE"} <= kinds
    assert any(i.load_mw == -3.5 for i in out)


def test_every_range_is_inclusive_and_nan_is_never_in_it() -> None:
    site = SiteEvents()
    for name, (low, high) in READING_RANGES.items():
        for value, kept in [
            (low, True),
            (high, True),
            (math.nan, False),
            (math.inf, False),
            (-math.inf, False),
        ]:
            dropped: list[str] = []
            event = normalize_event(site.measure(1.0, **{name: value}), dropped)
            assert (name in event) is kept and (dropped == [] if kept else dropped == [name])


def test_identifiers_are_bounded_and_detail_is_cut() -> None:
    site = SiteEvents()
    with pytest.raises(InvalidPowerEvent, match="at most"):
        normalize_event(site.measure(1.0, device="m" * (MAX_ID_CHARS + 1)))
    event = normalize_event(site.event("ctl-1", "LOAD_SHED", 1.0, detail="x" * 100_000))
    assert len(event["detail"]) == MAX_DETAIL_CHARS


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_threshold_must_be_finite(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        PowerConfig(lateness_ms=value)
