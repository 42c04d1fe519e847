"""Eligibility: each reason, not-reported values, out-of-order and duplicate telemetry."""

from __future__ import annotations

import pytest
from test_scheduler_support import MIN, T0, Harness, S, cfg, node_records, tel

from processors.scheduler import (
    DEFAULT_CONFIG,
    REASONS,
    NodeState,
    TelemetryResult,
    apply_telemetry,
    evaluate,
)
from processors.scheduler.eligibility import UNKNOWN_STATE


def node_after(*recs: dict, config=DEFAULT_CONFIG) -> NodeState:
    node = NodeState(vin=recs[0]["vin"])
    for r in recs:
        apply_telemetry(node, r, config)
    return node


def reason_of(*recs: dict, now: int | None = None, config=DEFAULT_CONFIG) -> str | None:
    node = node_after(*recs, config=config)
    return evaluate(node, recs[-1]["ts"] if now is None else now, config)[1]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, None),
        ({"opted_in": False}, "NOT_OPTED_IN"),
        ({"hw": "HW3"}, "HW_TOO_OLD"),
        ({"hw": "OTHER"}, "HW_TOO_OLD"),
        ({"hw": "HW5"}, None),
        ({"gear": "D"}, "NOT_PARKED"),
        ({"gear": "R"}, "NOT_PARKED"),
        ({"gear": "N"}, "NOT_PARKED"),
        ({"charge_state": "DISCONNECTED"}, "NOT_PLUGGED_IN"),
        ({"charge_state": "NO_POWER"}, "NOT_PLUGGED_IN"),
        ({"charge_state": "STARTING"}, None),
        ({"charge_state": "COMPLETE"}, None),
        ({"charge_state": "STOPPED"}, None),
        ({"soc_pct": 29.9}, "SOC_TOO_LOW"),
        ({"soc_pct": 30.0}, None),
        ({"compute_temp_c": 85.1}, "TOO_HOT"),
        ({"compute_temp_c": None}, None),  # temperature is optional
        ({"scheduled_departure": T0 + 19 * MIN}, "DEPARTURE_SOON"),
        ({"scheduled_departure": T0 + 21 * MIN}, None),
        ({"scheduled_departure": T0 - 5 * MIN}, "DEPARTURE_SOON"),  # owner late: about to come
        ({"scheduled_departure": T0 - 3 * 60 * MIN}, None),  # yesterday's setting
        ({"gear": "UNKNOWN"}, UNKNOWN_STATE),  # never reported
        ({"charge_state": "UNKNOWN"}, UNKNOWN_STATE),
        ({"soc_pct": None}, UNKNOWN_STATE),
        ({"charge_state": "SUPERCHARGING"}, UNKNOWN_STATE),  # symbol outside the enum = not reported
    ],
)
def test_each_reason_from_one_snapshot(overrides: dict, reason: str | None) -> None:
    assert reason_of(tel("V1", T0, **overrides)) == reason


def test_lease_expired() -> None:
    assert reason_of(tel("V1", T0), now=T0 + 120 * S) is None
    assert reason_of(tel("V1", T0), now=T0 + 121 * S) == "LEASE_EXPIRED"
    assert evaluate(NodeState(vin="X"), T0, DEFAULT_CONFIG) == (False, "LEASE_EXPIRED")


def test_throttled_and_at_capacity() -> None:
    node = node_after(tel("V1", T0))
    node.throttled_until = T0 + 1
    assert evaluate(node, T0, DEFAULT_CONFIG)[1] == "THROTTLED"
    node.throttled_until = -1
    node.running = ["t"]
    assert evaluate(node, T0, DEFAULT_CONFIG)[1] == "AT_CAPACITY"
    node.capacity = 2
    assert evaluate(node, T0, DEFAULT_CONFIG)[1] is None


def test_every_reason_is_covered() -> None:
    covered = {"LEASE_EXPIRED", "THROTTLED", "AT_CAPACITY"}
    for overrides, reason in [
        ({"opted_in": False}, "NOT_OPTED_IN"),
        ({"hw": "HW3"}, "HW_TOO_OLD"),
        ({"gear": "D"}, "NOT_PARKED"),
        ({"charge_state": "DISCONNECTED"}, "NOT_PLUGGED_IN"),
        ({"soc_pct": float("nan")}, "SOC_INVALID"),
        ({"compute_temp_c": float("nan")}, "TEMP_INVALID"),
        ({"gear": "UNKNOWN"}, "UNKNOWN_STATE"),
        ({"soc_pct": 10.0}, "SOC_TOO_LOW"),
        ({"compute_temp_c": 99.0}, "TOO_HOT"),
        ({"scheduled_departure": T0 + MIN}, "DEPARTURE_SOON"),
    ]:
        assert reason_of(tel("V1", T0, **overrides)) == reason
        covered.add(reason)
    # The record a car sends as it falls asleep (no live reading), after a live one.
    asleep = tel("V1", T0 + S, gear="UNKNOWN", soc_pct=None, charge_limit_pct=None, compute_temp_c=None)
    assert reason_of(tel("V1", T0), asleep) == "ASLEEP"
    covered.add("ASLEEP")
    node = node_after(tel("V1", T0))
    node.owner_since = T0  # the node reported its owner back (matching sets it from tasks.status.v1)
    assert evaluate(node, T0 + S, DEFAULT_CONFIG)[1] == "OWNER_PRESENT"
    covered.add("OWNER_PRESENT")
    assert covered == set(REASONS)


