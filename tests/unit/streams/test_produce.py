"""`carnival produce`'s path without a broker: every hostile line is one rejection with a kind and a reason
(and one bounded dead letter), the lines around it still go through, and the run ends with a summary."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from core.settings import Settings
from schemas.examples import EXAMPLES
from streams.deadletter import VALUE_MAX_BYTES
from streams.kafka import MAX_MESSAGE_BYTES, Producer
from streams.produce import ProduceSummary, produce_json_lines
from streams.serde import AvroSerde

TEL = "fleet.telemetry.v1"
ACTIONS = "emulator.actions.v1"
DEADLETTER = "deadletter.v1"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


class FakeProducer:
    """Keeps what is produced; refuses what librdkafka refuses synchronously (message.max.bytes, ~40 bytes
    of overhead), as the real client raises KafkaException MSG_SIZE_TOO_LARGE."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.sent: list[tuple[str, bytes, str | bytes | None]] = []
        self.max_bytes = max_bytes

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        if len(value) + len(key or "") + 40 > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append((topic, value, key))

    def records(self, topic: str) -> list[dict[str, Any]]:
        serde = AvroSerde()
        return [serde.decode(topic, value) for t, value, _ in self.sent if t == topic]


def tel(**changes: Any) -> dict[str, Any]:
    return dict(EXAMPLES[TEL]) | {"ts": "2026-03-02T11:59:00Z"} | changes


def run(
    topic: str, lines: list[bytes], producer: FakeProducer | None = None, **kw: Any
) -> tuple[ProduceSummary, FakeProducer]:
    producer = producer or FakeProducer()
    summary = produce_json_lines(topic, lines, producer, AvroSerde(), now_ms=lambda: NOW_MS, **kw)
    return summary, producer


def test_a_field_nested_a_thousand_deep_is_one_rejection_and_the_file_goes_on() -> None:
    deep = b'{"vin": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    lines = [orjson.dumps(tel()), deep, orjson.dumps(tel(vin="5YJ3E1EA7KF000002"))]
    summary, producer = run(TEL, lines)
    assert (summary.read, summary.produced, summary.rejected) == (3, 2, 1)
    [rejection] = summary.rejections
    assert (rejection.line, rejection.kind) == (2, "VALIDATION") and "'vin'" in rejection.reason
    [dead] = producer.records(DEADLETTER)
    assert (dead["error_kind"], dead["line"], dead["value"]) == ("VALIDATION", 2, deep)
    assert "expected string" in dead["error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ts", "0001-01-01T00:00:00+01:00"),
        ("ts", "9999-12-31T23:59:59-01:00"),
        ("scheduled_departure", "1970-01-01T00:00:00Z"),
        ("soc_pct", 10**40),
        ("priority", 10**30),
    ],
)
def test_out_of_range_values_are_validation_rejections(field: str, value: Any) -> None:
    topic = "tasks.requests.v1" if field == "priority" else TEL
    obj = dict(EXAMPLES[topic]) | {field: value} if field == "priority" else tel(**{field: value})
    summary, producer = run(topic, [_dumps(obj)])
    [rejection] = summary.rejections
    assert rejection.kind == "VALIDATION" and f"'{field}'" in rejection.reason
    assert producer.records(TEL) == []


def _dumps(obj: dict[str, Any]) -> bytes:
    import json

    return json.dumps(obj).encode()  # stdlib: integers of any length, as a hand-written file has them


def test_non_ascii_text_in_a_bytes_field_is_a_validation_rejection() -> None:
    line = orjson.dumps(dict(EXAMPLES[DEADLETTER]) | {"value": "déjà vu"})
    summary, _ = run(DEADLETTER, [line])
    [rejection] = summary.rejections
    assert rejection.kind == "VALIDATION" and "base64" in rejection.reason


def test_a_record_over_the_message_limit_is_oversized_not_a_crash() -> None:
    big = orjson.dumps(tel(software_version="v" * 1_200_000))
    summary, producer = run(TEL, [big, orjson.dumps(tel())])
    assert (summary.produced, summary.rejected) == (1, 1)
    [rejection] = summary.rejections
    assert rejection.kind == "OVERSIZED" and "bytes" in rejection.reason
    [dead] = producer.records(DEADLETTER)
    assert dead["error_kind"] == "OVERSIZED"
    assert dead["value"] == big[:VALUE_MAX_BYTES] and dead["truncated"] is True
    assert (dead["value_size"], dead["value_sha256"]) == (len(big), hashlib.sha256(big).hexdigest())


def test_a_smaller_producer_limit_is_honoured_and_a_refusal_is_never_a_crash() -> None:
    line = orjson.dumps(tel(software_version="v" * 200_000))
    summary, _ = run(TEL, [line], FakeProducer(max_bytes=100_000), max_message_bytes=100_000)
    assert summary.rejections[0].kind == "OVERSIZED"
    # the producer refusing what the size check let through (a tighter passthrough limit) is OVERSIZED too
    summary, producer = run(TEL, [line, orjson.dumps(tel())], FakeProducer(max_bytes=100_000))
    assert [r.kind for r in summary.rejections] == ["OVERSIZED"] and summary.produced == 1
    assert "refused" in summary.rejections[0].reason


