"""The whole pipeline on a secured stack (`carnival stack up --secure`): SASL_SSL with SCRAM users made
at start, a CA for clients, ACLs per processor, and a password on the embedded ClickHouse. The main job runs
on it with every processor connected as its own principal; a client without credentials and a principal
writing outside its ACLs are refused, by Kafka and by ClickHouse.

Its own stack (broker and embedded ClickHouse) on its own ports and data dir, beside the session's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from schemas.examples import EXAMPLES
from streams.topics import ALERTS_TOPIC, TELEMETRY_TOPIC
from tests.conftest import TEST_PORTS

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # minutes: `make cluster-test`

ROOT = Path(__file__).resolve().parents[2]
_BASE = int(TEST_PORTS["CARNIVAL_KAFKA_CONTROLLER_PORT"]) + 300  # apart from the session's stack
DEMO = ("demo", "--cars", "40", "--sites", "2", "--start", "2025-01-06T21:30:00Z", "--duration", "1h",
        "--speed", "240", "--seed", "7", "--dashboard-port", "-1")  # fmt: skip


def _cli(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carnival.cli", *args], input=stdin,
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def secure_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = {
        "CARNIVAL_KAFKA_BOOTSTRAP": f"localhost:{_BASE}",
        "CARNIVAL_KAFKA_CONTROLLER_PORT": str(_BASE + 1),
        "CARNIVAL_CLICKHOUSE_URL": f"http://localhost:{_BASE + 3}",
        "CARNIVAL_CLICKHOUSE_NATIVE_PORT": str(_BASE + 4),
        "CARNIVAL_DATA_DIR": str(tmp_path_factory.mktemp("secure")),
        "CARNIVAL_LOG_FORMAT": "json",
    }
    try:
        up = _cli(env, "stack", "up", "--secure")
        assert up.returncode == 0, up.stdout + up.stderr[-3000:]
        assert "security: SASL_SSL (SCRAM-SHA-512)" in up.stdout
        yield env
    finally:
        _cli(env, "stack", "down")


def _line(topic: str) -> str:
    return json.dumps(EXAMPLES[topic], default=str) + "\n"


def test_clients_find_the_ca_and_their_password_in_the_data_dir(secure_env: dict[str, str]) -> None:
    settings = Settings.from_env(secure_env)
    assert settings.stack_secure and settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_username == "admin" and settings.kafka_sasl_password is not None
    secrets = Path(secure_env["CARNIVAL_DATA_DIR"]) / "secrets" / "kafka-users.json"
    assert secrets.stat().st_mode & 0o077 == 0, "passwords readable by the owner only"
    assert settings.kafka_sasl_password.get_secret_value() not in repr(settings)


def test_the_main_job_runs_on_the_secured_stack(secure_env: dict[str, str]) -> None:
    result = _cli(secure_env, *DEMO, timeout=600)
    out = result.stdout
    verdicts = {name: verdict for verdict, name in re.findall(r"^\[(PASS|FAIL)\] ([^:]+):", out, re.M)}
    assert verdicts, out[-3000:] + result.stderr[-3000:]
    # Each processor did its part through its own principal: the power worker found the failovers and
    # the router delivered its alerts, the sink landed every request, the scheduler assigned work.
    for name in ("every injected failover and fault found", "every requested task reached ClickHouse",
                 "every FIRING alert reached the receiver"):  # fmt: skip
        assert verdicts.get(name) == "PASS", (name, out[-4000:])
    assigned = _cli(secure_env, "query", "SELECT count() FROM carnival.assignments", "--format", "jsonl")
    assert assigned.returncode == 0, assigned.stderr[-2000:]
    assert int(next(iter(json.loads(assigned.stdout.splitlines()[0]).values()))) > 0
    kafka_log = (Path(secure_env["CARNIVAL_DATA_DIR"]) / "logs" / "kafka.log").read_text(errors="replace")
    denied = {m for m in re.findall(r"Principal = User:(\w+) is Denied", kafka_log) if m != "producer"}
    assert not denied, f"processors refused by their ACLs: {denied}"


def test_a_client_without_credentials_is_refused(secure_env: dict[str, str]) -> None:
    plain = {**secure_env, "CARNIVAL_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    result = _cli(plain, "produce", TELEMETRY_TOPIC, "-", stdin=_line(TELEMETRY_TOPIC), timeout=120)
    assert result.returncode != 0
    assert "1 delivered" not in result.stdout + result.stderr


def test_a_wrong_password_is_refused(secure_env: dict[str, str]) -> None:
    wrong = {**secure_env, "CARNIVAL_KAFKA_SASL_USERNAME": "producer",
             "CARNIVAL_KAFKA_SASL_PASSWORD": "guess"}  # fmt: skip
    result = _cli(wrong, "produce", TELEMETRY_TOPIC, "-", stdin=_line(TELEMETRY_TOPIC), timeout=120)
    assert result.returncode != 0
    assert "1 delivered" not in result.stdout + result.stderr


def test_the_producer_principal_writes_inputs_but_not_derived_topics(secure_env: dict[str, str]) -> None:
    producer = {**secure_env, "CARNIVAL_KAFKA_SASL_USERNAME": "producer"}
    ok = _cli(producer, "produce", TELEMETRY_TOPIC, "-", stdin=_line(TELEMETRY_TOPIC))
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    assert "1 delivered" in ok.stdout + ok.stderr
    args = ["produce", ALERTS_TOPIC, "-"]
    if "--allow-derived" in _cli(secure_env, "produce", "--help").stdout:
        args.insert(1, "--allow-derived")  # past the CLI's own guard: the broker must refuse it too
    forged = _cli(producer, *args, stdin=_line(ALERTS_TOPIC))
    assert forged.returncode != 0
    assert "TOPIC_AUTHORIZATION_FAILED" in forged.stdout + forged.stderr


def _http(env: dict[str, str], sql: str, user: str | None = None, password: str = "") -> tuple[int, str]:
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(env["CARNIVAL_CLICKHOUSE_URL"] + "/", data=sql.encode(), method="POST")
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_clickhouse_has_a_password_and_clients_use_it(secure_env: dict[str, str]) -> None:
    settings = Settings.from_env(secure_env)
    assert settings.clickhouse_user == "carnival" and settings.clickhouse_password is not None
    password = settings.clickhouse_password.get_secret_value()
    assert password not in repr(settings) and password not in json.dumps(settings.public_dict(), default=str)
    users_file = Path(secure_env["CARNIVAL_DATA_DIR"]) / "clickhouse" / "users.xml"
    assert password not in users_file.read_text() and users_file.stat().st_mode & 0o077 == 0
    ok = _cli(secure_env, "query", "SELECT count() FROM carnival.telemetry")
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    assert password not in ok.stdout + ok.stderr  # never logged

    # Without credentials (the default user) or with a wrong password: no analyst table, read or write.
    status, body = _http(secure_env, "SELECT count() FROM carnival.telemetry")
    assert status != 200 and "ACCESS_DENIED" in body
    status, body = _http(secure_env, "INSERT INTO carnival.alerts (fingerprint) VALUES ('forged')")
    assert status != 200 and "ACCESS_DENIED" in body
    status, body = _http(secure_env, "SELECT 1", user="carnival", password="guess")
    assert status != 200 and "AUTHENTICATION_FAILED" in body
    status, body = _http(
        secure_env, "SELECT count() FROM carnival.telemetry", user="carnival", password=password
    )
    assert status == 200, body
