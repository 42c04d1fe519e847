"""Every Kafka client is built from the same security settings: for SASL_SSL + SCRAM-SHA-512 with a CA
file, OAUTHBEARER (OIDC passthrough) and the librdkafka passthrough, the exact configuration the
confluent producer/consumer/admin, the schema registry client and faust's aiokafka clients receive.
No broker: the clients are built (librdkafka and aiokafka validate their configuration) but never used."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import faust
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from core.settings import Settings
from processors.runtime.app import create_app
from processors.runtime.faust_auth import OIDCTokenProvider
from streams.kafka import CLIENT_LOGGING, PRODUCER_DEFAULTS, admin_config, consumer_config, producer_config
from streams.serde import serde_from_settings

TLS = Path(__file__).parent / "data" / "tls"
CA, CLIENT_CERT, CLIENT_KEY = str(TLS / "ca.pem"), str(TLS / "client.pem"), str(TLS / "client.key")
BOOTSTRAP = "127.0.0.1:9,127.0.0.2:9"  # nothing listens: the clients are only built

SCRAM_ENV = {
    "CARNIVAL_KAFKA_BOOTSTRAP": BOOTSTRAP,
    "CARNIVAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "CARNIVAL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "CARNIVAL_KAFKA_SASL_USERNAME": "carnival",
    "CARNIVAL_KAFKA_SASL_PASSWORD": "scram-secret",
    "CARNIVAL_KAFKA_SSL_CA_LOCATION": CA,
    "CARNIVAL_SCHEMA_REGISTRY_URL": "https://registry.example:8081",
    "CARNIVAL_SCHEMA_REGISTRY_USER": "sr-user",
    "CARNIVAL_SCHEMA_REGISTRY_PASSWORD": "sr-secret",
}
SCRAM_LIBRDKAFKA = {
    "bootstrap.servers": BOOTSTRAP,
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "carnival",
    "sasl.password": "scram-secret",
    "ssl.ca.location": CA,
}
CONSUMER_DEFAULTS = {"enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "enable.partition.eof": False, "fetch.wait.max.ms": 100}  # fmt: skip


def _settings(env: dict[str, str], tmp_path: Path) -> Settings:
    return Settings.from_env(env, data_dir=tmp_path)


def _aiokafka_clients(app: faust.App) -> dict[str, Any]:
    """The aiokafka producer and worker consumer faust builds for ``app`` (not started), closed again."""

    async def build() -> dict[str, Any]:
        producer = app.producer._new_producer()
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return {"producer": producer.client, "consumer": consumer._client}
        finally:
            await producer.stop()
            await consumer.stop()

    return asyncio.run(build())


def _ca_subjects(context: ssl.SSLContext) -> list[str]:
    return [dict(rdn[0] for rdn in c["subject"])["commonName"] for c in context.get_ca_certs()]


def _build_confluent_clients(settings: Settings) -> None:
    """librdkafka rejects unknown keys and unusable files at construction: these must build."""
    Producer(producer_config(settings, **{"log_level": 0})).flush(0)
    consumer = Consumer(consumer_config(settings, "security-test", **{"log_level": 0}))
    consumer.close()
    AdminClient(admin_config(settings, **{"log_level": 0}))


# -- SASL_SSL + SCRAM-SHA-512 + CA file -------------------------------------------------------------------
def test_scram_over_ssl_reaches_every_confluent_client(tmp_path: Path) -> None:
    settings = _settings(SCRAM_ENV, tmp_path)
    assert producer_config(settings) == {**CLIENT_LOGGING, **SCRAM_LIBRDKAFKA, **PRODUCER_DEFAULTS}
    assert consumer_config(settings, "g") == {
        **CLIENT_LOGGING,
        **SCRAM_LIBRDKAFKA,
        "group.id": "g",
        **CONSUMER_DEFAULTS,
    }
    assert admin_config(settings) == {**CLIENT_LOGGING, **SCRAM_LIBRDKAFKA}
    assert settings.kafka_client_config() == SCRAM_LIBRDKAFKA
    _build_confluent_clients(settings)


def test_scram_over_ssl_reaches_the_schema_registry_client(tmp_path: Path) -> None:
    settings = _settings(SCRAM_ENV, tmp_path)
    assert settings.schema_registry_config() == {
        "url": "https://registry.example:8081",
        "basic.auth.user.info": "sr-user:sr-secret",
        "ssl.ca.location": CA,
    }
    rest = serde_from_settings(settings).registry._rest_client
    assert rest.auth == ("sr-user", "sr-secret")
    assert _ca_subjects(rest.verify) == ["carnival-test-ca"]


def test_scram_over_ssl_reaches_faust_and_its_aiokafka_clients(tmp_path: Path) -> None:
    app = create_app("security-test", _settings(SCRAM_ENV, tmp_path))
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (creds.username, creds.password) == ("carnival", "scram-secret")
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    context = auth.pop("ssl_context")
    assert auth == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_plain_username": "carnival", "sasl_plain_password": "scram-secret"}  # fmt: skip
    assert _ca_subjects(context) == ["carnival-test-ca"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    for name, client in _aiokafka_clients(app).items():
        got = (client._security_protocol, client._sasl_mechanism, client._sasl_plain_username,
               client._sasl_plain_password, client._ssl_context, client._bootstrap_servers)  # fmt: skip
        assert got == ("SASL_SSL", "SCRAM-SHA-512", "carnival", "scram-secret", context,
                       ["127.0.0.1:9", "127.0.0.2:9"]), name  # fmt: skip


# -- OAUTHBEARER passthrough ---------------------------------------------------------------------------
class _TokenEndpoint(BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, list[str]]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).requests.append((self.headers["Authorization"], urllib.parse.parse_qs(body)))
        payload = json.dumps({"access_token": "jwt-1", "token_type": "bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def token_url() -> Iterator[str]:
    _TokenEndpoint.requests = []
    server = HTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


def _oauth_env(token_url: str) -> dict[str, str]:
    extra = {
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "carnival-client",
        "sasl.oauthbearer.client.secret": "oidc-secret",
        "sasl.oauthbearer.token.endpoint.url": token_url,
        "sasl.oauthbearer.scope": "kafka",
        "sasl.oauthbearer.extensions": "logicalCluster=lkc-1,identityPoolId=pool-2",
    }
    return {
        "CARNIVAL_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "CARNIVAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CARNIVAL_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "CARNIVAL_KAFKA_SSL_CA_LOCATION": CA,
        "CARNIVAL_KAFKA_EXTRA_CONFIG": json.dumps(extra),
    }


def test_oauthbearer_passes_through_to_confluent_and_faust(tmp_path: Path, token_url: str) -> None:
    settings = _settings(_oauth_env(token_url), tmp_path)
    expected = {
        "bootstrap.servers": BOOTSTRAP,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "OAUTHBEARER",
        "ssl.ca.location": CA,
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "carnival-client",
        "sasl.oauthbearer.client.secret": "oidc-secret",
        "sasl.oauthbearer.token.endpoint.url": token_url,
        "sasl.oauthbearer.scope": "kafka",
        "sasl.oauthbearer.extensions": "logicalCluster=lkc-1,identityPoolId=pool-2",
    }
    assert producer_config(settings) == {**CLIENT_LOGGING, **PRODUCER_DEFAULTS, **expected}
    assert consumer_config(settings, "g") == {
        **CLIENT_LOGGING,
        **expected,
        "group.id": "g",
        **CONSUMER_DEFAULTS,
    }
    assert admin_config(settings) == {**CLIENT_LOGGING, **expected}

    app = create_app("security-test", settings)
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.OAuthCredentials) and creds.protocol.value == "SASL_SSL"
    auth = credentials_to_aiokafka_auth(creds, app.conf.ssl_context)
    provider = auth["sasl_oauth_token_provider"]
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    assert isinstance(provider, OIDCTokenProvider)
    assert _ca_subjects(auth["ssl_context"]) == ["carnival-test-ca"]
    for client in _aiokafka_clients(app).values():
        assert (client._sasl_mechanism, client._sasl_oauth_token_provider) == ("OAUTHBEARER", provider)

    # The provider speaks the client-credentials grant librdkafka's oidc method speaks, and reuses its token.
    assert asyncio.run(provider.token()) == "jwt-1" and asyncio.run(provider.token()) == "jwt-1"
    [(authorization, form)] = _TokenEndpoint.requests
    assert authorization == "Basic " + base64.b64encode(b"carnival-client:oidc-secret").decode()
    assert form == {"grant_type": ["client_credentials"], "scope": ["kafka"]}
    assert "oidc-secret" not in repr(provider) + repr(creds)
    assert provider.extensions() == {"logicalCluster": "lkc-1", "identityPoolId": "pool-2"}


def test_oauthbearer_without_oidc_is_refused_for_faust(tmp_path: Path) -> None:
    env = {**_oauth_env("http://unused"), "CARNIVAL_KAFKA_EXTRA_CONFIG": "{}"}
    with pytest.raises(ValueError, match="sasl.oauthbearer.method=oidc"):
        create_app("security-test", _settings(env, tmp_path))


# -- the librdkafka passthrough --------------------------------------------------------------------------
def test_extra_config_reaches_every_client_and_wins_over_defaults(tmp_path: Path) -> None:
    extra = {"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "none",
             "client.rack": "rack-1", "linger.ms": 50}  # fmt: skip
    env = {"CARNIVAL_KAFKA_BOOTSTRAP": BOOTSTRAP, "CARNIVAL_KAFKA_SSL_CA_LOCATION": CA,
           "CARNIVAL_KAFKA_EXTRA_CONFIG": json.dumps(extra)}  # fmt: skip
    settings = _settings(env, tmp_path)
    base = {"bootstrap.servers": BOOTSTRAP, "ssl.ca.location": CA, **extra}
    assert admin_config(settings) == {**CLIENT_LOGGING, **base}
    assert producer_config(settings) == {
        **CLIENT_LOGGING,
        **PRODUCER_DEFAULTS,
        **base,
    }  # linger.ms 50, not 20
    assert producer_config(settings, **{"linger.ms": 5})["linger.ms"] == 5  # what the code asks for wins
    assert consumer_config(settings, "g") == {**CLIENT_LOGGING, **base, "group.id": "g", **CONSUMER_DEFAULTS}
    _build_confluent_clients(settings)

    app = create_app("security-test", settings)
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds, app.conf.ssl_context)
    assert auth["security_protocol"] == "SSL"
    assert not auth["ssl_context"].check_hostname  # endpoint identification "none"
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the certificate is still checked


# -- client certificates -----------------------------------------------------------------------------
def test_client_certificate_with_key_password(tmp_path: Path) -> None:
    env = {
        "CARNIVAL_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "CARNIVAL_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CARNIVAL_KAFKA_SSL_CA_LOCATION": CA,
        "CARNIVAL_KAFKA_SSL_CERTIFICATE_LOCATION": CLIENT_CERT,
        "CARNIVAL_KAFKA_SSL_KEY_LOCATION": CLIENT_KEY,
        "CARNIVAL_KAFKA_SSL_KEY_PASSWORD": "keypass",
        "CARNIVAL_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
    }
    settings = _settings(env, tmp_path)
    assert admin_config(settings) == {
        **CLIENT_LOGGING,
        "bootstrap.servers": BOOTSTRAP,
        "security.protocol": "SSL",
        "ssl.ca.location": CA,
        "ssl.certificate.location": CLIENT_CERT,
        "ssl.key.location": CLIENT_KEY,
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.key.password": "keypass",
    }
    _build_confluent_clients(settings)  # librdkafka decrypts the key with the password
    app = create_app("security-test", settings)
    context = app.conf.broker_credentials.context
    assert context.check_hostname and _ca_subjects(context) == ["carnival-test-ca"]
    wrong = _settings({**env, "CARNIVAL_KAFKA_SSL_KEY_PASSWORD": "wrong"}, tmp_path)
    with pytest.raises(ssl.SSLError):  # the password is what opened the key for faust too
        create_app("security-test", wrong)
    with pytest.raises(KafkaException, match="ssl.key.location failed"):
        AdminClient(admin_config(wrong, **{"log_level": 0}))


def test_what_faust_cannot_express_is_refused_not_ignored(tmp_path: Path) -> None:
    env = {"CARNIVAL_KAFKA_SECURITY_PROTOCOL": "SSL",
           "CARNIVAL_KAFKA_EXTRA_CONFIG": json.dumps({"ssl.keystore.location": "/client.p12"})}  # fmt: skip
    with pytest.raises(ValueError, match="cannot use ssl.keystore.location"):
        create_app("security-test", _settings(env, tmp_path))


def test_cipher_suites_reach_the_faust_ssl_context(tmp_path: Path) -> None:
    ciphers = json.dumps({"ssl.cipher.suites": "ECDHE-RSA-AES256-GCM-SHA384"})
    env = {"CARNIVAL_KAFKA_SECURITY_PROTOCOL": "SSL", "CARNIVAL_KAFKA_SSL_CA_LOCATION": CA,
           "CARNIVAL_KAFKA_EXTRA_CONFIG": ciphers}  # fmt: skip
    context = create_app("security-test", _settings(env, tmp_path)).conf.broker_credentials.context
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-RSA-AES256-GCM-SHA384"]


def test_plaintext_gives_faust_no_credentials(tmp_path: Path) -> None:
    app = create_app("security-test", _settings({"CARNIVAL_KAFKA_BOOTSTRAP": BOOTSTRAP}, tmp_path))
    assert app.conf.broker_credentials is None
    assert credentials_to_aiokafka_auth(None, app.conf.ssl_context) == {"security_protocol": "PLAINTEXT"}
