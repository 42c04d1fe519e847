"""Out-of-order, duplicated and gappy delivery; state round trips. The detector must give the same
incidents whatever the arrival order within the lateness allowance."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from processors.power import Detector, Incident, LateEvent, PowerConfig
from processors.power.reorder import ReorderBuffer
from processors.power.scenario import SiteEvents, rich_failover_timeline


def rich_timeline() -> list[dict[str, Any]]:
    return rich_failover_timeline()


CONFIG = PowerConfig(retransfer_stable_s=30.0, lateness_ms=1000.0)


def feed(events: list[tuple[int, dict[str, Any]]], config: PowerConfig = CONFIG) -> list[Incident]:
    """Feed (arrival µs, event) pairs in order, ticking the processing clock as they arrive."""
    det = Detector("dc-1", config)
    out: list[Incident] = []
    for arrival, e in events:
        out += [o for o in det.on_tick(arrival) if isinstance(o, Incident)]
        outs = det.on_event(e, arrival_us=arrival)
        assert not any(isinstance(o, LateEvent) for o in outs)
        out += [o for o in outs if isinstance(o, Incident)]
    out += [o for o in det.flush() if isinstance(o, Incident)]
    return out


def in_order(events: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(e["ts"], e) for e in events]


def shuffled(
    events: list[dict[str, Any]], rng: random.Random, lateness_us: int
) -> list[tuple[int, dict[str, Any]]]:
    """Delay each event by a random fraction of the allowance; devices are known from their first event."""
    first = {}
    for e in events:
        first.setdefault(e["device_id"], e)
    warm = [(e["ts"], e) for e in events if first[e["device_id"]] is e]
    rest = [
        (e["ts"] + int(rng.random() * 0.95 * lateness_us), e)
        for e in events
        if first[e["device_id"]] is not e
    ]
    rest.sort(key=lambda p: p[0])
    start = max(a for a, _ in warm)
    return warm + [(max(a, start), e) for a, e in rest]


def test_rich_timeline_covers_the_rules() -> None:
    kinds = {(i.kind, i.state) for i in feed(in_order(rich_timeline()))}
    for kind in ("FAILOVER", "GEN_START_FAILURE", "BATTERY_RESERVE", "LOAD_SHED", "PQ_EXCURSION", "FLAPPING"):
        assert (kind, "OPEN") in kinds, kind
    assert ("FAILOVER", "RESOLVED") in kinds


@pytest.mark.parametrize("fast_release", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_out_of_order_within_allowance_gives_identical_incidents(seed: int, fast_release: bool) -> None:
    config = PowerConfig(retransfer_stable_s=30.0, lateness_ms=1000.0, fast_release=fast_release)
    events = rich_timeline()
    expected = feed(in_order(events), config)
    got = feed(shuffled(events, random.Random(seed), config.lateness_us), config)
    assert got == expected


def test_duplicates_change_nothing() -> None:
    events = rich_timeline()
    expected = feed(in_order(events))
    rng = random.Random(7)
    with_dups: list[dict[str, Any]] = []
    for e in events:
        with_dups.append(e)
        if rng.random() < 0.3:  # redelivered right away or a bit later (at-least-once producers)
            with_dups.insert(len(with_dups) - rng.randrange(0, 3), dict(e))
    with_dups.sort(key=lambda e: e["ts"])
    det = Detector("dc-1", CONFIG)
    got: list[Incident] = []
    for e in with_dups:
        got += [o for o in det.on_event(e) if isinstance(o, Incident)]
    got += [o for o in det.flush() if isinstance(o, Incident)]
    assert got == expected
    assert det.stats["duplicates"] == len(with_dups) - len(events)


def test_event_beyond_allowance_is_returned_as_late() -> None:
    site = SiteEvents()
    det = Detector("dc-1")
    early = site.measure(1.0, device="bat-1", battery_soc_pct=50.0)
    for t in range(2, 6):
        det.on_event(site.measure(t))
    outs = det.on_event(early)
    assert [type(o) for o in outs] == [LateEvent]
    assert "behind the site's clock" in outs[0].reason  # type: ignore[union-attr]
    assert det.stats["late"] == 1


@pytest.mark.parametrize("cut", [40, 200, 700, 1200, 1500, 2000])
def test_state_round_trips_mid_incident_and_continues_identically(cut: int) -> None:
    events = rich_timeline()
    expected = feed(in_order(events))
    det = Detector("dc-1", CONFIG)
    got: list[Incident] = []
    for i, e in enumerate(events):
        if i == cut:
            state = json.loads(json.dumps(det.to_dict()))  # what a changelog table would store
            det = Detector.from_dict(state, CONFIG)
        got += [o for o in det.on_event(e, arrival_us=e["ts"]) if isinstance(o, Incident)]
    got += [o for o in det.flush() if isinstance(o, Incident)]
    assert got == expected


def test_restored_state_mid_failover_keeps_the_incident_open() -> None:
    site = SiteEvents()
    det = Detector("dc-1")
    for e in [
        site.measure(0.5),
        site.lost(1.0),
        site.transfer(1.004, "BATTERY", device="sts-1"),
        *[site.measure(t) for t in range(2, 8)],
    ]:
        det.on_event(e)
    restored = Detector.from_dict(json.loads(json.dumps(det.to_dict())))
    assert restored.phase == "ON_ALTERNATE" and "failover" in restored.open
    outs = restored.on_event(site.transfer(20.0, "GRID", device="sts-1"))
    outs += restored.on_event(site.measure(400))
    assert [(o.kind, o.state) for o in outs if isinstance(o, Incident)] == [
        ("FAILOVER", "UPDATE"),
        ("FAILOVER", "RESOLVED"),
    ]


# --------------------------------------------------------------------------------- reorder buffer
def _e(dev: str, seq: int, ts: int) -> dict[str, Any]:
    return {"site_id": "s", "device_id": dev, "device_type": "GRID_METER", "event_type": "MEASUREMENT",
            "seq": seq, "ts": ts}  # fmt: skip


def drain(buf: ReorderBuffer) -> list[tuple[str, int]]:
    out = []
    while buf.head_ready():
        e, _ = buf.pop()
        out.append((e["device_id"], e["seq"]))
    return out


def test_buffer_holds_until_watermark_without_fast_release() -> None:
    buf = ReorderBuffer(lateness_us=100, fast_release=False)
    assert buf.push(_e("a", 1, 1000)) == "buffered"
    assert buf.push(_e("a", 2, 1050)) == "buffered"
    assert drain(buf) == []
    buf.push(_e("a", 3, 1101))
    assert drain(buf) == [("a", 1)]


def test_buffer_fast_release_needs_every_known_device_past_the_event() -> None:
    buf = ReorderBuffer(lateness_us=10_000, fast_release=True)
    buf.push(_e("a", 1, 1000))
    buf.push(_e("b", 1, 1001))
    assert drain(buf) == [("a", 1)]  # b is already past 1000; b's own event waits for a
    buf.push(_e("a", 3, 1003))  # a's seq 2 still missing: a's frontier stays at 1000
    assert drain(buf) == []
    buf.push(_e("a", 2, 1002))
    assert drain(buf) == [("b", 1)]  # a2 waits: b may still send something before 1002


def test_buffer_duplicates_gaps_and_late_gap_fill() -> None:
    buf = ReorderBuffer(lateness_us=100, fast_release=False)
    buf.push(_e("a", 1, 1000))
    assert buf.push(_e("a", 1, 1000)) == "duplicate"  # still buffered
    buf.push(_e("a", 4, 1010))
    buf.push(_e("a", 5, 1200))
    first, gap1 = buf.pop()
    assert gap1 is None
    second, gap = buf.pop()
    assert second["seq"] == 4 and gap is not None and (gap.first, gap.last, gap.count) == (2, 3, 2)
    assert buf.push(_e("a", 1, 1000)) == "duplicate"  # already released
    assert buf.push(_e("a", 3, 1005)) == "late_gap_fill"
    assert buf.devices["a"]["missing"] == [[2, 2]]


def test_buffer_device_reboot_restarts_sequence() -> None:
    buf = ReorderBuffer(lateness_us=100, fast_release=False)
    for seq, ts in ((7, 1000), (8, 1010)):
        buf.push(_e("a", seq, ts))
    buf.push(_e("a", 9, 2000))
    drain(buf)
    assert buf.push(_e("a", 1, 2050)) == "buffered"  # lower seq, newer time: rebooted, not a duplicate
    buf.push(_e("a", 2, 3000))
    assert [g for g in (buf.pop()[1] for _ in range(2)) if g is not None] == []


def test_buffer_round_trip() -> None:
    buf = ReorderBuffer(lateness_us=100)
    buf.push(_e("a", 1, 1000))
    buf.push(_e("b", 1, 990))
    copy = ReorderBuffer.from_dict(json.loads(json.dumps(buf.to_dict())), lateness_us=100)
    assert copy.to_dict() == buf.to_dict()
    assert copy.push(_e("a", 1, 1000)) == "duplicate"
