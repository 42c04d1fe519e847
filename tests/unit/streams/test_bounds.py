"""Input strings have documented maximum lengths."""

from __future__ import annotations

from streams.bounds import ID_MAX, STRING_LIMITS, oversized_error
from streams.topics import INPUT_TOPICS, POWER_EVENTS_TOPIC, REQUESTS_TOPIC, TELEMETRY_TOPIC


def test_a_string_over_its_limit_is_named_with_its_length() -> None:
    assert oversized_error(REQUESTS_TOPIC, {"task_id": "t", "tenant": "x" * (ID_MAX + 1)}) == (
        f"tenant is {ID_MAX + 1} characters; at most {ID_MAX} are allowed"
    )


def test_strings_at_their_limit_and_absent_fields_pass() -> None:
    assert oversized_error(REQUESTS_TOPIC, {"task_id": "t" * ID_MAX, "region": None}) is None
    assert oversized_error(TELEMETRY_TOPIC, {"vin": "5YJ3E1EA7KF000001"}) is None


def test_every_input_topic_has_limits_here_or_in_its_processor() -> None:
    assert set(STRING_LIMITS) | {POWER_EVENTS_TOPIC} == set(INPUT_TOPICS)
