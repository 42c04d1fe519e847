"""Ranking over large pools: the stay-probability memo and the bounded, order-free candidate walk."""

from __future__ import annotations

from test_scheduler_support import MIN, T0, S, cfg, commands, req, tel

from processors.scheduler import Scheduler
from processors.scheduler.prediction import stay_probability
from processors.scheduler.stay_cache import StayCache, duration_class


def test_duration_classes_round_up_by_at_most_a_class() -> None:
    for d in (60.0, 600.0, 601.0, 1800.0, 4 * 3600.0):
        c = duration_class(d)
        assert d <= c < d * 2 ** (1 / 32) + 1e-6
        assert duration_class(c) == c
    assert duration_class(0.0) == 0.0


def test_a_memoized_value_is_the_pure_value_at_the_step_and_class() -> None:
    config = cfg(rank_time_step_s=10.0)
    s = Scheduler(config)
    s.on_telemetry(tel("V1", T0, minutes_to_full=90.0))
    node = s.nodes["V1"]
    cache = StayCache(config)
    now = T0 + 7 * S
    t0 = cache.time_of(now)
    assert t0 % 10_000 == 0 and t0 <= now < t0 + 10_000
    expected = stay_probability(node, duration_class(1000.0), t0, config)
    assert cache.stay(node, 1000.0, now) == expected
    assert cache.stay(node, 1000.0, t0 + 9_999) == expected and cache.hits == 1
    s.on_telemetry(tel("V1", T0 + 20 * S, minutes_to_full=20.0))  # a new record: the entry is stale
    assert cache.stay(node, 1000.0, T0 + 21 * S) == stay_probability(
        node, duration_class(1000.0), cache.time_of(T0 + 21 * S), config
    )
    assert cache.misses == 2
    exact = StayCache(cfg(rank_time_step_s=0.0))
    assert exact.stay(node, 1000.0, now) == stay_probability(node, 1000.0, now, config)


def _fleet(order: list[int], **kw: object) -> Scheduler:
    s = Scheduler(cfg(max_candidates=8, **kw))
    for i in order:
        s.on_telemetry(tel(f"V{i:03d}", T0 + i, soc_pct=40.0 + i % 50, minutes_to_full=float(i % 120)))
    return s


def test_picks_in_a_pool_larger_than_max_candidates_do_not_depend_on_arrival_order() -> None:
    """Candidates are whole hash shards: the same idle set gives the same picks, however it was built
    (a restored worker inserts nodes in table order) and whether the memo is warm or cold."""
    forward, backward = _fleet(list(range(300))), _fleet(list(range(299, -1, -1)))
    restored, warm = (Scheduler.from_dict(forward.to_dict(), forward.cfg) for _ in range(2))
    for node in warm.nodes.values():  # the memo of a worker that ranked all of them this step already
        for k in range(30):
            warm._stay.stay(node, 900 + k, T0 + 2 * MIN)
    picks = []
    for s in (forward, backward, restored, warm):
        picks.append(
            [
                commands(s.on_request(req(f"t{k}", T0 + 2 * MIN + k, est_duration_s=900 + k)))
                for k in range(30)
            ]
        )
    assert picks[0] == picks[1] == picks[2] == picks[3]
    assert all(len(o) == 1 for o in picks[0])
    assert len({o[0][2] for o in picks[0]}) == 30  # one node each


def test_a_free_node_gone_stale_before_its_timer_fired_is_not_picked() -> None:
    s = Scheduler(cfg(lease_s=60))
    s.on_telemetry(tel("V1", T0))
    assert s.idle_nodes("us-west") == ["V1"]
    # V1's lease ran out at T0 + 60 s, but no tick has run its timer: still in the free set. Its timer
    # is due, so the pick evaluates it again and leaves the task queued.
    assert commands(s.on_request(req("t1", T0 + 70 * S))) == []
    assert s.tasks["t1"].state == "QUEUED"
    s.on_telemetry(tel("V2", T0 + 71 * S))
    assert s.tasks["t1"].vin == "V2"
    s.check_invariants()
