"""The one settings object: today's CARNIVAL_* names keep working, the component configs are built from
it, and no secret shows in a repr, a str, a public dump or a `carnival stack status` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings, get_settings, group_env
from processors.alert_router.router import RouterConfig
from processors.power.config import PowerConfig, PowerKnobs
from processors.power.runtime import power_config, power_knobs
from processors.scheduler.config import SchedulerConfig
from processors.scheduler.wiring_runtime import WorkerKnobs, scheduler_config, worker_knobs
from sinks.config import SinkConfig

SECRETS = ("kafka-pass", "key-pass", "ch-pass", "url-pass", "sr-pass", "oidc-secret", "hooks-token")
SECRET_ENV = {
    "CARNIVAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "CARNIVAL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "CARNIVAL_KAFKA_SASL_USERNAME": "carnival",
    "CARNIVAL_KAFKA_SASL_PASSWORD": "kafka-pass",
    "CARNIVAL_KAFKA_SSL_KEY_PASSWORD": "key-pass",
    "CARNIVAL_KAFKA_EXTRA_CONFIG": json.dumps({"sasl.oauthbearer.client.secret": "oidc-secret",
                                               "linger.ms": 7}),  # fmt: skip
    "CARNIVAL_CLICKHOUSE_URL": "http://carnival:url-pass@localhost:1",
    "CARNIVAL_CLICKHOUSE_PASSWORD": "ch-pass",
    "CARNIVAL_SCHEMA_REGISTRY_URL": "https://registry:8081",
    "CARNIVAL_SCHEMA_REGISTRY_USER": "sr",
    "CARNIVAL_SCHEMA_REGISTRY_PASSWORD": "sr-pass",
    "CARNIVAL_ALERT_WEBHOOKS": "slack:https://hooks.example/hooks-token",
}


def test_todays_flat_names_still_work(tmp_path: Path) -> None:
    s = Settings.from_env({
        "CARNIVAL_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
        "CARNIVAL_KAFKA_CONTROLLER_PORT": "9999",
        "CARNIVAL_CLICKHOUSE_URL": "https://ch.example:8443",
        "CARNIVAL_CLICKHOUSE_NATIVE_PORT": "9440",
        "CARNIVAL_CLICKHOUSE_EMBEDDED": "false",
        "CARNIVAL_CLICKHOUSE_CLUSTER": "c1",
        "CARNIVAL_DATA_DIR": str(tmp_path),
        "CARNIVAL_TOPIC_PARTITIONS": "12",
        "CARNIVAL_TOPIC_REPLICATION": "3",
        "CARNIVAL_METRICS_PORT": "9100",
        "CARNIVAL_LOG_LEVEL": "DEBUG",
        "CARNIVAL_KAFKA_SSL_CA_LOCATION": "/ca.pem",
    })  # fmt: skip
    assert (s.kafka_bootstrap, s.controller_port) == ("k1:9092,k2:9092", 9999)
    assert s.kafka_host_port == ("k1", 9092)
    assert (s.clickhouse_host_port, s.clickhouse_native_port, s.hosts_embedded_clickhouse) == (
        ("ch.example", 8443), 9440, False)  # fmt: skip
    assert (s.clickhouse_cluster, s.data_dir) == ("c1", tmp_path)
    assert (s.topic_partitions, s.topic_replication) == (12, 3)
    assert (s.metrics_port, s.log_level) == (9100, "DEBUG")
    assert s.kafka_client_config() == {"bootstrap.servers": "k1:9092,k2:9092", "ssl.ca.location": "/ca.pem"}
    assert s.kafka.bootstrap == s.kafka_bootstrap and s.clickhouse.url == s.clickhouse_url


def test_keyword_construction_and_copies_keep_working() -> None:
    s = Settings(kafka_bootstrap="x:1", clickhouse_url="http://127.0.0.1:5")
    assert s.kafka.client_config() == {"bootstrap.servers": "x:1"}
    copy = s.model_copy(update={"clickhouse_database": "other"})
    assert copy.clickhouse.database == "other" and s.clickhouse.database == "carnival"
    assert isinstance(get_settings(), Settings) and get_settings() is get_settings()


def test_unknown_security_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="SASL_SSL"):
        Settings(kafka_security_protocol="SASL_TLS")
    with pytest.raises(ValidationError, match="SCRAM-SHA-512"):
        Settings(kafka_sasl_mechanism="SCRAM-SHA-1")
    assert Settings(kafka_security_protocol="sasl_ssl").kafka_security_protocol == "SASL_SSL"


def test_scheduler_config_and_knobs_from_the_settings() -> None:
    s = Settings.from_env({
        "CARNIVAL_SCHEDULER_CONFIG": '{"lease_s": 60, "claim_timeout_s": 1}',
        "CARNIVAL_SCHEDULER_CLAIM_TIMEOUT_S": "5",  # the per-field variable wins over the JSON
        "CARNIVAL_SCHEDULER_POOLS": "us-west, us-east",
        "CARNIVAL_SCHEDULER_HW_BEST_FIT": "off",
        "CARNIVAL_SCHEDULER_TICK_S": "0.5",
    })  # fmt: skip
    c = scheduler_config(s)
    assert (c.lease_s, c.claim_timeout_s, c.pools, c.hw_best_fit) == (60, 5.0, ("us-west", "us-east"), False)
    assert worker_knobs(s) == WorkerKnobs(tick_s=0.5)
    assert scheduler_config(Settings.from_env({})) == SchedulerConfig()
    with pytest.raises(ValueError, match="unknown scheduler setting CARNIVAL_SCHEDULER_LEASE$"):
        scheduler_config(Settings.from_env({"CARNIVAL_SCHEDULER_LEASE": "5"}))
    with pytest.raises(TypeError, match="unknown scheduler settings"):
        scheduler_config(Settings.from_env({"CARNIVAL_SCHEDULER_CONFIG": '{"lease": 5}'}))
    with pytest.raises(ValidationError, match="JSON object"):
        Settings.from_env({"CARNIVAL_SCHEDULER_CONFIG": "[1]"})


def test_power_config_and_knobs_from_the_settings() -> None:
    s = Settings.from_env({
        "CARNIVAL_POWER_CONFIG": '{"silent_after_s": 30, "gap_hold_s": 5}',
        "CARNIVAL_POWER_GAP_HOLD_S": "7",
        "CARNIVAL_POWER_FAST_RELEASE": "no",
        "CARNIVAL_POWER_TICK_S": "0.25",
        "CARNIVAL_POWER_CHECKPOINT_EVENTS": "100",
    })  # fmt: skip
    c = power_config(s)
    assert (c.silent_after_s, c.gap_hold_s, c.fast_release) == (30, 7.0, False)
    assert power_knobs(s) == PowerKnobs(tick_s=0.25, checkpoint_events=100)
    assert power_config(Settings.from_env({})) == PowerConfig()
    with pytest.raises(ValueError, match="unknown power detector setting CARNIVAL_POWER_SILENT$"):
        power_knobs(Settings.from_env({"CARNIVAL_POWER_SILENT": "1"}))
    with pytest.raises(ValueError, match="must be a number"):
        power_config(Settings.from_env({"CARNIVAL_POWER_GAP_HOLD_S": "soon"}))


def test_settings_of_the_faust_power_worker_are_accepted_with_a_warning() -> None:
    """An operator's environment from before the power worker left faust must not stop it."""
    from structlog.testing import capture_logs

    old = Settings.from_env({"CARNIVAL_POWER_COMMIT_EVERY": "500", "CARNIVAL_POWER_BATCH_WITHIN_S": "0.01"})
    with capture_logs() as logs:
        assert power_knobs(old) == PowerKnobs()
    assert sorted(e["setting"] for e in logs if e["event"] == "setting_retired") == [
        "CARNIVAL_POWER_BATCH_WITHIN_S",
        "CARNIVAL_POWER_COMMIT_EVERY",
    ]


