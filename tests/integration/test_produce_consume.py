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
