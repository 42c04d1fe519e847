"""A secured local cluster (`carnival stack up --secure`): TLS, SCRAM users and ACLs, made at start.

- **TLS**: a certificate authority and a broker certificate (SAN localhost and 127.0.0.1) made with the
  JDK's ``keytool``; clients verify the broker with ``<data_dir>/tls/ca.pem``.
- **Users**: one SCRAM-SHA-512 principal per role, each with a random password kept (mode 0600) in
  ``<data_dir>/secrets/kafka-users.json``; the credentials are written into the KRaft metadata when the
  storage is formatted, so they exist before the first client connects.
- **ACLs**: each processor may read its inputs, write its outputs and the dead-letter topic, and own its
  internal topics and consumer groups (prefix ``carnival-<name>``); ``producer`` may write the input
  topics only; ``fleet`` (the simulated cars and their emulator runtime) writes the inputs and reads
  assignments; ``admin`` is the operator (a super user, used by ``stack up`` and the CLI).

The controller listener stays on 127.0.0.1 with SASL PLAIN for the ``admin`` user only: KRaft
controllers cannot authenticate SCRAM users (their credentials live in the metadata they serve).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carnival.stack.errors import StackError, require_tool
from core.settings import CLICKHOUSE_SECRET_KEY, SECRETS_FILE, TLS_CA_FILE, Settings
from processors.groups import ALERT_ROUTER, APP_PREFIX, POWER, SCHEDULER, TELEMETRY_ROUTER
from streams.topics import (
    ALERTS_TOPIC,
    ASSIGNMENTS_TOPIC,
    DEADLETTER_TOPIC,
    INCIDENTS_TOPIC,
    INPUT_TOPICS,
    LIFECYCLE_TOPIC,
    NODES_TOPIC,
    SITE_POWER_STATE_TOPIC,
    SPILLOVER_TOPIC,
    TOPICS,
)

MECHANISM = "SCRAM-SHA-512"
CONTROLLER_MECHANISM = "PLAIN"
KEYSTORE = "broker.p12"
TRUSTSTORE = "truststore.p12"


@dataclass(frozen=True)
class Grant:
    """What one principal may do: read and write topics, own topics and groups by prefix."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()  # topics and consumer groups it creates and owns
    groups: tuple[str, ...] = ()  # exact consumer groups


# The scheduler's outputs; the power processor's; the sink reads every topic.
GRANTS: dict[str, Grant] = {
    "producer": Grant(write=INPUT_TOPICS),
    # The simulated fleet: its cars publish the inputs, and their emulator runtime takes assignments.
    "fleet": Grant(write=INPUT_TOPICS, read=(ASSIGNMENTS_TOPIC,), prefixes=(f"{APP_PREFIX}-simulator",)),
    "scheduler": Grant(
        read=(*SCHEDULER.topics, *TELEMETRY_ROUTER.topics),
        write=(
            NODES_TOPIC,
            ASSIGNMENTS_TOPIC,
            LIFECYCLE_TOPIC,
            SPILLOVER_TOPIC,
            ALERTS_TOPIC,
            DEADLETTER_TOPIC,
        ),
        prefixes=(f"{APP_PREFIX}-scheduler",),
    ),
    "power": Grant(
        read=POWER.topics,
        write=(INCIDENTS_TOPIC, SITE_POWER_STATE_TOPIC, ALERTS_TOPIC, DEADLETTER_TOPIC),
        prefixes=(f"{APP_PREFIX}-power",),
    ),
    "sink": Grant(read=tuple(TOPICS), write=(DEADLETTER_TOPIC,), prefixes=(f"{APP_PREFIX}-sink",)),
    "router": Grant(
        read=ALERT_ROUTER.topics,
        write=(DEADLETTER_TOPIC,),
        groups=(ALERT_ROUTER.group,),
        prefixes=(f"{APP_PREFIX}-alert",),
    ),  # fmt: skip
}
PRINCIPALS = ("admin", *GRANTS)
USERNAME_ENV = "CARNIVAL_KAFKA_SASL_USERNAME"


