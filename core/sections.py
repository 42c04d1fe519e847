"""The per-component parts of ``core.settings.Settings``: the groups read from ``CARNIVAL_<GROUP>_<FIELD>``
(processor raw values, the sink, the alert router) and the Kafka / ClickHouse views with the client
configurations they build. Secrets are ``SecretStr``; the ``public_*``/``display_*`` forms mask them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
MASK = "**********"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
# librdkafka keys of the passthrough whose values are secrets (client secrets, key passwords, JAAS lines).
_SECRET_KEY = re.compile(r"password|secret|token|jaas|\.pem$|credential", re.IGNORECASE)

LibrdkafkaValue = str | int | float | bool


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: MASK if _SECRET_KEY.search(k) else v for k, v in config.items()}


def url_without_password(url: str) -> str:
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
    pipelined_inserts: bool = Field(
        default=True,
        description="a topic's insert runs on a thread of its own while the sink reads and batches the next "
        "records (one insert in flight per topic, in order; offsets committed once it landed, as always)",
    )


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
    max_in_flight: int = Field(
        default=10_000,
        description="per receiver: its consumer pauses past this many unfinished records (the others go on)",
    )
    timeout_s: float = Field(default=5.0, description="HTTP timeout per attempt")
    backoff_initial_s: float = Field(default=0.5, description="first wait before retrying a receiver")
    backoff_max_s: float = Field(default=30.0, description="longest wait between retries of a receiver")
    backoff_multiplier: float = Field(
        default=2.0, ge=1.0, description="each failed attempt multiplies the wait (up to backoff_max_s)"
    )
    rejected_body_max_bytes: int = Field(
        default=2048, ge=0, description="how much of a rejecting (4xx) receiver's answer a dead letter keeps"
    )
    deadletter_retry_s: float = Field(
        default=1.0, description="wait before producing again a dead letter the broker did not acknowledge"
    )
    broker_timeout_s: float = Field(
        default=30.0, gt=0, description="how long `carnival alerts route` tries to reach the broker at start"
    )
    commit_interval_s: float = Field(default=0.5, description="how often delivered offsets are committed")
    drain_timeout_s: float = Field(
        default=5.0, description="how long a stopping router waits for deliveries in flight"
    )
    external_url: str = Field(default="", description="link sent as externalURL/generatorURL")


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
        return masked(self.client_config())


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