def test_thresholds_are_configuration() -> None:
    loose = cfg(min_soc_pct=10.0, min_hw="HW3", max_compute_temp_c=100.0)
    assert reason_of(tel("V1", T0, soc_pct=15.0, hw="HW3", compute_temp_c=95.0), config=loose) is None


# -- not reported: missing / UNKNOWN -----------------------------------------------------------


def test_unknown_charge_state_is_never_unplugged() -> None:
    node = node_after(
        tel("V1", T0), tel("V1", T0 + 10 * S, charge_state="UNKNOWN", gear="UNKNOWN", soc_pct=None)
    )
    assert node.charge_state == "CHARGING" and node.gear == "P" and node.soc_pct == 80.0
    assert evaluate(node, T0 + 10 * S, DEFAULT_CONFIG) == (True, None)


def test_missing_fields_keep_last_value_and_a_live_reading_refreshes_lease() -> None:
    rec = {"vin": "V1", "ts": T0 + 100 * S, "region": "us-west", "opted_in": True, "soc_pct": 79.0}
    h = Harness()
    h.tel("V1", T0)
    h.s.on_telemetry(rec)  # everything but the SoC missing
    node = h.s.nodes["V1"]
    assert node.ts == T0 + 100 * S and node.gear == "P" and node.charge_at == T0
    # lease refreshed by the live SoC: still eligible after the original lease would have run out
    assert evaluate(node, T0 + 150 * S, DEFAULT_CONFIG) == (True, None)


def test_stale_good_values_keep_eligible_node_for_field_ttl_only() -> None:
    h = Harness()
    h.tel("V1", T0)
    for k in range(1, 16):  # 15 minutes of "not reported" gear/charge/soc, lease kept alive
        h.tel("V1", T0 + k * MIN, gear="UNKNOWN", charge_state="UNKNOWN", soc_pct=None)
    assert h.s.nodes["V1"].eligible  # exactly 15 min = field_ttl_s: still trusted
    h.tel("V1", T0 + 15 * MIN + 30 * S, gear="UNKNOWN", charge_state="UNKNOWN", soc_pct=None)
    assert h.s.nodes["V1"].reason == "UNKNOWN_STATE"


def test_not_reported_value_cannot_make_a_node_newly_eligible() -> None:
    h = Harness()
    h.tel("V1", T0, soc_pct=20.0)  # gear P, plugged, but SoC too low
    assert h.s.nodes["V1"].reason == "SOC_TOO_LOW"
    # Five minutes later only the SoC is reported: gear/charge were last reported 5 min ago (> confirm_s)
    h.tel("V1", T0 + 5 * MIN, soc_pct=50.0, gear="UNKNOWN", charge_state="UNKNOWN")
    assert h.s.nodes["V1"].reason == "UNKNOWN_STATE"
    h.tel("V1", T0 + 6 * MIN, soc_pct=50.0)  # gear and charge reported again
    assert h.s.nodes["V1"].eligible


def test_last_known_bad_value_still_counts() -> None:
    assert reason_of(tel("V1", T0, gear="D"), tel("V1", T0 + 30 * MIN, gear="UNKNOWN")) == "NOT_PARKED"


# -- order and duplicates -----------------------------------------------------------------------


def test_out_of_order_and_duplicate_telemetry_are_ignored() -> None:
    node = NodeState(vin="V1")
    assert apply_telemetry(node, tel("V1", T0 + 10 * S), DEFAULT_CONFIG)[0] is TelemetryResult.APPLIED
    assert (
        apply_telemetry(node, tel("V1", T0 + 10 * S, gear="D"), DEFAULT_CONFIG)[0]
        is TelemetryResult.DUPLICATE
    )
    assert apply_telemetry(node, tel("V1", T0, gear="D"), DEFAULT_CONFIG)[0] is TelemetryResult.OUT_OF_ORDER
    assert node.gear == "P"


def test_scheduler_publishes_on_change_only() -> None:
    h = Harness()
    first = h.tel("V1", T0)
    assert len(node_records(first, "V1")) == 1
    assert node_records(h.tel("V1", T0 + 10 * S), "V1") == []  # nothing material changed
    assert node_records(h.tel("V1", T0 + 5 * S, gear="D"), "V1") == []  # late: ignored
    assert h.s.counters["telemetry_out_of_order"] == 1
    recs = node_records(h.tel("V1", T0 + 20 * S, gear="D"), "V1")
    assert recs[-1]["eligible"] is False and recs[-1]["reason"] == "NOT_PARKED"


def test_lease_expiry_is_published_by_tick() -> None:
    h = Harness()
    h.tel("V1", T0)
    assert node_records(h.tick(T0 + 100 * S), "V1") == []
    recs = node_records(h.tick(T0 + 121 * S), "V1")
    assert recs[-1]["reason"] == "LEASE_EXPIRED"
    assert h.s.idle_nodes("us-west") == []


def test_node_state_round_trip() -> None:
    node = node_after(tel("V1", T0), tel("V1", T0 + 60 * S, gear="D"), tel("V1", T0 + 2 * MIN))
    assert NodeState.from_dict(node.to_dict()).to_dict() == node.to_dict()
