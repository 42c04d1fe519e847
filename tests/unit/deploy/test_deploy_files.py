"""The deployment files are checked, not just written: every Kubernetes manifest in deploy/k8s validates
against its schema (core kinds: the Kubernetes OpenAPI schemas bundled by kubernetes-validate; custom
resources: the CRD schemas vendored in schemas/, strict like ``kubectl apply``'s field validation),
deploy/compose.yaml validates against the Compose specification's schema, and their content agrees with
the code: the topics are ``streams.topics.TOPICS``, the users' ACLs are what ``carnival stack up --secure``
grants, every ``CARNIVAL_*`` variable is a real setting, every worker has probes, resources and a
PodDisruptionBudget. Broken copies are rejected, so the validation can fail.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from carnival.config_table import rows
from carnival.stack.security import GRANTS, acl_bindings
from core.settings import Settings
from processors.registry import PROCESSORS
from streams.topics import TOPICS

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSION = "1.37"

CRD_SCHEMAS = {
    ("kafka.strimzi.io/v1", "Kafka"): "strimzi-kafka-v1.json",
    ("kafka.strimzi.io/v1", "KafkaNodePool"): "strimzi-kafkanodepool-v1.json",
    ("kafka.strimzi.io/v1", "KafkaTopic"): "strimzi-kafkatopic-v1.json",
    ("kafka.strimzi.io/v1", "KafkaUser"): "strimzi-kafkauser-v1.json",
    ("clickhouse.altinity.com/v1", "ClickHouseInstallation"): "altinity-clickhouseinstallation-v1.json",
    ("clickhouse-keeper.altinity.com/v1", "ClickHouseKeeperInstallation"):
        "altinity-clickhousekeeperinstallation-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-servicemonitor-v1.json",
}  # fmt: skip
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
WORKER_COMMANDS = {
    ("carnival", "worker", "scheduler"),
    ("carnival", "worker", "power"),
    ("carnival", "worker", "sink"),
    ("carnival", "alerts", "route"),
}


# ------------------------------------------------------------------------------------------ loading
def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def manifests() -> tuple[dict[str, Any], ...]:
    return tuple(doc for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def config_map() -> dict[str, str]:
    (cm,) = [c for c in of_kind("ConfigMap") if c["metadata"]["name"] == "carnival-env"]
    return dict(cm["data"])


def strict(schema: Any) -> Any:
    """An object schema with ``properties`` and no ``additionalProperties`` / preserve-unknown-fields
    gets ``additionalProperties: false``: the API server's strict field validation (kubectl's default)
    refuses unknown fields that plain JSON Schema would let through."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = strict(json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text()))
    return jsonschema.Draft7Validator(schema)


def validate_manifest(doc: dict[str, Any]) -> None:
    """Raise if ``doc`` is not a valid object of its kind."""
    name = doc.get("metadata", {}).get("name", "")
    if not DNS_SUBDOMAIN.match(name):
        raise ValueError(f"{doc.get('kind')}: metadata.name {name!r} is not a DNS subdomain")
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@functools.cache
def compose_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((SCHEMAS / "compose-spec.json").read_text()))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


# -------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_validates_against_its_schema(doc: dict[str, Any]) -> None:
    validate_manifest(doc)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())


def test_the_manifests_hold_every_piece_of_the_deployment() -> None:
    kinds = {doc["kind"] for doc in manifests()}
    assert kinds >= {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ClickHouseInstallation",
                     "ClickHouseKeeperInstallation", "Deployment", "PodDisruptionBudget", "ServiceMonitor",
                     "ConfigMap", "Job"}  # fmt: skip
    (chi,) = of_kind("ClickHouseInstallation")
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    assert cluster["layout"]["shardsCount"] == 2
    assert cluster["name"] == config_map()["CARNIVAL_CLICKHOUSE_CLUSTER"]


