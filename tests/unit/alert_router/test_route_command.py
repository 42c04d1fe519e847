"""`carnival alerts route` against a broker nobody answers at: one clear message and a non-zero exit
within the configured timeout (before: librdkafka printed an error line every few ms, forever)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings
from processors.alert_router.cli import broker_problem


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed when the block ends: nobody listens there


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> str:
    bootstrap = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("CARNIVAL_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("CARNIVAL_ALERT_WEBHOOKS", "")
    return bootstrap


def test_broker_problem_names_what_was_tried_and_what_to_check(nowhere: str) -> None:
    problem = broker_problem(Settings(), 1.0)
    assert problem is not None and nowhere in problem and "1 s" in problem
    assert "CARNIVAL_KAFKA_BOOTSTRAP" in problem and "CARNIVAL_ALERT_BROKER_TIMEOUT_S" in problem


def test_route_exits_non_zero_with_one_message(nowhere: str) -> None:
    """Through the real entry point, so librdkafka's own stderr would show if it still printed there."""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "carnival.cli", "alerts", "route", "--webhook", "http://127.0.0.1:9/h",
               "--broker-timeout", "1"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 1, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot reach the Kafka broker at {nowhere} (tried for 1 s"), lines
