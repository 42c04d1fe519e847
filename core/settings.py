"""One settings object, loaded once from ``CARNIVAL_*`` environment variables and passed down.

The top-level fields keep their flat names (``kafka_bootstrap`` is ``CARNIVAL_KAFKA_BOOTSTRAP``); the
views ``settings.kafka`` and ``settings.clickhouse`` group them per component and build the client
configurations, so every Kafka client (confluent, faust/aiokafka, the schema registry) gets the same
security settings. The nested groups ``scheduler``, ``power``, ``sink`` and ``alerts`` are read from
``CARNIVAL_<GROUP>_<FIELD>``. The scheduler's and the power detector's fields are declared by their
dataclasses in ``processors/`` (a higher layer): core keeps their raw values and processors parse and
validate them, so an unknown ``CARNIVAL_SCHEDULER_*`` / ``CARNIVAL_POWER_*`` name is an error there.

Secrets are ``SecretStr`` (masked in repr, str and dumps); ``public_dict()`` is what may be shown.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = [
    "ClickHouseSettings",
    "KafkaSettings",
    "ProcessorValues",
    "RouterSettings",
    "Settings",
    "SinkSettings",
    "get_settings",
    "group_env",
]

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
MASK = "**********"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
# librdkafka keys of the passthrough whose values are secrets (client secrets, key passwords, JAAS lines).
_SECRET_KEY = re.compile(r"password|secret|token|jaas|\.pem$|credential", re.IGNORECASE)

LibrdkafkaValue = str | int | float | bool


def _masked(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: MASK if _SECRET_KEY.search(k) else v for k, v in config.items()}


def _url_without_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", f":{MASK}@", 1)
    return parsed._replace(netloc=netloc).geturl()


# -- groups read from CARNIVAL_<GROUP>_<FIELD> --------------------------------------------------------
class ProcessorValues(BaseModel):
    """A processor's knobs as given: the JSON object of ``CARNIVAL_<P>_CONFIG`` and the raw string of each
    ``CARNIVAL_<P>_<FIELD>`` (keyed by lower-case field name). The processor's dataclass declares the
    fields; ``processors/`` parses and validates these values into it."""

    model_config = ConfigDict(frozen=True)

    config: dict[str, Any] = Field(default_factory=dict)
    values: dict[str, str] = Field(default_factory=dict)

    @field_validator("config", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object")
        return value


class SinkSettings(BaseModel):
    """The ClickHouse sink's knobs (``CARNIVAL_SINK_<FIELD>``)."""

    model_config = ConfigDict(frozen=True)

    group_id: str = Field(default="carnival-sink", description="consumer group")
    instance_id: str = Field(
        default="",
        description="static group membership (group.instance.id): a restarted worker takes its partitions "
        "back at once instead of waiting for the old member's session to expire; give each worker its own",
    )
    session_timeout_ms: int = Field(default=30_000, description="consumer group session timeout")
    batch_rows: int = Field(
        default=20_000,
        description="a topic's batch is inserted at this many rows; keep it far below "
        "min_insert_block_size_rows (1,048,449) so one insert is one part, all or nothing",
    )
    flush_interval_s: float = Field(default=1.0, description="... or when its oldest row waited this long")
    poll_batch: int = Field(default=5_000, description="messages taken from the consumer per call")
    backoff_initial_s: float = Field(default=0.2, description="first wait after a failed insert")
    backoff_max_s: float = Field(default=15.0, description="longest wait between insert retries")
    insert_timeout_s: float = Field(
        default=60.0, description="well below max.poll.interval.ms: a stuck insert cannot outlive membership"
    )
    position_timeout_s: float = Field(
        default=10.0, description="ClickHouse / committed-offset lookups at assignment"
    )
    shutdown_timeout_s: float = Field(
        default=15.0, description="how long a stopping sink keeps trying to write what it buffered"
    )
    lag_interval_s: float = Field(default=5.0, description="how often consumer lag is published")


