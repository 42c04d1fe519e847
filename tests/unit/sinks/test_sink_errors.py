"""Which ClickHouse errors say something about the rows (split, dead-letter) and which only about the
server (retry as is): the messages are the server's own, as clickhouse-connect reports them."""

from __future__ import annotations

import pytest

from sinks.errors import Verdict, classify, error_code


def _server(code: int, text: str) -> str:
    return (
        f"Received ClickHouse exception, code: {code}, server response: Code: {code}. DB::Exception: {text} "
        "(for url http://localhost:8123)"
    )


@pytest.mark.parametrize(
    ("message", "verdict"),
    [
        # the batch alone: more than 100 months in one insert (the sink used to retry this forever)
        (
            _server(
                252,
                "Too many partitions for single INSERT block (more than 100). The limit is "
                "controlled by 'max_partitions_per_insert_block' setting.",
            ),
            Verdict.TOO_BIG,
        ),
        # the table's state: merges lag behind, a later retry of the same small insert passes
        (
            _server(
                252,
                "Too many parts (3001 with average size of 1.2 KiB) in table 'carnival.telemetry'. "
                "Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
            ),
            Verdict.TRANSIENT,
        ),
        (_server(241, "Memory limit (total) exceeded: would use 9.3 GiB"), Verdict.TOO_BIG),
        (
            "Received ClickHouse exception, code: 1001, server response: std::exception. Code: 1001, "
            "type: avro::Exception, e.what() = Invalid value for bool (for url http://localhost:8123)",
            Verdict.REJECTED,
        ),
        (_server(1001, "std::exception. Code: 1001, type: std::runtime_error"), Verdict.TRANSIENT),
        (_server(27, "Cannot parse input: expected ',' before: 'x'"), Verdict.REJECTED),
        (_server(53, "Type mismatch in IN or VALUES section"), Verdict.REJECTED),
        (_server(321, "Value is out of range of data type"), Verdict.REJECTED),
        (_server(159, "Timeout exceeded: elapsed 60.1 seconds"), Verdict.TRANSIENT),
        (_server(60, "Table carnival.telemetry does not exist"), Verdict.TRANSIENT),
        (_server(242, "Table is in readonly mode"), Verdict.TRANSIENT),
        (_server(394, "Query was cancelled"), Verdict.TRANSIENT),
        ("HTTPDriver for http://localhost:8123 returned response code 502", Verdict.TRANSIENT),
        (_server(9999, "a code this sink does not know"), Verdict.TRANSIENT),
    ],
)
def test_verdict_by_code_and_whether_the_batch_alone_causes_it(message: str, verdict: Verdict) -> None:
    assert classify(error_code(message), message) is verdict


def test_error_code_is_the_servers_not_the_http_status() -> None:
    assert error_code("returned response code 500)\n Code: 252. DB::Exception: x") == 252
    assert error_code("returned response code 502") is None
