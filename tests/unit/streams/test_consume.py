"""`carnival consume`'s formatting without a broker: any bytes and any valid value end as a JSON line or
one line on stderr, never an exception (a fake consumer hands over the messages)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson

from schemas.examples import EXAMPLES
from streams.consume import consume_json_lines
from streams.records import parse_json_record
from streams.serde import AvroSerde

TEL = "fleet.telemetry.v1"


@dataclass
class Msg:
    data: bytes | None
    at: int

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self.data

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.at


class FakeConsumer:
    def __init__(self, values: list[bytes | None]) -> None:
        self.batches = [[Msg(v, i) for i, v in enumerate(values)]]

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def assign(self, partitions: list[Any]) -> None:
        pass

    def consume(self, n: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []


def consume(values: list[bytes | None], raw_timestamps: bool = True) -> tuple[list[Any], list[str], Any]:
    out, errors = io.BytesIO(), []
    summary = consume_json_lines(
        FakeConsumer(values), TEL, AvroSerde(raw_timestamps=raw_timestamps), out,  # type: ignore[arg-type]
        from_beginning=True, timeout_s=0, on_error=errors.append,
    )  # fmt: skip
    return [orjson.loads(line) for line in out.getvalue().splitlines()], errors, summary


def _encoded(**changes: Any) -> bytes:
    return AvroSerde().encode(TEL, parse_json_record(TEL, EXAMPLES[TEL]) | changes)


def test_a_timestamp_python_cannot_hold_is_written_as_the_raw_integer() -> None:
    far = 2**62  # ms: year 146 million
    rows, errors, summary = consume([_encoded(ts=far), _encoded(scheduled_departure=-(2**62)), _encoded()])
    assert [r["ts"] for r in rows] == [far, "2025-06-01T21:15:00.250Z", "2025-06-01T21:15:00.250Z"]
    assert rows[1]["scheduled_departure"] == -(2**62)
    assert summary.records == 3 and summary.raw_timestamps == 2
    assert len(errors) == 1 and "outside years 1..9999" in errors[0] and "offset 0" in errors[0]


def test_the_datetime_decoder_reports_such_a_timestamp_as_undecodable() -> None:
    rows, errors, summary = consume([_encoded(ts=2**62), _encoded()], raw_timestamps=False)
    assert len(rows) == 1 and summary.undecodable == 1
    assert "offset 0" in errors[0] and "DECODE" in errors[0]


def test_any_bytes_are_a_line_on_stderr_never_a_crash() -> None:
    good = _encoded()
    values: list[bytes | None] = [None, b"", b"\xc3\x01", b"\xc3\x01" + b"\x00" * 8, good[:-3], good + b"x",
                                  b"\x00\x00\x00\x00\x07abc", b"{}", good]  # fmt: skip
    rows, errors, summary = consume(values)
    assert len(rows) == 1 and summary.undecodable == len(values) - 1
    assert len(errors) == len(values) - 1 and all(e.startswith("partition 0 offset ") for e in errors)
    assert "tombstone" in errors[0]


def test_nan_and_infinity_are_written_as_null() -> None:
    rows, _, _ = consume([_encoded(soc_pct=float("nan"), compute_temp_c=float("inf"))])
    assert rows[0]["soc_pct"] is None and rows[0]["compute_temp_c"] is None
