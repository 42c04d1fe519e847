"""`carnival stack` and `carnival topics apply` against the real broker the session fixture started."""

from __future__ import annotations

import socket

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from carnival.stack import kafka_broker
from carnival.stack.errors import StackError
from core.settings import Settings
from streams.topics import TOPICS, apply_topics

pytestmark = pytest.mark.integration


def test_status_reports_both_components_answering(run_cli, settings: Settings) -> None:
    result = run_cli("stack", "status")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "kafka:      running" in out and "answering" in out
    assert "clickhouse: running" in out


def test_up_twice_is_harmless(run_cli) -> None:
    result = run_cli("stack", "up")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "kafka: already running" in out
    assert "clickhouse: already running" in out
    assert "0 created" in out
    assert "schema: up to date" in out


def test_starting_a_running_broker_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(StackError, match="already running"):
        kafka_broker.start_broker(settings)


def test_port_in_use_is_a_clear_error(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        other = Settings(data_dir=tmp_path, kafka_bootstrap=f"localhost:{port}")
        with pytest.raises(StackError, match=f"Port {port} .* already in use"):
            kafka_broker.start_broker(other)


def test_stale_pid_file_is_cleaned(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "broker.pid"
    pid_file.write_text("999999")
    assert kafka_broker.read_pid(pid_file) is None
    assert not pid_file.exists()


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match="`java` was not found"):
        kafka_broker.require_tool("java", "install a Java 17+ runtime")


def test_topics_exist_with_spec_configs_and_apply_is_idempotent(settings: Settings) -> None:
    admin = AdminClient(settings.kafka_client_config())
    meta = admin.list_topics(timeout=10).topics
    for name in TOPICS:
        assert name in meta, name
        assert len(meta[name].partitions) == settings.topic_partitions

    resource = ConfigResource(ConfigResource.Type.TOPIC, "fleet.nodes.v1")
    conf = admin.describe_configs([resource])[resource].result()
    assert conf["cleanup.policy"].value == "compact"

    # Drift a config by hand: apply puts it back, then a second apply changes nothing.
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    drift = ConfigResource(
        ConfigResource.Type.TOPIC,
        "alerts.v1",
        incremental_configs=[
            ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([drift])[drift].result()
    first = apply_topics(settings)
    assert first.reconfigured == ["alerts.v1"] and not first.created
    second = apply_topics(settings)
    assert not (second.created or second.reconfigured or second.repartitioned)
    assert sorted(second.unchanged) == sorted(TOPICS)
