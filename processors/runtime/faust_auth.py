"""Kafka security for the faust apps, derived from the same librdkafka configuration every confluent client
gets (``Settings.kafka.client_config()``, the ``CARNIVAL_KAFKA_EXTRA_CONFIG`` passthrough included), so
one set of settings secures confluent-kafka and faust/aiokafka alike.

faust hands ``broker_credentials`` to aiokafka's consumer, producer and topic-creating client as
``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``/``_password`` (PLAIN and SCRAM),
``sasl_oauth_token_provider`` (OAUTHBEARER), ``sasl_kerberos_service_name`` (GSSAPI) and ``ssl_context``.
Host-name checking, the CA, the client certificate and its key password live in the ``ssl.SSLContext``.
What faust cannot express raises ``ValueError`` here instead of connecting with weaker settings; other
``ssl.*`` / ``sasl.*`` keys of the passthrough that aiokafka has no equivalent for are logged as ignored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import faust
import structlog
from aiokafka.abc import AbstractTokenProvider

from core.settings import KafkaSettings

__all__ = ["OIDCTokenProvider", "broker_credentials", "ssl_context"]

log = structlog.get_logger(__name__)

_FALSE = {"false", "0", "no", "off"}
# librdkafka keys this module turns into faust/aiokafka settings; other ssl./sasl. keys are ignored by faust.
_UNDERSTOOD = {
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
    "ssl.ca.location", "ssl.ca.pem", "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
    "ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification", "ssl.cipher.suites",
    "sasl.oauthbearer.method", "sasl.oauthbearer.token.endpoint.url", "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.scope", "sasl.oauthbearer.extensions",
    "sasl.kerberos.service.name",
}  # fmt: skip
# Keys that would change who we are or what we trust, which aiokafka cannot honour: refuse, not ignore.
_REFUSED = ("ssl.certificate.pem", "ssl.key.pem", "ssl.keystore.location", "ssl.keystore.password",
            "ssl.crl.location", "ssl.engine.location", "ssl.providers")  # fmt: skip


def _get(conf: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = conf.get(key)
    return default if value is None else str(value)


def ssl_context(conf: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context of librdkafka's ``ssl.*`` settings: CA file or directory, client certificate and
    key (with its password), ``ssl.endpoint.identification.algorithm`` (https checks the host name,
    librdkafka's default) and ``enable.ssl.certificate.verification``."""
    ca = _get(conf, "ssl.ca.location")
    if ca and ca != "probe" and os.path.isdir(ca):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=ca)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca if ca != "probe" else None)
    if _get(conf, "ssl.ca.pem"):
        context.load_verify_locations(cadata=_get(conf, "ssl.ca.pem"))
    cert = _get(conf, "ssl.certificate.location")
    if cert:
        context.load_cert_chain(cert, _get(conf, "ssl.key.location"), _get(conf, "ssl.key.password"))
    elif _get(conf, "ssl.key.location"):
        raise ValueError("ssl.key.location needs ssl.certificate.location (the client certificate)")
    if _get(conf, "ssl.cipher.suites"):
        context.set_ciphers(str(conf["ssl.cipher.suites"]))  # both take OpenSSL's cipher-list syntax
    algorithm = (_get(conf, "ssl.endpoint.identification.algorithm", "https") or "").lower()
    context.check_hostname = algorithm == "https"
    if (_get(conf, "enable.ssl.certificate.verification", "true") or "").lower() in _FALSE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class OIDCTokenProvider(AbstractTokenProvider):
    """OAUTHBEARER tokens by the OIDC client-credentials grant, configured by librdkafka's own keys
    (``sasl.oauthbearer.method=oidc``, ``…token.endpoint.url``, ``…client.id``, ``…client.secret``,
    ``…scope``), so the confluent clients and faust share one token setup. A token is reused until
    30 s before it expires."""

    def __init__(self, endpoint: str, client_id: str, client_secret: str, scope: str | None = None,
                 extensions: dict[str, str] | None = None) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self._extensions = extensions or {}
        self._token: str | None = None
        self._expires = 0.0

    def __repr__(self) -> str:
        return f"<OIDCTokenProvider {self.endpoint} client_id={self.client_id}>"

    async def token(self) -> str:
        if self._token is None or time.time() >= self._expires - 30:
            token, self._expires = await asyncio.to_thread(self.fetch)
            self._token = token
            return token
        return self._token

    def extensions(self) -> dict[str, str]:
        return self._extensions

    def fetch(self) -> tuple[str, float]:
        """One token request: (access token, expiry as epoch seconds)."""
        form = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {})}
        basic = base64.b64encode(f"{self.client_id}:{self._client_secret}".encode()).decode()
        request = urllib.request.Request(
            self.endpoint,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        return str(body["access_token"]), time.time() + float(body.get("expires_in", 300))


def _oauth_provider(conf: Mapping[str, Any]) -> OIDCTokenProvider:
    if (_get(conf, "sasl.oauthbearer.method", "default") or "").lower() != "oidc":
        raise ValueError(
            "OAUTHBEARER for the faust processors needs sasl.oauthbearer.method=oidc with "
            "sasl.oauthbearer.token.endpoint.url/client.id/client.secret in CARNIVAL_KAFKA_EXTRA_CONFIG "
            "(aiokafka has no unsecured-JWT mode)"
        )
    missing = [k for k in ("token.endpoint.url", "client.id", "client.secret")
               if not _get(conf, f"sasl.oauthbearer.{k}")]  # fmt: skip
    if missing:
        raise ValueError(f"OAUTHBEARER oidc needs sasl.oauthbearer.{', sasl.oauthbearer.'.join(missing)}")
    pairs = (p.partition("=") for p in (_get(conf, "sasl.oauthbearer.extensions") or "").split(",") if p)
    return OIDCTokenProvider(
        str(conf["sasl.oauthbearer.token.endpoint.url"]),
        str(conf["sasl.oauthbearer.client.id"]),
        str(conf["sasl.oauthbearer.client.secret"]),
        _get(conf, "sasl.oauthbearer.scope"),
        {k.strip(): v.strip() for k, _, v in pairs},
    )


def broker_credentials(kafka: KafkaSettings) -> Any:
    """faust's ``broker_credentials`` for ``kafka`` (None for PLAINTEXT), from its librdkafka config."""
    conf = kafka.client_config()
    refused = [k for k in _REFUSED if k in conf]
    if refused:
        raise ValueError(f"faust/aiokafka cannot use {', '.join(refused)}: give PEM files (ssl.*.location)")
    ignored = sorted(k for k in conf if k.startswith(("ssl.", "sasl.")) and k not in _UNDERSTOOD)
    if ignored:
        log.warning("kafka_settings_ignored_by_faust", keys=ignored)
    protocol = (_get(conf, "security.protocol", "PLAINTEXT") or "").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(conf))
    if protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
        raise ValueError(f"unknown security.protocol {protocol!r}")
    context = ssl_context(conf) if protocol == "SASL_SSL" else None
    # librdkafka's default mechanism is GSSAPI; faust's would be PLAIN: follow librdkafka.
    mechanism = (_get(conf, "sasl.mechanism") or _get(conf, "sasl.mechanisms") or "GSSAPI").upper()
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        user, password = _get(conf, "sasl.username"), _get(conf, "sasl.password")
        return faust.SASLCredentials(
            username=user, password=password, ssl_context=context, mechanism=mechanism
        )
    if mechanism == "OAUTHBEARER":
        return faust.OAuthCredentials(oauth_cb=_oauth_provider(conf), ssl_context=context)
    if mechanism == "GSSAPI":
        service = _get(conf, "sasl.kerberos.service.name", "kafka") or "kafka"
        return faust.GSSAPICredentials(kerberos_service_name=service, ssl_context=context)
    raise ValueError(f"faust/aiokafka cannot use sasl.mechanism {mechanism!r}")
