"""One settings object, loaded once from ``CARNIVAL_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class Settings(BaseSettings):
    """Every knob an operator turns. Defaults run a whole stack on one laptop."""

    model_config = SettingsConfigDict(env_prefix="CARNIVAL_", extra="ignore")

    kafka_bootstrap: str = "localhost:9092"
    kafka_controller_port: int | None = Field(
        default=None, description="KRaft controller port of the local broker [broker port + 1]"
    )
    kafka_version: str = "4.1.1"
    clickhouse_url: str = "http://localhost:8123"
    clickhouse_native_port: int = 9000
    clickhouse_embedded: bool = Field(
        default=True, description="host the embedded chDB server when the URL points at localhost"
    )
    clickhouse_database: str = "carnival"
    clickhouse_cluster: str | None = Field(
        default=None, description="cluster name: DDL uses ReplicatedMergeTree + Distributed"
    )
    data_dir: Path = Path(".carnival")
    schema_registry_url: str | None = None

    # Kafka security, passed straight through to the clients.
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_ssl_certificate_location: str | None = None
    kafka_ssl_key_location: str | None = None

    topic_partitions: int = Field(default=6, description="default partitions per topic")
    topic_replication: int = Field(default=1, description="replication factor (1 on a laptop)")
    metrics_port: int = Field(default=0, description="Prometheus port; 0 picks none")
    log_level: str = "INFO"
    log_format: str = Field(default="auto", description="json, console or auto (console on a TTY)")

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        first = self.kafka_bootstrap.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return (host or "localhost"), int(port or 9092)

    @property
    def controller_port(self) -> int:
        return self.kafka_controller_port or self.kafka_host_port[1] + 1

    @property
    def clickhouse_host_port(self) -> tuple[str, int]:
        url = urlparse(self.clickhouse_url)
        default = 8443 if url.scheme == "https" else 8123
        return url.hostname or "localhost", url.port or default

    @property
    def hosts_embedded_clickhouse(self) -> bool:
        return (
            self.clickhouse_embedded
            and urlparse(self.clickhouse_url).scheme == "http"
            and self.clickhouse_host_port[0] in LOCAL_HOSTS
        )

    def kafka_client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings shared by producers, consumers and the admin client."""
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.kafka_bootstrap}
        optional = {
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
        }
        conf.update({k: v for k, v in optional.items() if v})
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return conf


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
