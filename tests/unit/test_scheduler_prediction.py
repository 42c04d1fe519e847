"""The idle-time model: sanity of P(stay idle >= task duration)."""

from __future__ import annotations

from test_scheduler_support import MIN, T0, H, tel

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
    assert (
        stay_probability(short, 3600, T0, DEFAULT_CONFIG)
        < 0.2
        < 0.9
        < stay_probability(fresh, 3600, T0, DEFAULT_CONFIG)
    )


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


def test_unobserved_session_end_is_not_recorded() -> None:
    node = node_from(tel("V", T0), tel("V", T0 + 3 * H, gear="D"))  # 3 h silence: end not observed
    assert node.history.sessions == 0


def test_history_is_compact_and_round_trips() -> None:
    node = with_history(days=30, start_offset=0, hours=9.0)
    d = node.history.to_dict()
    assert len(d["b"]) <= 1 + 1 + 7  # all-week, one time-of-day block, one block per weekday
    assert IdleHistory.from_dict(d).to_dict() == d
    assert 0 <= bucket_of(T0, -8.0) < 42