class RouterSettings(BaseModel):
    """The alert router's knobs (``CARNIVAL_ALERT_<FIELD>``); ``carnival alerts route`` options win."""

    model_config = ConfigDict(frozen=True)

    webhooks: SecretStr = Field(
        default=SecretStr(""),
        description="receivers, comma or space separated URLs; prefix one with slack: for the Slack text "
        "shape (a secret: webhook URLs carry tokens)",
    )
    group_id: str = Field(default="carnival-alert-router", description="consumer group")
    dedup_window_s: float = Field(
        default=300.0, description="a repeated (fingerprint, status) within this is not sent again"
    )
    dedup_max_entries: int = Field(default=100_000, description="most (fingerprint, status) pairs remembered")
    max_in_flight: int = Field(default=10_000, description="consumption pauses past this many undelivered")
    timeout_s: float = Field(default=5.0, description="HTTP timeout per attempt")
    backoff_initial_s: float = Field(default=0.5, description="first wait before retrying a receiver")
    backoff_max_s: float = Field(default=30.0, description="longest wait between retries of a receiver")
    commit_interval_s: float = Field(default=0.5, description="how often delivered offsets are committed")
    drain_timeout_s: float = Field(
        default=5.0, description="how long a stopping router waits for deliveries in flight"
    )
    external_url: str = Field(default="", description="link sent as externalURL/generatorURL")


# Group field -> environment prefix, and the processor groups whose JSON form is <PREFIX>CONFIG.
GROUPS: dict[str, str] = {
    "scheduler": "CARNIVAL_SCHEDULER_",
    "power": "CARNIVAL_POWER_",
    "sink": "CARNIVAL_SINK_",
    "alerts": "CARNIVAL_ALERT_",
}
_RAW_GROUPS = {"scheduler", "power"}

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("carnival_environ", default=None)


def _environ() -> Mapping[str, str]:
    env = _ENVIRON.get()
    return os.environ if env is None else env


def _group_values(env: Mapping[str, str], group: str) -> dict[str, Any]:
    prefix = GROUPS[group]
    found = {var[len(prefix) :].lower(): raw for var, raw in env.items() if var.startswith(prefix)}
    if group not in _RAW_GROUPS:
        return found
    config = found.pop("config", None)
    return {**({"config": config} if config else {}), **({"values": found} if found else {})}


def group_env(group: str, values: Mapping[str, Any]) -> dict[str, str]:
    """``values`` of ``group`` as the ``CARNIVAL_<GROUP>_<FIELD>`` variables that set them in a child
    process (lists comma-separated, booleans true/false): the inverse of reading them."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list | tuple | set | frozenset):
            return ",".join(map(str, value))
        return str(value)

    return {f"{GROUPS[group]}{name.upper()}": text(value) for name, value in values.items()}


class _CarnivalEnv(EnvSettingsSource):
    """Today's variable names: ``CARNIVAL_<FIELD>`` for the flat fields, ``CARNIVAL_<GROUP>_<FIELD>``
    gathered into each group. Reads ``Settings.from_env``'s mapping when one is given."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _environ()
        return {k if self.case_sensitive else k.lower(): v for k, v in env.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in GROUPS:
            return None, field_name, False
        return super().get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        env = _environ()
        for group in GROUPS:
            values = _group_values(env, group)
            if values:
                data[group] = values
        return data


# -- views over the flat fields ------------------------------------------------------------------------
class KafkaSettings(BaseModel):
    """Connection and security of every Kafka client; built by ``Settings.kafka``."""

    model_config = ConfigDict(frozen=True)

    bootstrap: str
    security_protocol: str | None
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: SecretStr | None
    ssl_ca_location: str | None
    ssl_certificate_location: str | None
    ssl_key_location: str | None
    ssl_key_password: SecretStr | None
    ssl_endpoint_identification_algorithm: str | None
    extra_config: dict[str, LibrdkafkaValue] = Field(default_factory=dict, repr=False)

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def client_config(self) -> dict[str, LibrdkafkaValue]:
        """librdkafka settings shared by producers, consumers and the admin client (secrets in clear)."""
        conf: dict[str, LibrdkafkaValue] = {"bootstrap.servers": self.bootstrap}
        optional = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.endpoint.identification.algorithm": self.ssl_endpoint_identification_algorithm,
        }
        conf.update({k: v for k, v in optional.items() if v})
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        conf.update(self.extra_config)
        return conf

    def public_config(self) -> dict[str, LibrdkafkaValue]:
        """``client_config()`` with every secret masked: safe for logs and status lines."""
        return _masked(self.client_config())