def test_sink_and_alert_router_configs_from_the_settings() -> None:
    s = Settings.from_env({
        "CARNIVAL_SINK_BATCH_ROWS": "500",
        "CARNIVAL_SINK_GROUP_ID": "g1",
        "CARNIVAL_ALERT_DEDUP_WINDOW_S": "60",
        "CARNIVAL_ALERT_WEBHOOKS": "http://a",
    })  # fmt: skip
    sink = SinkConfig.from_settings(s, group_id="override")
    assert (sink.batch_rows, sink.group_id, sink.flush_interval_s) == (500, "override", 1.0)
    router = RouterConfig.from_settings(s, timeout_s=2.0)
    assert (router.dedup_window_s, router.timeout_s, router.topic) == (60.0, 2.0, "alerts.v1")
    assert s.alerts.webhooks.get_secret_value() == "http://a"
    assert SinkConfig() == SinkConfig.from_settings(Settings.from_env({}))


def test_secrets_never_in_repr_str_or_public_dump() -> None:
    s = Settings.from_env(SECRET_ENV)
    shown = [repr(s), str(s), json.dumps(s.public_dict()), repr(s.kafka), str(s.kafka), repr(s.clickhouse),
             json.dumps(s.kafka.public_config()), s.clickhouse.display_url, repr(s.alerts)]  # fmt: skip
    for text in shown:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:200])
    # ... while the clients get them in clear.
    assert s.kafka_client_config()["sasl.password"] == "kafka-pass"
    assert s.kafka_client_config()["sasl.oauthbearer.client.secret"] == "oidc-secret"
    assert s.clickhouse.client_kwargs()["password"] == "ch-pass"
    assert s.schema_registry_config()["basic.auth.user.info"] == "sr:sr-pass"
    masked = {"sasl.oauthbearer.client.secret": "**********", "linger.ms": 7}
    assert s.public_dict()["kafka_extra_config"] == masked