def principal_env(settings: Settings, principal: str) -> dict[str, str]:
    """The environment for a child that should connect to a secured local stack as ``principal`` (its
    own ACLs, not the operator's); nothing when the stack is not secured or a user was chosen."""
    if not settings.stack_secure or USERNAME_ENV in os.environ:
        return {}
    return {USERNAME_ENV: principal}


def tls_dir(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "tls"


def users(settings: Settings) -> dict[str, str]:
    """Every principal's password, made once per data dir (mode 0600), and the embedded ClickHouse user's
    (key ``CLICKHOUSE_SECRET_KEY``; not a Kafka principal)."""
    path = settings.data_dir.resolve() / SECRETS_FILE
    wanted = (*PRINCIPALS, CLICKHOUSE_SECRET_KEY)
    if path.exists():
        known: dict[str, str] = json.loads(path.read_text())
        if set(wanted) <= set(known):
            return known
    else:
        known = {}
    for principal in wanted:
        known.setdefault(principal, secrets.token_urlsafe(24))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(known, out)
    return known


def store_password(settings: Settings) -> str:
    """The keystores' password: one more secret of the data dir (never a client credential)."""
    return users(settings)["admin"]


def _keytool(*args: str) -> None:
    keytool = require_tool("keytool", "install a Java 17+ JDK or JRE (it ships keytool)")
    proc = subprocess.run([keytool, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"keytool {args[0]} failed: {proc.stdout}{proc.stderr}")


def ensure_tls(settings: Settings) -> Path:
    """Make the CA, the broker's keystore and the truststore once per data dir; return the CA file."""
    root = tls_dir(settings)
    ca_pem = settings.data_dir.resolve() / TLS_CA_FILE
    if (root / KEYSTORE).exists() and ca_pem.exists():
        return ca_pem
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    pw = store_password(settings)
    ca, broker = str(root / "ca.p12"), str(root / KEYSTORE)
    san = "SAN=dns:localhost,ip:127.0.0.1"
    common = ("-storetype", "PKCS12", "-storepass", pw, "-keypass", pw)
    _keytool("-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
             "-dname", "CN=Carnival local CA", "-ext", "bc:c", "-keystore", ca, *common)  # fmt: skip
    _keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", ca, "-storepass", pw, "-file", str(ca_pem))
    _keytool("-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "825",
             "-dname", "CN=localhost", "-ext", san, "-keystore", broker, *common)  # fmt: skip
    csr, crt = str(root / "broker.csr"), str(root / "broker.crt")
    _keytool("-certreq", "-alias", "broker", "-keystore", broker, "-storepass", pw, "-file", csr)
    _keytool("-gencert", "-alias", "ca", "-keystore", ca, "-storepass", pw, "-infile", csr, "-outfile", crt,
             "-rfc", "-ext", san, "-validity", "825")  # fmt: skip
    _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem), "-keystore", broker,
             "-storepass", pw)  # fmt: skip
    _keytool("-importcert", "-noprompt", "-alias", "broker", "-file", crt, "-keystore", broker,
             "-storepass", pw)  # fmt: skip
    _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem), "-keystore",
             str(root / TRUSTSTORE), "-storetype", "PKCS12", "-storepass", pw)  # fmt: skip
    return ca_pem


def _jaas_scram(user: str, password: str) -> str:
    module = "org.apache.kafka.common.security.scram.ScramLoginModule"
    return f'{module} required username="{user}" password="{password}";'


