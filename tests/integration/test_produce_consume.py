"""`carnival produce` / `carnival consume` through the real broker, as an operator runs them."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from core.settings import Settings
from streams.consume import consume_json_lines
from streams.kafka import make_consumer
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration


def telemetry(vin: str, i: int) -> dict[str, object]:
    return {
        "vin": vin,
        "ts": f"2026-03-02T21:{i // 60:02d}:{i % 60:02d}.125Z",
        "hw": "HW4",
        "region": "us-west",
        "charge_state": "CHARGING",
        "gear": "P",
        "soc_pct": 40.0 + i,
        "charge_limit_pct": 80.0,
        "minutes_to_full": 55.5,
        "scheduled_departure": "2026-03-03T07:30:00.000Z",
        "at_home": True,
        "opted_in": True,
        "compute_temp_c": 38.25,
        "software_version": "2026.8.1",
    }


def read_topic(settings: Settings, topic: str, tmp_path: Path, wanted: int, match) -> list[dict]:  # type: ignore[no-untyped-def]
    """All records of ``topic`` for which ``match`` holds, read with the same code as `carnival consume`."""
    out = tmp_path / f"{topic}.jsonl"
    consumer = make_consumer(settings)
    try:
        with out.open("wb") as fh:
            consume_json_lines(
                consumer, topic, serde_from_settings(settings), fh, from_beginning=True, timeout_s=3.0
            )
    finally:
        consumer.close()
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    found = [r for r in rows if match(r)]
    assert len(found) >= wanted, f"expected {wanted} matching records on {topic}, found {len(found)}"
    return found


def test_produce_then_consume_round_trips_records_exactly(run_cli, tmp_path: Path) -> None:
    vin = f"TEST{uuid.uuid4().hex[:13].upper()}"
    records = [telemetry(vin, i) for i in range(50)]
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")

    produced = run_cli("produce", "fleet.telemetry.v1", str(sample))
    assert produced.returncode == 0, produced.stderr.decode()
    assert b"50 produced, 0 rejected" in produced.stderr
    assert b"50 delivered" in produced.stderr

    consumed = run_cli("consume", "fleet.telemetry.v1", "--from-beginning", "--timeout", "3")
    assert consumed.returncode == 0, consumed.stderr.decode()
    got = [orjson.loads(line) for line in consumed.stdout.splitlines()]
    mine = sorted((r for r in got if r["vin"] == vin), key=lambda r: r["ts"])
    # One key -> one partition -> order preserved; every field comes back as it went in.
    assert mine == records


def test_consume_stops_after_max_records(run_cli, tmp_path: Path) -> None:
    vin = f"MAX{uuid.uuid4().hex[:14].upper()}"
    sample = tmp_path / "max.jsonl"
    sample.write_bytes(b"\n".join(orjson.dumps(telemetry(vin, i)) for i in range(20)))
    assert run_cli("produce", "fleet.telemetry.v1", str(sample)).returncode == 0

    consumed = run_cli("consume", "fleet.telemetry.v1", "--from-beginning", "--max", "7", "--timeout", "10")
    assert consumed.returncode == 0
    assert len(consumed.stdout.splitlines()) == 7


def test_bad_lines_are_reported_with_line_numbers_and_dead_lettered(
    run_cli, settings: Settings, tmp_path: Path
) -> None:
    vin = f"BAD{uuid.uuid4().hex[:14].upper()}"
    good = telemetry(vin, 1)
    wrong_type = {**telemetry(vin, 2), "soc_pct": "high"}
    unknown_enum = {**telemetry(vin, 3), "gear": "X"}
    missing = {k: v for k, v in telemetry(vin, 4).items() if k != "opted_in"}
    lines = [
        orjson.dumps(good),  # 1 good
        b'{"vin": "' + vin.encode() + b'", "ts": ',  # 2 malformed JSON
        orjson.dumps(wrong_type),  # 3 wrong type
        b"",  # 4 blank: skipped, not an error
        orjson.dumps(unknown_enum),  # 5 unknown enum symbol
        orjson.dumps(missing),  # 6 missing required field
        orjson.dumps(telemetry(vin, 7)),  # 7 good
        b"[1, 2, 3]",  # 8 JSON but not an object
    ]
    sample = tmp_path / "mixed.jsonl"
    sample.write_bytes(b"\n".join(lines) + b"\n")

    result = run_cli("produce", "fleet.telemetry.v1", str(sample))
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "6 records read" not in stderr  # blank line is not a record
    assert "7 records read, 2 produced, 5 rejected" in stderr
    for line_no, word in [
        (2, "MALFORMED_JSON"),
        (3, "soc_pct"),
        (5, "gear"),
        (6, "opted_in"),
        (8, "MALFORMED_JSON"),
    ]:
        assert any(f"mixed.jsonl:line {line_no}:" in row and word in row for row in stderr.splitlines()), (
            f"line {line_no} not reported with {word!r}:\n{stderr}"
        )

    arrived = read_topic(settings, "fleet.telemetry.v1", tmp_path, 2, lambda r: r["vin"] == vin)
    assert sorted(r["soc_pct"] for r in arrived) == [41.0, 47.0]

    dead = read_topic(
        settings,
        "deadletter.v1",
        tmp_path,
        4,
        lambda r: r["source_topic"] == "fleet.telemetry.v1" and vin.encode() in _raw(r),
    )
    by_line = {r["line"]: r for r in dead}
    assert sorted(by_line) == [2, 3, 5, 6]  # line 8 has no vin in its bytes; checked below
    assert by_line[2]["error_kind"] == "MALFORMED_JSON"
    assert {by_line[n]["error_kind"] for n in (3, 5, 6)} == {"VALIDATION"}
    assert "soc_pct" in by_line[3]["error"] and "gear" in by_line[5]["error"]
    assert _raw(by_line[3]) == lines[2]  # the original bytes, untouched
    assert by_line[3]["processor"] == "carnival produce"
    not_object = read_topic(
        settings, "deadletter.v1", tmp_path, 1, lambda r: r["line"] == 8 and _raw(r) == b"[1, 2, 3]"
    )
    assert not_object[0]["error_kind"] == "MALFORMED_JSON"


def _raw(record: dict) -> bytes:  # type: ignore[type-arg]
    import base64

    return base64.b64decode(record["value"]) if record.get("value") else b""


def test_unknown_topic_is_a_clear_error(run_cli, tmp_path: Path) -> None:
    sample = tmp_path / "x.jsonl"
    sample.write_text("{}\n")
    result = run_cli("produce", "no.such.topic", str(sample))
    assert result.returncode == 2
    assert b"unknown topic 'no.such.topic'" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_hostile_file_is_rejected_line_by_line_and_the_rest_goes_through(
    run_cli, settings: Settings, tmp_path: Path
) -> None:
    """Each of these crashed or hung `carnival produce` before (issue 11); now each is one rejection with
    its kind and reason, one bounded dead letter, and the good lines around them are delivered."""
    import json
    from datetime import UTC, datetime, timedelta

    vin = f"HOS{uuid.uuid4().hex[:14].upper()}"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    huge = {**telemetry(vin, 7), "software_version": "v" * 1_200_000}
    lines = [
        orjson.dumps(telemetry(vin, 1)),  # 1 good
        b'{"vin": ' + b"[" * 1000 + b"]" * 1000 + b', "tag": "' + vin.encode() + b'"}',  # 2 nested 1000 deep
        orjson.dumps({**telemetry(vin, 3), "ts": "0001-01-01T00:00:00+01:00"}),  # 3 year 1 with an offset
        orjson.dumps({**telemetry(vin, 4), "ts": "9999-12-31T23:59:59-01:00"}),  # 4 year 9999 with an offset
        json.dumps({**telemetry(vin, 5), "soc_pct": 10**40}).encode(),  # 5 an integer no double holds
        orjson.dumps({**telemetry(vin, 6), "ts": future}),  # 6 an hour ahead of now
        orjson.dumps(huge),  # 7 over the broker's 1 MB message limit
        orjson.dumps(telemetry(vin, 8)),  # 8 good
    ]
    sample = tmp_path / "hostile.jsonl"
    sample.write_bytes(b"\n".join(lines) + b"\n")

    result = run_cli("produce", "fleet.telemetry.v1", str(sample))
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert (
        "8 records read, 2 produced, 6 rejected" in stderr and "8 delivered, 0 failed" in stderr
    )  # dead letters too
    expected = {2: "VALIDATION", 3: "VALIDATION", 4: "VALIDATION", 5: "VALIDATION", 6: "FUTURE_TIMESTAMP",
                7: "OVERSIZED"}  # fmt: skip
    for line_no, kind in expected.items():
        assert any(f"hostile.jsonl:line {line_no}: {kind}:" in row for row in stderr.splitlines()), (
            f"line {line_no} not reported as {kind}:\n{stderr[:5000]}"
        )
    arrived = read_topic(settings, "fleet.telemetry.v1", tmp_path, 2, lambda r: r["vin"] == vin)
    assert sorted(r["soc_pct"] for r in arrived) == [41.0, 48.0]

    dead = read_topic(
        settings, "deadletter.v1", tmp_path, 6,
        lambda r: r["source_topic"] == "fleet.telemetry.v1" and vin.encode() in _raw(r),
    )  # fmt: skip
    by_line = {r["line"]: r for r in dead}
    assert {n: by_line[n]["error_kind"] for n in expected} == expected
    assert all(by_line[n]["error"] for n in expected)  # every dead letter has its reason
    oversized = by_line[7]
    assert oversized["truncated"] is True and oversized["value_size"] == len(lines[6])


def test_produce_refuses_derived_topics_unless_allowed(run_cli, settings: Settings, tmp_path: Path) -> None:
    fingerprint = f"test-{uuid.uuid4().hex}"
    alert = {"fingerprint": fingerprint, "status": "FIRING", "severity": "critical", "kind": "FAILOVER",
             "site_id": "dc-1", "summary": "forged?", "starts_at": "2026-03-02T21:00:00Z"}  # fmt: skip
    sample = tmp_path / "alert.jsonl"
    sample.write_bytes(orjson.dumps(alert) + b"\n")
    refused = run_cli("produce", "alerts.v1", str(sample))
    assert refused.returncode == 2 and b"--allow-derived" in refused.stderr
    allowed = run_cli("produce", "alerts.v1", str(sample), "--allow-derived")
    assert allowed.returncode == 0, allowed.stderr.decode()
    read_topic(settings, "alerts.v1", tmp_path, 1, lambda r: r["fingerprint"] == fingerprint)


def test_consume_never_crashes_on_what_a_topic_holds(run_cli, settings: Settings, tmp_path: Path) -> None:
    """A valid Avro record whose timestamp no datetime holds, bytes that are not Avro and a tombstone:
    written by a raw producer, as a buggy or hostile client would."""
    from streams.kafka import Producer
    from streams.records import parse_json_record

    vin = f"FAR{uuid.uuid4().hex[:14].upper()}"
    serde = serde_from_settings(settings)
    record = parse_json_record("fleet.telemetry.v1", telemetry(vin, 1))
    far = serde.encode("fleet.telemetry.v1", {**record, "ts": 2**62})
    with Producer(settings) as producer:
        for value in (far, b"not avro at all", serde.encode("fleet.telemetry.v1", record)):
            producer.produce("fleet.telemetry.v1", value, vin)
        producer._producer.produce("fleet.telemetry.v1", None, vin)  # a tombstone

    consumed = run_cli("consume", "fleet.telemetry.v1", "--from-beginning", "--timeout", "3")
    stderr = consumed.stderr.decode()
    assert consumed.returncode == 0, stderr
    assert "Traceback" not in stderr
    mine = [orjson.loads(line) for line in consumed.stdout.splitlines() if vin.encode() in line]
    assert [r["ts"] for r in mine] == [2**62, "2026-03-02T21:00:01.125Z"]
    assert "written as raw epoch integers" in stderr
    assert "BAD_MAGIC" in stderr and "tombstone" in stderr  # the skipped ones, one line each