def test_compose_file_validates_against_the_compose_schema() -> None:
    compose_validator().validate(compose())


BROKEN = {  # case: (kind, how to break a copy, what the validator must say)
    "Deployment without spec.selector": (
        "Deployment",
        lambda d: d["spec"].pop("selector"),
        "'selector' is a required property",
    ),
    "Deployment with a misspelt container field": (
        "Deployment",
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),
        "'livenesProbe' was unexpected",
    ),
    "PodDisruptionBudget with a string selector": (
        "PodDisruptionBudget",
        lambda d: d["spec"].update(selector="app=carnival"),
        "is not of type 'object'",
    ),
    "KafkaTopic with partitions: six": (
        "KafkaTopic",
        lambda d: d["spec"].update(partitions="six"),
        "'six' is not of type 'integer'",
    ),
    "KafkaTopic with an unknown spec field": (
        "KafkaTopic",
        lambda d: d["spec"].update(partition=6),
        "'partition' was unexpected",
    ),
    "KafkaUser with an unknown ACL operation": (
        "KafkaUser",
        lambda d: d["spec"]["authorization"]["acls"][0].update(operations=["Reed"]),
        "'Reed' is not one of",
    ),
    "ClickHouseInstallation with a string shard count": (
        "ClickHouseInstallation",
        lambda d: d["spec"]["configuration"]["clusters"][0]["layout"].update(shardsCount="two"),
        "'two' is not of type 'integer'",
    ),
    "ServiceMonitor endpoint with a numeric port name": (
        "ServiceMonitor",
        lambda d: d["spec"]["endpoints"][0].update(port=9400),
        "is not of type 'string'",
    ),
    "Kafka without listeners": (
        "Kafka",
        lambda d: d["spec"]["kafka"].pop("listeners"),
        "'listeners' is a required property",
    ),
    "KafkaTopic named like no DNS subdomain": (
        "KafkaTopic",
        lambda d: d["metadata"].update(name="Fleet_Telemetry"),
        "not a DNS subdomain",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_manifest_is_rejected(case: str) -> None:
    kind, breaks, message = BROKEN[case]
    doc = copy.deepcopy(of_kind(kind)[0])
    validate_manifest(copy.deepcopy(doc))  # the original is fine ...
    breaks(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError, ValueError)) as exc:
        validate_manifest(doc)  # ... the broken copy is not
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "breaks",
    [
        lambda c: c["services"]["kafka"].update(restart_policy="always"),
        lambda c: c["services"]["worker"].update(depends_on="setup: healthy"),
        lambda c: c.update(service={}),
    ],
    ids=["unknown service key", "depends_on as a string", "unknown top-level key"],
)
def test_a_broken_compose_file_is_rejected(breaks: Any) -> None:
    doc = compose()
    breaks(doc)
    with pytest.raises(jsonschema.ValidationError):
        compose_validator().validate(doc)


# ------------------------------------------------------------------------- agreement with the code
def deployment_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod gets from the ConfigMap (and nothing from this machine's environment)."""
    for name in [n for n in os.environ if n.startswith("CARNIVAL_")]:
        monkeypatch.delenv(name)
    for name, value in config_map().items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_kafka_topics_are_the_topic_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names, partitions, replication, retention and compaction as ``carnival topics apply`` makes them
    with the deployment's settings: nothing missing, nothing extra, nothing different."""
    settings = deployment_settings(monkeypatch)
    durability = {"min.insync.replicas": str(settings.min_insync_replicas)}
    found = {}
    for topic in of_kind("KafkaTopic"):
        name = topic["spec"].get("topicName", topic["metadata"]["name"])
        found[name] = (
            topic["spec"]["partitions"],
            topic["spec"]["replicas"],
            {k: str(v) for k, v in topic["spec"]["config"].items()},
        )
    expected = {
        name: (spec.partitions or settings.topic_partitions, settings.topic_replication,
               {**spec.config(), **durability})
        for name, spec in TOPICS.items()
    }  # fmt: skip
    assert found == expected
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] == "carnival" for t in of_kind("KafkaTopic"))


