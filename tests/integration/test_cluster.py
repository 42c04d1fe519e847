"""A local cluster of three brokers (`carnival stack up --brokers 3`): replicated topics that keep taking
acks=all writes while one broker is down, and a status that shows which broker and which partitions lag.

Its own cluster on its own ports and data dir, beside the session's single broker; ClickHouse is the
session's, used as an external server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource

from carnival.stack import kafka_broker
from carnival.stack.lifecycle import remember_shape, stack_status
from core.settings import Settings
from streams.kafka import make_admin, producer_config
from streams.topics import TELEMETRY_TOPIC, apply_topics
from tests.conftest import TEST_PORTS

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # minutes: `make cluster-test`

ROOT = Path(__file__).resolve().parents[2]
_FIRST_PORT = int(TEST_PORTS["CARNIVAL_KAFKA_CONTROLLER_PORT"]) + 200  # apart from the session's broker


@pytest.fixture(scope="module")
def cluster_env(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = {
        "CARNIVAL_KAFKA_BOOTSTRAP": f"localhost:{_FIRST_PORT}",
        "CARNIVAL_KAFKA_CONTROLLER_PORT": str(_FIRST_PORT + 1),
        # the session's ClickHouse, as an external server: `stack up` only checks its schema
        "CARNIVAL_CLICKHOUSE_URL": TEST_PORTS["CARNIVAL_CLICKHOUSE_URL"],
        "CARNIVAL_CLICKHOUSE_EMBEDDED": "false",
        "CARNIVAL_DATA_DIR": str(tmp_path_factory.mktemp("cluster")),
        "CARNIVAL_LOG_FORMAT": "json",
    }
    settings = Settings.from_env(env, stack_brokers=3)
    try:
        remember_shape(settings)  # what `stack up --brokers 3` does first
        kafka_broker.start_broker(settings)
        apply_topics(settings)
        yield env
    finally:
        kafka_broker.stop_broker(settings)


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)  # the broker count comes from the data dir once the stack is up


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carnival.cli", *args],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_topics_are_replicated_three_times_with_two_in_sync_required(cluster_env: dict[str, str]) -> None:
    settings = _settings(cluster_env)
    admin = make_admin(settings)
    meta = admin.list_topics(timeout=10).topics[TELEMETRY_TOPIC]
    assert {len(p.replicas) for p in meta.partitions.values()} == {3}
    leaders = {p.leader for p in meta.partitions.values()}
    assert len(leaders) == 3, f"partition leaders spread over all brokers, got {leaders}"
    resource = ConfigResource(ConfigResource.Type.TOPIC, TELEMETRY_TOPIC)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["min.insync.replicas"].value == "2"


def test_a_broker_down_keeps_acks_all_writes_and_status_shows_it(cluster_env: dict[str, str]) -> None:
    settings = _settings(cluster_env)
    assert settings.stack_brokers == 3 and settings.topic_replication == 3
    topic = f"cluster-test-{uuid.uuid4().hex[:8]}"
    admin = make_admin(settings)
    from confluent_kafka.admin import NewTopic

    admin.create_topics([NewTopic(topic, 3, 3, config={"min.insync.replicas": "2"})])[topic].result(
        timeout=30
    )

    assert kafka_broker.kill_broker(settings, 2)
    producer = Producer(producer_config(settings))  # acks=all, idempotent: the project's defaults
    failures: list[object] = []
    for i in range(300):
        producer.produce(topic, f"v{i}".encode(), key=str(i).encode(),
                         on_delivery=lambda err, _msg: failures.append(err) if err else None)  # fmt: skip
    assert producer.flush(60) == 0
    assert failures == [], "acks=all writes must succeed with 2 of 3 replicas in sync"

    status = _cli(cluster_env, "stack", "status")
    assert status.returncode == 1, status.stdout  # not healthy while a broker is down
    assert "kafka 2:    stopped" in status.stdout
    assert "under-replicated partitions" in status.stdout
    assert "0 under-replicated" not in status.stdout

    up = _cli(cluster_env, "stack", "up")
    assert up.returncode == 0, up.stderr[-2000:]
    assert "kafka: node 2 started" in up.stdout
    deadline = time.monotonic() + 120
    while kafka_broker.under_replicated(settings) and time.monotonic() < deadline:
        time.sleep(1)
    healthy, lines = stack_status(settings)
    assert any("0 under-replicated partitions" in line for line in lines), lines

    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"g-{topic}",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 300 and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            seen.add(msg.value())
    consumer.close()
    assert len(seen) == 300, "every record written while broker 2 was down is readable"


def test_a_cluster_data_dir_refuses_to_shrink(cluster_env: dict[str, str]) -> None:
    result = _cli(cluster_env, "stack", "up", "--brokers", "1")
    assert result.returncode != 0
    assert "holds a 3-broker cluster" in result.stderr + result.stdout
