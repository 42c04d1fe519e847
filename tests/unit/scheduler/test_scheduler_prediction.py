"""The idle-time model: sanity of P(stay idle >= task duration)."""

from __future__ import annotations

from test_scheduler_support import MIN, T0, H, cfg, tel

from processors.scheduler import (
    DEFAULT_CONFIG,
    IdleHistory,
    NodeState,
    apply_telemetry,
    idle_until,
    stay_probability,
)
from processors.scheduler.prediction import bucket_of, prior_params

DAY = 24 * H


def node_from(*recs: dict) -> NodeState:
    node = NodeState(vin=recs[0]["vin"])
    for r in recs:
        apply_telemetry(node, r, DEFAULT_CONFIG)
    return node


def with_history(days: int, start_offset: int, hours: float, at_home: bool = True) -> NodeState:
    """A car plugged in every day at T0 - days + start_offset for ``hours`` (observed, 1-minute telemetry)."""
    node = NodeState(vin="V")
    for d in range(days, 0, -1):
        start = T0 - d * DAY + start_offset
        for t in range(start, start + int(hours * H), 10 * MIN):
            apply_telemetry(node, tel("V", t, at_home=at_home), DEFAULT_CONFIG)
        end = start + int(hours * H)
        apply_telemetry(node, tel("V", end - 5 * MIN, at_home=at_home), DEFAULT_CONFIG)
        apply_telemetry(node, tel("V", end, gear="D", at_home=at_home), DEFAULT_CONFIG)
    return node


def test_departure_in_ten_minutes_means_low_probability_for_an_hour() -> None:
    node = node_from(tel("V", T0, scheduled_departure=T0 + 10 * MIN))
    assert stay_probability(node, 3600, T0, DEFAULT_CONFIG) < 0.01


def test_home_at_night_with_long_history_means_high_probability() -> None:
    node = with_history(days=14, start_offset=0, hours=9.0)  # 22:00 local, 9 h every night
    assert node.history.sessions == 14
    apply_telemetry(node, tel("V", T0), DEFAULT_CONFIG)  # tonight, 22:00 local
    p = stay_probability(node, 3600, T0 + MIN, DEFAULT_CONFIG)
    assert p > 0.95
    until = idle_until(node, T0 + MIN, DEFAULT_CONFIG)
    assert 7 * H < until - T0 < 11 * H


def test_history_beats_the_prior() -> None:
    short = with_history(days=14, start_offset=0, hours=0.75)  # always leaves after 45 minutes
    apply_telemetry(short, tel("V", T0), DEFAULT_CONFIG)
    fresh = node_from(tel("V", T0))
    # The bound was 0.2 with the session-length model alone (still checked below). The per-hour departure
    # rate blended in since is constant within an hour: "leaves 45 minutes into the 22:00 hour" reads as
    # ~1.3 departures/h for that hour, so the blend gives ~0.24 -- still far below a fresh car.
    assert (
        stay_probability(short, 3600, T0, DEFAULT_CONFIG)
        < 0.3
        < 0.9
        < stay_probability(fresh, 3600, T0, DEFAULT_CONFIG)
    )
    log_normal_only = cfg(hazard_prior_hours=0.0)
    assert stay_probability(short, 3600, T0, log_normal_only) < 0.2


def test_probability_decreases_with_duration_and_respects_departure() -> None:
    node = node_from(tel("V", T0, scheduled_departure=T0 + 3 * H))
    ps = [stay_probability(node, d, T0, DEFAULT_CONFIG) for d in (600, 3600, 2 * 3600, 3 * 3600)]
    assert ps == sorted(ps, reverse=True) and ps[0] > 0.9 and ps[-1] < 0.05


def test_prior_home_night_vs_away() -> None:
    offset = DEFAULT_CONFIG.utc_offset_h("us-west")
    home_night = prior_params(T0, offset, True)[0]
    away = prior_params(T0, offset, False)[0]
    assert home_night > away
    workday_morning = T0 + 11 * H  # Tuesday 09:00 local
    assert prior_params(workday_morning, offset, False)[0] > away


def test_minutes_to_full_is_a_weak_hint_away_from_home() -> None:
    base = node_from(tel("V", T0, at_home=False))
    hinted = node_from(tel("V", T0, at_home=False, minutes_to_full=20.0))
    p0, p1 = (
        stay_probability(base, 3600, T0, DEFAULT_CONFIG),
        stay_probability(hinted, 3600, T0, DEFAULT_CONFIG),
    )
    assert p1 < p0 and p1 > 0.4 * p0
    off = cfg(full_hint_weight=0.0)  # the operator can turn the hint off
    assert stay_probability(hinted, 3600, T0, off) == stay_probability(base, 3600, T0, off)


def test_unobserved_session_end_is_not_recorded() -> None:
    node = node_from(tel("V", T0), tel("V", T0 + 3 * H, gear="D"))  # 3 h silence: end not observed
    assert node.history.sessions == 0


def test_history_is_compact_and_round_trips() -> None:
    node = with_history(days=30, start_offset=0, hours=9.0)
    d = node.history.to_dict()
    assert len(d["b"]) <= 1 + 1 + 7  # all-week, one time-of-day block, one block per weekday
    assert [len(row) for row in d["h"]] == [24] * 4  # exposure and departures by hour, weekday/weekend
    assert IdleHistory.from_dict(d).to_dict() == d
    old_format = {"n": d["n"], "b": d["b"]}  # saved before the hourly rate existed
    assert IdleHistory.from_dict(old_format).haz == []
    assert 0 <= bucket_of(T0, -8.0) < 42


def test_hourly_exposure_and_departure_are_counted_in_local_time() -> None:
    hist = IdleHistory()
    monday_10_local = T0 - 12 * H  # T0 is Monday 22:00 us-west
    hist.add(monday_10_local, 2.5 * 3600, -8.0, DEFAULT_CONFIG.history_decay)
    exposure, ended = hist.haz[0], hist.haz[1]  # weekday rows
    assert [round(exposure[h], 6) for h in (9, 10, 11, 12, 13)] == [0.0, 1.0, 1.0, 0.5, 0.0]
    assert ended[12] == 1.0 and sum(ended) == 1.0
    assert sum(hist.haz[2]) == sum(hist.haz[3]) == 0.0  # nothing on weekends
    hist.add(monday_10_local + DAY, 3600, -8.0, DEFAULT_CONFIG.history_decay)  # older counts decay
    assert 1.9 < hist.haz[0][10] < 2.0 and 0.9 < hist.haz[1][12] < 1.0


def test_own_departure_hour_lowers_the_morning_estimate() -> None:
    """A commuter plugged in 18:00 -> 07:30 on the last nights: at 07:00 a 1 h task is a bad bet."""
    node = with_history(days=4, start_offset=-4 * H, hours=13.5)
    apply_telemetry(node, tel("V", T0 - 4 * H), DEFAULT_CONFIG)  # tonight's session, from 18:00
    morning = T0 + 9 * H  # Tuesday 07:00 local
    apply_telemetry(node, tel("V", morning), DEFAULT_CONFIG)
    log_normal_only = cfg(hazard_prior_hours=0.0)
    p_hourly = stay_probability(node, 3600, morning, DEFAULT_CONFIG)
    assert p_hourly < 0.5 and p_hourly < stay_probability(node, 3600, morning, log_normal_only)
    assert stay_probability(node, 3600, T0 + MIN, DEFAULT_CONFIG) > 0.9  # 22:00: nobody leaves at night