STRIMZI_RESOURCE = {"topic": "TOPIC", "group": "GROUP", "cluster": "BROKER"}
STRIMZI_PATTERN = {"literal": "LITERAL", "prefix": "PREFIXED"}


def test_kafka_users_have_exactly_the_acls_of_the_local_secured_stack() -> None:
    """One KafkaUser per principal of ``GRANTS``; its ACLs are ``acl_bindings()`` (what ``carnival stack
    up --secure`` creates), binding for binding."""
    users = of_kind("KafkaUser")
    assert sorted(u["metadata"]["name"] for u in users) == sorted(GRANTS)
    found = set()
    for user in users:
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        for acl in user["spec"]["authorization"]["acls"]:
            assert acl.get("type", "allow") == "allow" and acl.get("host", "*") == "*"
            res = acl["resource"]
            rtype = STRIMZI_RESOURCE[res["type"]]
            name = res.get("name", "kafka-cluster")
            pattern = STRIMZI_PATTERN[res.get("patternType", "literal")]
            for op in acl["operations"]:
                op_name = re.sub(r"(?<!^)(?=[A-Z])", "_", op).upper()  # IdempotentWrite -> IDEMPOTENT_WRITE
                found.add((user["metadata"]["name"], rtype, name, pattern, op_name))
    expected = {
        (b.principal.removeprefix("User:"), b.restype.name, b.name, b.resource_pattern_type.name,
         b.operation.name)
        for b in acl_bindings()
    }  # fmt: skip
    assert found == expected


KNOWN_ENV = {row.env for row in rows()}


def carnival_env_names(env: dict[str, Any] | list[dict[str, Any]]) -> set[str]:
    names = env.keys() if isinstance(env, dict) else [e["name"] for e in env]
    return {n for n in names if n.startswith("CARNIVAL_")}


