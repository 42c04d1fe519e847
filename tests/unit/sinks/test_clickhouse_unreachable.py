"""Nothing answers at CARNIVAL_CLICKHOUSE_URL: `carnival query`, `carnival migrate` and a starting sink
worker say so in one message (what was tried, without the password; for how long; which setting to
check) and exit non-zero within CARNIVAL_CLICKHOUSE_CONNECT_TIMEOUT_S, instead of a traceback or
waiting forever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "carnival.cli", "query", "SELECT 1"],
        ["-m", "carnival.cli", "migrate"],
        ["-m", "sinks.worker", "fleet.telemetry.v1"],
    ],
    ids=["query", "migrate", "sink-worker"],
)
def test_unreachable_clickhouse_one_clear_message_and_a_nonzero_exit(command: list[str]) -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CARNIVAL_CLICKHOUSE_URL": f"http://analyst:s3cret-pw@127.0.0.1:{port}",
        "CARNIVAL_CLICKHOUSE_CONNECT_TIMEOUT_S": "1.5",
        "CARNIVAL_KAFKA_BOOTSTRAP": f"127.0.0.1:{_closed_port()}",  # the sink must not get that far
        "CARNIVAL_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, *command], env=env, cwd=ROOT, capture_output=True, timeout=60, text=True
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    (message,) = errors
    assert f"127.0.0.1:{port}" in message and "CARNIVAL_CLICKHOUSE_URL" in message
    assert "for 2s" in message or "for 1s" in message  # how long it tried
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
