"""A dead letter is bounded whatever it carries, and still identifies what it came from."""

from __future__ import annotations

import hashlib

from streams.deadletter import ERROR_MAX_CHARS, KEY_MAX_BYTES, VALUE_MAX_BYTES, deadletter_record
from streams.event_time import future_skew_error
from streams.serde import AvroSerde
from streams.topics import DEADLETTER_TOPIC


def test_an_oversized_value_keeps_its_head_size_and_hash() -> None:
    value = b"x" * (3 * 1024 * 1024)
    record = deadletter_record("fleet.telemetry.v1", "OVERSIZED", "too big", value, key=b"k" * 5000)
    assert record["value"] == value[:VALUE_MAX_BYTES]
    assert record["value_size"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert record["truncated"] is True
    assert len(record["key"]) == KEY_MAX_BYTES
    encoded = AvroSerde().encode(DEADLETTER_TOPIC, record)
    assert len(encoded) < 100 * 1024  # fits the broker's 1 MB limit with room to spare


def test_a_small_value_is_kept_whole() -> None:
    record = deadletter_record("tasks.requests.v1", "VALIDATION", "bad", b"{}")
    assert (record["value"], record["value_size"], record["truncated"]) == (b"{}", 2, False)


def test_a_tombstone_has_no_size_or_hash() -> None:
    record = deadletter_record("tasks.requests.v1", "TOMBSTONE", "null value", None)
    assert (record["value"], record["value_size"], record["value_sha256"]) == (None, None, None)
    AvroSerde().encode(DEADLETTER_TOPIC, record)


def test_error_text_is_bounded_and_says_how_much_was_cut() -> None:
    record = deadletter_record("t", "PROCESSING", "e" * 100_000, b"")
    assert len(record["error"]) <= ERROR_MAX_CHARS
    assert "more characters" in record["error"]


def test_event_time_beyond_the_skew_past_arrival_is_refused() -> None:
    arrival = 1_700_000_000_000
    assert future_skew_error(arrival + 299_000, arrival, 300) is None
    assert future_skew_error(arrival - 86_400_000, arrival, 300) is None  # past is lateness, not skew
    assert "allowed skew is 300 s" in (future_skew_error(arrival + 301_000, arrival, 300) or "")
    assert future_skew_error(32_503_680_000_000, arrival, 300) is not None  # the year 3000


def test_no_arrival_time_means_no_skew_check() -> None:
    assert future_skew_error(32_503_680_000_000, None, 300) is None
    assert future_skew_error(32_503_680_000_000, -1, 300) is None