def broker_properties(settings: Settings, host: str, port: int, ctrl: int) -> dict[str, str]:
    """The listener, TLS, SASL and authorizer properties of one node of a secured cluster."""
    pw = users(settings)["admin"]
    root = tls_dir(settings)
    plain = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="admin" password="{pw}" user_admin="{pw}";'
    )
    return {
        "listeners": f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{ctrl}",
        "advertised.listeners": f"SASL_SSL://{host}:{port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "sasl.mechanism.controller.protocol": CONTROLLER_MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": _jaas_scram("admin", pw),
        "listener.name.controller.sasl.enabled.mechanisms": CONTROLLER_MECHANISM,
        "listener.name.controller.plain.sasl.jaas.config": plain,
        "ssl.keystore.location": str(root / KEYSTORE),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.password": store_password(settings),
        "ssl.key.password": store_password(settings),
        "ssl.truststore.location": str(root / TRUSTSTORE),
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.password": store_password(settings),
        "ssl.endpoint.identification.algorithm": "https",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:admin",
        "allow.everyone.if.no.acl.found": "false",
    }


def scram_format_args(settings: Settings) -> list[str]:
    """``kafka-storage format`` arguments that put every principal's SCRAM credential in the metadata."""
    args: list[str] = []
    passwords = users(settings)
    for user in PRINCIPALS:
        args += ["--add-scram", f"{MECHANISM}=[name={user},password={passwords[user]}]"]
    return args


def acl_bindings() -> list[Any]:
    """Every ACL of the secured cluster, from ``GRANTS``."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    def allow(principal: str, rtype: ResourceType, name: str, op: AclOperation,
              pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> AclBinding:  # fmt: skip
        return AclBinding(rtype, name, pattern, f"User:{principal}", "*", op, AclPermissionType.ALLOW)

    bindings: list[Any] = []
    for principal, grant in GRANTS.items():
        for topic in grant.read:
            bindings += [allow(principal, ResourceType.TOPIC, topic, AclOperation.READ),
                         allow(principal, ResourceType.TOPIC, topic, AclOperation.DESCRIBE)]  # fmt: skip
        for topic in grant.write:
            bindings += [allow(principal, ResourceType.TOPIC, topic, AclOperation.WRITE),
                         allow(principal, ResourceType.TOPIC, topic, AclOperation.DESCRIBE)]  # fmt: skip
        for prefix in grant.prefixes:
            bindings += [
                allow(principal, ResourceType.TOPIC, prefix, AclOperation.ALL, ResourcePatternType.PREFIXED),
                allow(principal, ResourceType.GROUP, prefix, AclOperation.ALL, ResourcePatternType.PREFIXED),
            ]
        for group in grant.groups:
            bindings.append(allow(principal, ResourceType.GROUP, group, AclOperation.ALL))
        if grant.read:  # ad-hoc groups of CLI-like consumers
            bindings.append(allow(principal, ResourceType.GROUP, f"{APP_PREFIX}-adhoc", AclOperation.READ,
                                  ResourcePatternType.PREFIXED))  # fmt: skip
        bindings.append(allow(principal, ResourceType.BROKER, "kafka-cluster", AclOperation.IDEMPOTENT_WRITE))
        bindings.append(allow(principal, ResourceType.BROKER, "kafka-cluster", AclOperation.DESCRIBE))
    unique = {(b.restype, b.name, b.resource_pattern_type, b.principal, b.operation): b for b in bindings}
    return list(unique.values())  # a topic both read and written is described once


def apply_users(settings: Settings, timeout_s: float = 30.0) -> None:
    """Upsert every principal's SCRAM credential (a principal added since the storage was formatted)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    from streams.kafka import make_admin

    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    passwords = users(settings)
    upserts: list[Any] = [UserScramCredentialUpsertion(user, info, passwords[user].encode())
               for user in PRINCIPALS]  # fmt: skip
    admin = make_admin(settings)  # held until every future is done: a collected client cancels them
    for user, fut in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).items():
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - one clear message
            raise StackError(f"could not set the SCRAM credential of {user}: {exc}") from exc


def apply_acls(settings: Settings, timeout_s: float = 30.0) -> int:
    """Create every ACL (idempotent: an existing binding is no change); return how many are in force."""
    from streams.kafka import make_admin

    admin = make_admin(settings)
    bindings = acl_bindings()
    for binding, fut in admin.create_acls(bindings, request_timeout=timeout_s).items():
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - one clear message
            raise StackError(f"could not create ACL {binding}: {exc}") from exc
    return len(bindings)