class ClickHouseSettings(BaseModel):
    """Address, credentials and TLS of the ClickHouse HTTP clients; built by ``Settings.clickhouse``."""

    model_config = ConfigDict(frozen=True)

    url: str = Field(description="the URL with any password in it masked (the password is in ``password``)")
    database: str
    user: str
    password: SecretStr
    verify: bool
    ca_cert: str | None
    client_cert: str | None
    client_key: str | None

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.url)
        default = 8443 if url.scheme == "https" else 8123
        return url.hostname or "localhost", url.port or default

    @property
    def display_url(self) -> str:
        """The URL without its password: for logs, errors and status lines."""
        return self.url

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keywords of ``clickhouse_connect.get_client`` (TLS ones only for https)."""
        host, port = self.host_port
        kwargs: dict[str, Any] = {
            "host": host,
            "port": port,
            "interface": urlparse(self.url).scheme or "http",
            "username": self.user,
            "password": self.password.get_secret_value(),
        }
        if kwargs["interface"] == "https":
            kwargs["verify"] = self.verify
            optional = {"ca_cert": self.ca_cert, "client_cert": self.client_cert,
                        "client_cert_key": self.client_key}  # fmt: skip
            kwargs.update({k: v for k, v in optional.items() if v})
        return kwargs


# -- the settings -------------------------------------------------------------------------------------
class Settings(BaseSettings):
    """Every knob an operator turns. Defaults run a whole stack on one laptop."""

    model_config = SettingsConfigDict(env_prefix="CARNIVAL_", extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field(default="localhost:9092", description="bootstrap servers, comma separated")
    kafka_controller_port: int | None = Field(
        default=None, description="KRaft controller port of the local broker [broker port + 1]"
    )
    kafka_version: str = Field(default="4.1.1", description="Kafka release the local broker runs")
    kafka_security_protocol: str | None = Field(
        default=None, description=f"{', '.join(SECURITY_PROTOCOLS)} [PLAINTEXT]"
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None,
        description=f"{', '.join(SASL_MECHANISMS)}; OAUTHBEARER settings go in CARNIVAL_KAFKA_EXTRA_CONFIG",
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user (PLAIN, SCRAM)")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password (a secret)")
    kafka_ssl_ca_location: str | None = Field(
        default=None, description="CA certificate file (PEM) the brokers' certificates are checked with"
    )
    kafka_ssl_certificate_location: str | None = Field(default=None, description="client certificate (PEM)")
    kafka_ssl_key_location: str | None = Field(default=None, description="client private key (PEM)")
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="password of the client key (a secret)"
    )
    kafka_ssl_endpoint_identification_algorithm: Literal["https", "none"] | None = Field(
        default=None, description="https: check the broker's host name against its certificate [https]"
    )
    kafka_extra_config: dict[str, LibrdkafkaValue] = Field(
        default_factory=dict,
        repr=False,
        description="JSON object of further librdkafka settings for every confluent client, e.g. "
        '{"sasl.oauthbearer.method": "oidc", ...}; values of secret-looking keys are masked',
    )
    schema_registry_url: str | None = Field(
        default=None, description="Confluent schema registry; unset: single-object Avro encoding"
    )
    schema_registry_user: str | None = Field(default=None, description="registry basic-auth user")
    schema_registry_password: SecretStr | None = Field(
        default=None, description="registry basic-auth password (a secret)"
    )
    topic_partitions: int = Field(default=6, description="default partitions per topic")
    topic_replication: int = Field(default=1, description="replication factor (1 on a laptop)")

    # ClickHouse
    clickhouse_url: str = Field(default="http://localhost:8123", description="HTTP(S) URL of ClickHouse")
    clickhouse_native_port: int = Field(default=9000, description="native port of the embedded server")
    clickhouse_embedded: bool = Field(
        default=True, description="host the embedded chDB server when the URL points at localhost"
    )
    clickhouse_database: str = Field(default="carnival", description="database of the analyst tables")
    clickhouse_cluster: str | None = Field(
        default=None, description="cluster name: DDL uses ReplicatedMergeTree + Distributed"
    )
    clickhouse_user: str | None = Field(default=None, description="user [the URL's user, else default]")
    clickhouse_password: SecretStr | None = Field(
        default=None, description="password (a secret) [the URL's password, else empty]"
    )
    clickhouse_verify: bool = Field(default=True, description="check the server certificate (https)")
    clickhouse_ca_cert: str | None = Field(default=None, description="CA certificate file (https)")
    clickhouse_client_cert: str | None = Field(default=None, description="client certificate (mutual TLS)")
    clickhouse_client_key: str | None = Field(default=None, description="client private key (mutual TLS)")

    # Process
    data_dir: Path = Field(default=Path(".carnival"), description="local state: broker, ClickHouse, faust")
    cache_dir: Path | None = Field(default=None, description="downloaded Kafka jars [~/.cache/carnival]")
    metrics_port: int = Field(default=0, description="Prometheus port; 0 picks none")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field(default="auto", description="json, console or auto (console on a TTY)")

    # Components (CARNIVAL_<GROUP>_<FIELD>)
    scheduler: ProcessorValues = Field(default_factory=ProcessorValues)
    power: ProcessorValues = Field(default_factory=ProcessorValues)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    alerts: RouterSettings = Field(default_factory=RouterSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _CarnivalEnv(settings_cls), dotenv_settings, file_secret_settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **values: Any) -> Settings:
        """Settings from ``environ`` instead of ``os.environ`` (a child's environment, a test's)."""
        token = _ENVIRON.set(environ)
        try:
            return cls(**values)
        finally:
            _ENVIRON.reset(token)

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="after")
    @classmethod
    def _known_name(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        value = value.strip().upper()
        known = SECURITY_PROTOCOLS if info.field_name == "kafka_security_protocol" else SASL_MECHANISMS
        if value not in known:
            raise ValueError(f"must be one of {', '.join(known)}, got {value!r}")
        return value

    # -- component views ---------------------------------------------------------------------------------
    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap=self.kafka_bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_ca_location=self.kafka_ssl_ca_location,
            ssl_certificate_location=self.kafka_ssl_certificate_location,
            ssl_key_location=self.kafka_ssl_key_location,
            ssl_key_password=self.kafka_ssl_key_password,
            ssl_endpoint_identification_algorithm=self.kafka_ssl_endpoint_identification_algorithm,
            extra_config=self.kafka_extra_config,
        )

    @property
    def clickhouse(self) -> ClickHouseSettings:
        url = urlparse(self.clickhouse_url)
        password = self.clickhouse_password
        if password is None:
            password = SecretStr(unquote(url.password) if url.password else "")
        return ClickHouseSettings(
            url=_url_without_password(self.clickhouse_url),
            database=self.clickhouse_database,
            user=self.clickhouse_user or (unquote(url.username) if url.username else "default"),
            password=password,
            verify=self.clickhouse_verify,
            ca_cert=self.clickhouse_ca_cert,
            client_cert=self.clickhouse_client_cert,
            client_key=self.clickhouse_client_key,
        )

    def kafka_client_config(self) -> dict[str, LibrdkafkaValue]:
        """librdkafka settings shared by producers, consumers and the admin client."""
        return self.kafka.client_config()

    def schema_registry_config(self) -> dict[str, str]:
        """The schema registry client's configuration: URL, basic auth and (https) the Kafka TLS files."""
        if not self.schema_registry_url:
            raise ValueError("schema_registry_url is not set")
        conf = {"url": self.schema_registry_url}
        if self.schema_registry_user:
            password = self.schema_registry_password or SecretStr("")
            conf["basic.auth.user.info"] = f"{self.schema_registry_user}:{password.get_secret_value()}"
        if self.schema_registry_url.startswith("https"):
            key_password = self.kafka_ssl_key_password
            optional = {
                "ssl.ca.location": self.kafka_ssl_ca_location,
                "ssl.certificate.location": self.kafka_ssl_certificate_location,
                "ssl.key.location": self.kafka_ssl_key_location,
                "ssl.key.password": key_password.get_secret_value() if key_password else None,
            }
            conf.update({k: v for k, v in optional.items() if v})
        return conf

    # -- derived addresses -------------------------------------------------------------------------------
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
        return self.clickhouse.host_port

    @property
    def hosts_embedded_clickhouse(self) -> bool:
        return (
            self.clickhouse_embedded
            and urlparse(self.clickhouse_url).scheme == "http"
            and self.clickhouse_host_port[0] in LOCAL_HOSTS
        )

    # -- what may be shown -------------------------------------------------------------------------------
    def public_dict(self) -> dict[str, Any]:
        """Every setting with secrets masked (SecretStr, secret-looking passthrough keys, URL passwords)."""
        data = self.model_dump(mode="json")
        data["clickhouse_url"] = _url_without_password(self.clickhouse_url)
        if self.schema_registry_url:
            data["schema_registry_url"] = _url_without_password(self.schema_registry_url)
        data["kafka_extra_config"] = _masked(self.kafka_extra_config)
        return data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name in ("clickhouse_url", "schema_registry_url") and isinstance(value, str):
                value = _url_without_password(value)
            yield name, value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