def test_the_largest_record_accepted_is_accepted_by_librdkafka(tmp_path: Path) -> None:
    """The gate's limit and the producer's message.max.bytes agree: no broker needed, librdkafka checks
    the size when the record is queued."""
    settings = Settings.from_env({"CARNIVAL_KAFKA_BOOTSTRAP": "127.0.0.1:9"}, data_dir=tmp_path)
    producer = Producer(settings, log_level=0)
    try:
        assert producer.max_message_bytes == MAX_MESSAGE_BYTES
        serde = AvroSerde()
        overhead = len(serde.encode(TEL, _parsed(tel(software_version=""))))
        key = EXAMPLES[TEL]["vin"]
        fill = MAX_MESSAGE_BYTES - 512 - overhead - len(key) - 3  # 3: the longer string's length varint
        line = orjson.dumps(tel(software_version="v" * fill))
        summary = produce_json_lines(TEL, [line], producer, serde, now_ms=lambda: NOW_MS)
        assert summary.rejected == 0 and summary.produced == 1
        summary = produce_json_lines(
            TEL,
            [orjson.dumps(tel(software_version="v" * (fill + 600)))],
            producer,
            serde,
            now_ms=lambda: NOW_MS,
        )
        assert [r.kind for r in summary.rejections] == ["OVERSIZED"]
    finally:
        producer._producer.purge()


def _parsed(obj: dict[str, Any]) -> dict[str, Any]:
    from streams.records import parse_json_record

    return parse_json_record(TEL, obj)


def test_a_timestamp_beyond_the_future_skew_is_refused() -> None:
    soon, later = "2026-03-02T12:04:00Z", "2026-03-02T12:06:00Z"  # 4 and 6 minutes after "now"
    summary, producer = run(TEL, [orjson.dumps(tel(ts=soon)), orjson.dumps(tel(ts=later))])
    assert summary.produced == 1
    [rejection] = summary.rejections
    assert (rejection.line, rejection.kind) == (2, "FUTURE_TIMESTAMP") and "'ts'" in rejection.reason
    assert producer.records(DEADLETTER)[0]["error_kind"] == "FUTURE_TIMESTAMP"
    # a departure time in the future is what it means: only the record's own time is checked
    summary, _ = run(TEL, [orjson.dumps(tel(scheduled_departure="2026-03-09T07:00:00Z"))])
    assert summary.rejected == 0
    summary, _ = run(TEL, [orjson.dumps(tel(ts=later))], max_future_skew_s=None)
    assert summary.rejected == 0


def test_power_events_future_check_reads_microseconds() -> None:
    pe = dict(EXAMPLES["power.events.v1"])
    ok = pe | {"ts": NOW_MS * 1000 + 60_000_000}
    ahead = pe | {"ts": NOW_MS * 1000 + 3_600_000_000}
    summary, _ = run("power.events.v1", [orjson.dumps(ok), orjson.dumps(ahead)])
    assert summary.produced == 1 and [r.kind for r in summary.rejections] == ["FUTURE_TIMESTAMP"]


def test_a_rejected_emulator_action_never_carries_out_of_schema_text() -> None:
    action = dict(EXAMPLES[ACTIONS]) | {"ts": "2026-03-02T11:59:00Z"}
    typed = "dear diary, my password is hunter2"
    lines = [
        orjson.dumps(action | {"typed_text": typed}),
        orjson.dumps(action | {"keys": typed * 2}),
        b'{"typed_text": "' + typed.encode() + b'", ',  # not JSON: nothing of it is kept
        orjson.dumps(action | {"text_len": typed}),
    ]
    summary, producer = run(ACTIONS, lines)
    assert [r.kind for r in summary.rejections] == [
        "VALIDATION",
        "VALIDATION",
        "MALFORMED_JSON",
        "VALIDATION",
    ]
    dead = producer.records(DEADLETTER)
    assert len(dead) == 4
    for record, raw in zip(dead, lines, strict=True):
        assert b"hunter2" not in (record["value"] or b"") and "hunter2" not in record["error"]
        assert record["value_size"] == len(raw)
        assert record["value_sha256"] == hashlib.sha256(raw).hexdigest() and record["truncated"] is True
    first = orjson.loads(dead[0]["value"])
    assert first["typed_text"] == f"<redacted {len(typed)} chars>"
    assert first["session_id"] == action["session_id"]  # fields of the schema are kept
    assert orjson.loads(dead[1]["value"])["keys"] == f"<redacted {2 * len(typed)} chars>"
    assert dead[2]["value"] is None
    # other topics keep the original line
    summary, producer = run(TEL, [orjson.dumps(tel(typed_text=typed))])
    assert b"hunter2" in producer.records(DEADLETTER)[0]["value"]