def test_stack_status_shows_no_secret(tmp_path: Path) -> None:
    from carnival.stack.lifecycle import stack_status

    s = Settings.from_env({**SECRET_ENV, "CARNIVAL_KAFKA_BOOTSTRAP": "localhost:1"}, data_dir=tmp_path)
    healthy, lines = stack_status(s)
    text = "\n".join(lines)
    assert not healthy and "clickhouse" in text and "carnival:**********@localhost:1" in text
    for secret in SECRETS:
        assert secret not in text


def test_clickhouse_credentials_and_tls() -> None:
    s = Settings(clickhouse_url="https://ch.example:8443", clickhouse_user="analyst",
                 clickhouse_password="pw", clickhouse_verify=False, clickhouse_ca_cert="/ca.pem",
                 clickhouse_client_cert="/c.pem", clickhouse_client_key="/c.key")  # fmt: skip
    assert s.clickhouse.client_kwargs() == {
        "host": "ch.example", "port": 8443, "interface": "https", "username": "analyst", "password": "pw",
        "verify": False, "ca_cert": "/ca.pem", "client_cert": "/c.pem", "client_cert_key": "/c.key",
    }  # fmt: skip
    from_url = Settings(clickhouse_url="http://u%40x:p%3Aw@localhost:8123").clickhouse.client_kwargs()
    assert (from_url["username"], from_url["password"], from_url["interface"]) == ("u@x", "p:w", "http")
    assert "verify" not in from_url  # TLS settings only for https
    default = Settings(clickhouse_url="http://localhost:8123").clickhouse
    assert (default.user, default.password.get_secret_value()) == ("default", "")


def test_group_env_is_read_back_as_the_same_values() -> None:
    wanted = {"pools": ["us-west", "us-east"], "hw_best_fit": False, "lease_s": 60.0, "tick_s": 0.5}
    env = group_env("scheduler", wanted)
    assert env["CARNIVAL_SCHEDULER_POOLS"] == "us-west,us-east"
    assert env["CARNIVAL_SCHEDULER_HW_BEST_FIT"] == "false"
    s = Settings.from_env(env)
    c = scheduler_config(s)
    assert (c.pools, c.hw_best_fit, c.lease_s) == (("us-west", "us-east"), False, 60.0)
    assert worker_knobs(s).tick_s == 0.5


# -- a local cluster of several brokers --------------------------------------------------------------------


def test_a_local_cluster_bootstraps_from_every_broker_and_replicates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Settings.from_env({"CARNIVAL_KAFKA_BOOTSTRAP": "localhost:19092", "CARNIVAL_STACK_BROKERS": "3",
                           "CARNIVAL_DATA_DIR": str(tmp_path)})  # fmt: skip
    assert s.kafka_bootstrap == "localhost:19092,localhost:19094,localhost:19096"
    assert s.local_brokers() == [
        (1, "localhost", 19092, 19093), (2, "localhost", 19094, 19095), (3, "localhost", 19096, 19097)
    ]  # fmt: skip
    assert (s.topic_replication, s.min_insync_replicas) == (3, 2)


def test_an_explicit_replication_factor_wins_over_the_cluster_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Settings.from_env({"CARNIVAL_STACK_BROKERS": "3", "CARNIVAL_TOPIC_REPLICATION": "2",
                           "CARNIVAL_DATA_DIR": str(tmp_path)})  # fmt: skip
    assert (s.topic_replication, s.min_insync_replicas) == (2, 1)
    assert Settings.from_env({"CARNIVAL_DATA_DIR": str(tmp_path)}).min_insync_replicas == 1


def test_listed_bootstrap_endpoints_are_the_brokers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Settings.from_env({"CARNIVAL_KAFKA_BOOTSTRAP": "localhost:9092,localhost:9192",
                           "CARNIVAL_STACK_BROKERS": "2", "CARNIVAL_DATA_DIR": str(tmp_path)})  # fmt: skip
    assert [(port, ctrl) for _, _, port, ctrl in s.local_brokers()] == [(9092, 9093), (9192, 9095)]


def test_the_data_dir_remembers_how_many_brokers_its_stack_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "stack.json").write_text('{"brokers": 3}')
    s = Settings.from_env({"CARNIVAL_DATA_DIR": str(tmp_path)})
    assert (s.stack_brokers, s.topic_replication) == (3, 3)
    explicit = Settings.from_env({"CARNIVAL_DATA_DIR": str(tmp_path), "CARNIVAL_STACK_BROKERS": "1"})
    assert explicit.stack_brokers == 1
    (tmp_path / "stack.json").write_text("not json")
    assert Settings.from_env({"CARNIVAL_DATA_DIR": str(tmp_path)}).stack_brokers == 1
