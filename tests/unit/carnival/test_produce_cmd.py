"""`carnival produce` / `consume` / `topics apply` as a new user meets them without a broker: a derived topic
is refused before anything connects, and an unreachable cluster is one clear error line and exit 1 within
the connect timeout, with librdkafka's own lines in the structured log, not on the terminal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from schemas.examples import EXAMPLES
from streams.topics import DERIVED_TOPICS

ROOT = Path(__file__).resolve().parents[3]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


def _carnival(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CARNIVAL_KAFKA_BOOTSTRAP": f"127.0.0.1:{_closed_port()}",
        "CARNIVAL_KAFKA_CONNECT_TIMEOUT_S": "1.5",
        "CARNIVAL_DATA_DIR": str(tmp_path / "data"),
        "CARNIVAL_LOG_FORMAT": "json",
        **env,
    }
    # The timeout is the hang detector: before, produce retried on the terminal until interrupted.
    return subprocess.run(
        [sys.executable, "-m", "carnival.cli", *args],
        capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=90,
    )  # fmt: skip


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.jsonl"
    path.write_bytes(orjson.dumps(EXAMPLES["fleet.telemetry.v1"]) + b"\n")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("produce", "fleet.telemetry.v1", "sample.jsonl"),
        ("consume", "fleet.telemetry.v1", "--timeout", "1"),
        ("topics", "apply"),
    ],
)
def test_an_unreachable_broker_is_one_clear_error(
    tmp_path: Path, sample: Path, args: tuple[str, ...]
) -> None:
    result = _carnival(tmp_path, *args, CARNIVAL_LOG_LEVEL="DEBUG")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    [error] = errors
    assert "127.0.0.1:" in error and "1.5 s" in error and "CARNIVAL_KAFKA_BOOTSTRAP" in error
    assert "Connection refused" in error  # the reason librdkafka saw
    assert "%3|" not in result.stderr and "FAIL|" not in result.stderr  # librdkafka's own terminal lines
    assert "Traceback" not in result.stderr
    # ... which are in the structured log instead, at debug level
    events = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    client = [e for e in events if e["event"] in ("kafka_client_log", "kafka_client_error")]
    assert client and {e["level"] for e in client} == {"debug"}
    assert any("Connection refused" in (e.get("message") or e.get("error") or "") for e in client)


@pytest.fixture
def cli(tmp_path: Path, sample: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The command in this process (click's runner), against a closed port."""
    from click.testing import CliRunner

    from carnival.cli import main
    from core.settings import get_settings

    monkeypatch.setenv("CARNIVAL_KAFKA_BOOTSTRAP", f"127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("CARNIVAL_KAFKA_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("CARNIVAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(main, list(args))
    get_settings.cache_clear()


@pytest.mark.parametrize("topic", DERIVED_TOPICS)
def test_derived_topics_are_refused_without_allow_derived(cli, topic: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("produce", topic, "sample.jsonl")
    assert result.exit_code == 2, result.output
    assert "derived topic" in result.output and "--allow-derived" in result.output
    assert "did not answer" not in result.output  # refused before anything connects


def test_allow_derived_goes_on_to_the_broker(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("produce", "alerts.v1", "sample.jsonl", "--allow-derived")
    assert result.exit_code == 1 and "did not answer within 1 s" in result.output


def test_the_derived_topics_are_every_topic_producers_do_not_publish() -> None:
    assert set(DERIVED_TOPICS) >= {
        "tasks.lifecycle.v1", "tasks.assignments.v1", "alerts.v1", "power.incidents.v1", "fleet.nodes.v1",
        "deadletter.v1",
    }  # fmt: skip
    assert not set(DERIVED_TOPICS) & {"fleet.telemetry.v1", "tasks.requests.v1", "tasks.status.v1",
                                      "emulator.actions.v1", "power.events.v1"}  # fmt: skip
