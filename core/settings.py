"""One settings object, loaded once from ``CARNIVAL_*`` environment variables and passed down.

The top-level fields keep their flat names (``kafka_bootstrap`` is ``CARNIVAL_KAFKA_BOOTSTRAP``); the
views ``settings.kafka`` and ``settings.clickhouse`` group them per component and build the client
configurations, so every Kafka client (confluent, faust/aiokafka, the schema registry) gets the same
security settings. The nested groups ``scheduler``, ``power``, ``sink`` and ``alerts`` are read from
``CARNIVAL_<GROUP>_<FIELD>``. The scheduler's and the power detector's fields are declared by their
dataclasses in ``processors/`` (a higher layer): core keeps their raw values and processors parse and
validate them, so an unknown ``CARNIVAL_SCHEDULER_*`` / ``CARNIVAL_POWER_*`` name is an error there.

Secrets are ``SecretStr`` (masked in repr, str and dumps); ``public_dict()`` is what may be shown.
The component models live in ``core.sections`` and are re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from core.sections import (
    LOCAL_HOSTS,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    ClickHouseSettings,
    KafkaSettings,
    LibrdkafkaValue,
    ProcessorValues,
    RouterSettings,
    SinkSettings,
    masked,
    url_without_password,
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


STACK_SHAPE_FILE = "stack.json"
SECRETS_FILE = "secrets/kafka-users.json"  # a secured local stack's SCRAM passwords, per principal
# The embedded ClickHouse of a secured local stack: its user, whose password is kept in SECRETS_FILE too.
CLICKHOUSE_STACK_USER = "carnival"
CLICKHOUSE_SECRET_KEY = "clickhouse"
TLS_CA_FILE = "tls/ca.pem"  # its certificate authority, for clients


def _remembered(data_dir: Path) -> dict[str, Any]:
    try:
        shape = json.loads((data_dir / STACK_SHAPE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return shape if isinstance(shape, dict) else {}


def remembered_brokers(data_dir: Path) -> int | None:
    """How many brokers the local stack in ``data_dir`` was started with (``stack up`` writes it), so every
    command run on that data dir sees the same cluster without repeating CARNIVAL_STACK_BROKERS."""
    try:
        return int(_remembered(data_dir)["brokers"])
    except (KeyError, TypeError, ValueError):
        return None


def remembered_secure(data_dir: Path) -> bool:
    return _remembered(data_dir).get("secure") is True


def local_password(data_dir: Path, principal: str) -> str | None:
    try:
        found = json.loads((data_dir / SECRETS_FILE).read_text()).get(principal)
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


# -- the settings -------------------------------------------------------------------------------------
class Settings(BaseSettings):
    """Every knob an operator turns. Defaults run a whole stack on one laptop."""

    model_config = SettingsConfigDict(env_prefix="CARNIVAL_", extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field(default="localhost:9092", description="bootstrap servers, comma separated")
    kafka_connect_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="seconds a command waits for the Kafka cluster to answer before it exits with an error",
    )
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
    topic_replication: int = Field(
        default=1, ge=1, description="replication factor [1; min(3, stack_brokers) on a local cluster]"
    )
    topic_min_insync_replicas: int | None = Field(
        default=None, ge=1, description="min.insync.replicas of every topic [2 at replication 3+, else 1]"
    )
    stack_secure: bool = Field(
        default=False,
        description="the local stack's Kafka listens SASL_SSL (SCRAM-SHA-512, a CA made at start, ACLs per "
        "processor); remembered in the data dir, where clients find the CA and their principal's password",
    )
    stack_brokers: int = Field(
        default=1,
        ge=1,
        le=9,
        description="brokers of the local stack (`stack up --brokers N`); more than one: a KRaft quorum of "
        "all of them, each broker's port 2 above the last (9092, 9094, 9096) unless the bootstrap lists them",
    )

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
    clickhouse_connect_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="how long `carnival query`, `carnival migrate` and a starting sink wait for ClickHouse "
        "to answer before exiting with an error",
    )

    # Process
    data_dir: Path = Field(default=Path(".carnival"), description="local state: broker, ClickHouse, faust")
    cache_dir: Path | None = Field(default=None, description="downloaded Kafka jars [~/.cache/carnival]")
    metrics_port: int = Field(default=0, description="Prometheus port; 0 picks none")
    worker_replica: int = Field(
        default=0,
        ge=0,
        description="which replica of its processor this process is (`carnival worker --replicas N` sets "
        "it): its own faust state directory on a shared data dir",
    )
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

    @model_validator(mode="after")
    def _local_cluster(self) -> Settings:
        """A local stack of several brokers: clients bootstrap from all of them (one down must not stop a
        new client), and topics are replicated unless the operator chose a replication factor."""
        if "stack_brokers" not in self.model_fields_set:
            self.stack_brokers = remembered_brokers(self.data_dir) or self.stack_brokers
        if "stack_secure" not in self.model_fields_set:
            self.stack_secure = remembered_secure(self.data_dir)
        if self.stack_secure and "kafka_security_protocol" not in self.model_fields_set:
            self._use_local_credentials()
        if self.stack_secure and self.hosts_embedded_clickhouse:
            self._use_local_clickhouse_user()
        if self.stack_brokers > 1:
            if len(self.kafka_bootstrap.split(",")) < self.stack_brokers:
                self.kafka_bootstrap = ",".join(f"{host}:{port}" for _, host, port, _ in self.local_brokers())
            if "topic_replication" not in self.model_fields_set:
                self.topic_replication = min(3, self.stack_brokers)
        return self

    def _use_local_credentials(self) -> None:
        """Clients of a secured local stack: SASL_SSL with SCRAM, the stack's CA, and the password of the
        chosen principal (CARNIVAL_KAFKA_SASL_USERNAME, else the operator's ``admin``) from the data dir."""
        self.kafka_security_protocol = "SASL_SSL"
        self.kafka_sasl_mechanism = self.kafka_sasl_mechanism or "SCRAM-SHA-512"
        self.kafka_ssl_ca_location = self.kafka_ssl_ca_location or str(self.data_dir.resolve() / TLS_CA_FILE)
        self.kafka_sasl_username = self.kafka_sasl_username or "admin"
        if self.kafka_sasl_password is None:
            found = local_password(self.data_dir.resolve(), self.kafka_sasl_username)
            self.kafka_sasl_password = SecretStr(found) if found is not None else None

    def _use_local_clickhouse_user(self) -> None:
        """Clients of a secured local stack's embedded ClickHouse: its user and password from the data dir,
        unless the operator chose credentials (settings or the URL)."""
        url = urlparse(self.clickhouse_url)
        if self.clickhouse_user or self.clickhouse_password is not None or url.username:
            return
        found = local_password(self.data_dir.resolve(), CLICKHOUSE_SECRET_KEY)
        if found is not None:
            self.clickhouse_user = CLICKHOUSE_STACK_USER
            self.clickhouse_password = SecretStr(found)

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
            url=url_without_password(self.clickhouse_url),
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
    def min_insync_replicas(self) -> int:
        if self.topic_min_insync_replicas is not None:
            return min(self.topic_min_insync_replicas, self.topic_replication)
        return 2 if self.topic_replication >= 3 else 1

    def local_brokers(self) -> list[tuple[int, str, int, int]]:
        """(node id, host, broker port, controller port) of each broker of the local stack: the listed
        bootstrap endpoints in order when there are enough, else ports 2 apart from the first."""
        endpoints = [e.strip() for e in self.kafka_bootstrap.split(",") if e.strip()]
        host, port = self.kafka_host_port
        brokers = []
        for i in range(self.stack_brokers):
            if len(endpoints) >= self.stack_brokers:
                h, _, p = endpoints[i].rpartition(":")
                brokers.append((i + 1, h or "localhost", int(p), self.controller_port + 2 * i))
            else:
                brokers.append((i + 1, host, port + 2 * i, self.controller_port + 2 * i))
        return brokers

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
        data["clickhouse_url"] = url_without_password(self.clickhouse_url)
        if self.schema_registry_url:
            data["schema_registry_url"] = url_without_password(self.schema_registry_url)
        data["kafka_extra_config"] = masked(self.kafka_extra_config)
        return data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name in ("clickhouse_url", "schema_registry_url") and isinstance(value, str):
                value = url_without_password(value)
            yield name, value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