def test_every_carnival_variable_is_a_real_setting() -> None:
    used = carnival_env_names(config_map())
    for doc in of_kind("Deployment") + of_kind("Job"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            used |= carnival_env_names(container.get("env", []))
    for service in compose()["services"].values():
        used |= carnival_env_names(service.get("environment", {}))
    assert used, "no CARNIVAL_* variable found"
    assert used <= KNOWN_ENV, f"not settings (docs/configuration.md): {sorted(used - KNOWN_ENV)}"


def test_workers_run_every_processor_with_probes_resources_and_a_disruption_budget() -> None:
    deployments = of_kind("Deployment")
    commands = {tuple(d["spec"]["template"]["spec"]["containers"][0]["command"]) for d in deployments}
    assert commands == WORKER_COMMANDS
    assert {c[2] for c in commands if c[1] == "worker"} == set(PROCESSORS)
    budgets = [p["spec"]["selector"]["matchLabels"] for p in of_kind("PodDisruptionBudget")]
    metrics_port = int(config_map()["CARNIVAL_METRICS_PORT"])
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        pod = deployment["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items(), name
        assert selector in budgets, f"{name}: no PodDisruptionBudget selects its pods"
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == metrics_port, name
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (name, probe)
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
        assert "memory" in container["resources"]["limits"], name
        assert container["envFrom"] == [{"configMapRef": {"name": "carnival-env"}}], name


def test_each_worker_connects_as_its_own_principal() -> None:
    """The principal whose ACLs cover the processor (users.yaml), its password from the Secret the User
    Operator writes under the user's name."""
    principal_of = {"scheduler": "scheduler", "power": "power", "sink": "sink", "route": "router"}
    for deployment in of_kind("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        principal = principal_of[container["command"][-1]]
        assert env["CARNIVAL_KAFKA_SASL_USERNAME"]["value"] == principal
        ref = env["CARNIVAL_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": principal, "key": "password"}


def test_the_service_monitor_scrapes_every_worker() -> None:
    (monitor,) = of_kind("ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    scraped = {
        tuple(sorted(s["spec"]["selector"].items()))
        for s in of_kind("Service")
        if wanted.items() <= s["metadata"]["labels"].items()
        and ports & {p["name"] for p in s["spec"]["ports"]}
    }
    workers = {tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in of_kind("Deployment")}
    assert scraped == workers
    # deploy/prometheus/carnival-rules.yml alerts on job="carnival"
    label = monitor["spec"]["jobLabel"]
    assert all(s["metadata"]["labels"][label] == "carnival" for s in of_kind("Service"))


def test_compose_runs_only_known_processors() -> None:
    for name, service in compose()["services"].items():
        command = service.get("command", [])
        if command[:2] == ["carnival", "worker"]:
            assert set(command[2:]) <= set(PROCESSORS), name


def test_the_image_holds_every_package() -> None:
    """deploy/Dockerfile copies each package pyproject installs (a missing one installs without error
    and fails at the first import in the container)."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = {m.group(1) for m in re.finditer(r"^COPY (\S+) \1$", dockerfile, re.MULTILINE)}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


HAND_MADE_SECRETS = {"carnival-clickhouse", "carnival-alert-webhooks"}  # docs/operations.md, "Deploying"


def pod_specs() -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in of_kind("Deployment") + of_kind("Job")]


def test_pods_reference_only_secrets_that_will_exist() -> None:
    """A Secret is written by Strimzi (one per KafkaUser, the cluster CA) or made by hand as
    docs/operations.md says; a misspelt name would leave the pod in CreateContainerConfigError."""
    (kafka,) = of_kind("Kafka")
    strimzi = {u["metadata"]["name"] for u in of_kind("KafkaUser")} | {
        f"{kafka['metadata']['name']}-cluster-ca-cert"
    }
    referenced = set()
    for pod in pod_specs():
        referenced |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for container in pod["containers"]:
            referenced |= {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
    assert referenced <= strimzi | HAND_MADE_SECRETS
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert all(f"create secret generic {name}" in operations for name in HAND_MADE_SECRETS)


def test_the_settings_point_at_the_services_the_operators_create() -> None:
    """Bootstrap = Strimzi's ``<cluster>-kafka-bootstrap`` on the SCRAM TLS listener, the CA file = the
    mounted cluster CA, the ClickHouse URL = Altinity's ``clickhouse-<installation>`` service."""
    env = config_map()
    (kafka,) = of_kind("Kafka")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
    assert (
        env["CARNIVAL_KAFKA_BOOTSTRAP"] == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    )
    assert (env["CARNIVAL_KAFKA_SECURITY_PROTOCOL"], env["CARNIVAL_KAFKA_SASL_MECHANISM"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )
    for deployment in of_kind("Deployment"):  # every Kafka client verifies the brokers with the cluster CA
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        ca_files = [
            f"{mount['mountPath']}/{item['path']}"
            for mount in container["volumeMounts"]
            if volumes[mount["name"]].get("secret", {}).get("secretName")
            == f"{kafka['metadata']['name']}-cluster-ca-cert"
            for item in volumes[mount["name"]]["secret"]["items"]
        ]
        assert ca_files == [env["CARNIVAL_KAFKA_SSL_CA_LOCATION"]], deployment["metadata"]["name"]
    (chi,) = of_kind("ClickHouseInstallation")
    assert env["CARNIVAL_CLICKHOUSE_URL"] == f"http://clickhouse-{chi['metadata']['name']}:8123"
    assert env["CARNIVAL_CLICKHOUSE_EMBEDDED"] == "false"
    users = chi["spec"]["configuration"]["users"]
    assert users[f"{env['CARNIVAL_CLICKHOUSE_USER']}/k8s_secret_password"] == "carnival-clickhouse/password"
