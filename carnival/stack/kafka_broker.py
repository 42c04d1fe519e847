"""Real Apache Kafka brokers in KRaft mode, run from the official Maven Central jars: one on a laptop,
or a local cluster of ``stack_brokers`` nodes (each a broker and a controller voter, one quorum).

Layout of node 1 under ``<data_dir>/kafka``, node N under ``<data_dir>/kafka-N``: ``server.properties``,
``data/`` (KRaft log dirs), ``broker.pid``. All nodes are formatted with one cluster id. The jars are
resolved once per Kafka version into a cache shared by every data dir, so test sessions and the laptop
stack do not download them twice.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from carnival.stack.errors import StackError, require_tool
from core.settings import Settings

log = structlog.get_logger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BrokerPaths:
    root: Path
    node: int = 1

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.root / "data"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def log_file(self) -> Path:
        name = "kafka.log" if self.node == 1 else f"kafka-{self.node}.log"
        return self.root.parent / "logs" / name


def paths(settings: Settings, node: int = 1) -> BrokerPaths:
    name = "kafka" if node == 1 else f"kafka-{node}"
    return BrokerPaths(settings.data_dir.resolve() / name, node)


def nodes(settings: Settings) -> list[int]:
    return [node for node, _, _, _ in settings.local_brokers()]


def cache_dir(settings: Settings) -> Path:
    return settings.cache_dir or Path.home() / ".cache" / "carnival"


def resolve_jars(settings: Settings) -> Path:
    """Fetch the broker jars with Maven (once per version) and return the directory holding them."""
    version = settings.kafka_version
    libs = cache_dir(settings) / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = require_tool("mvn", "install Apache Maven (e.g. `apt-get install maven`) to fetch Kafka's jars")
    libs.mkdir(parents=True, exist_ok=True)
    log.info("kafka_jars_resolving", version=version, into=str(libs))
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(DEPLOY_DIR / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        f"-Dkafka.version={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise StackError(f"Maven could not fetch Apache Kafka {version}:\n{tail}")
    marker.touch()
    return libs


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` if that process is still alive; a stale file is removed."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return None
    except PermissionError:
        return pid
    if _is_zombie(pid):
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def _listen_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "127.0.0.1") else host


def server_properties(settings: Settings, log_dirs: Path, node: int = 1) -> str:
    brokers = settings.local_brokers()
    _, host, port, ctrl = brokers[node - 1]
    listen_host = _listen_host(host)
    voters = ",".join(f"{n}@{_listen_host(h)}:{c}" for n, h, _, c in brokers)
    # Internal topics as replicated as the cluster allows; few partitions start faster.
    replication = str(min(3, len(brokers)))
    min_isr = str(settings.min_insync_replicas)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{listen_host}:{port},CONTROLLER://{listen_host}:{ctrl}",
        "advertised.listeners": f"PLAINTEXT://{listen_host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": str(settings.topic_partitions),
        "default.replication.factor": str(settings.topic_replication),
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        "offsets.topic.num.partitions": "12",
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.retention.check.interval.ms": "60000",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    if settings.stack_secure:
        from carnival.stack.security import broker_properties

        props.update(broker_properties(settings, listen_host, port, ctrl))
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _cluster_id() -> str:
    # Kafka's format: 16 random bytes, URL-safe base64. One starting with "-" would read as an option.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _java_cmd(java: str, libs: Path, main: str, *args: str, heap: str = "-Xmx768m") -> list[str]:
    return [
        java,
        heap,
        "-Xms128m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def cluster_id(settings: Settings) -> str:
    """The cluster id every node is formatted with: node 1's if it was formatted before (a data dir from
    a single-broker stack grows into a cluster), else a new one, kept in ``<data_dir>/kafka-cluster.id``."""
    meta = paths(settings).log_dirs / "meta.properties"
    if meta.exists():
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    keep = settings.data_dir.resolve() / "kafka-cluster.id"
    if not keep.exists():
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text(_cluster_id())
    return keep.read_text().strip()


def _format_storage(java: str, libs: Path, bp: BrokerPaths, cid: str, scram: list[str]) -> None:
    if (bp.log_dirs / "meta.properties").exists():
        return
    cmd = _java_cmd(
        java,
        libs,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cid,
        "-c",
        str(bp.config),
        *scram,
        heap="-Xmx256m",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"Formatting KRaft storage in {bp.log_dirs} failed:\n{proc.stdout}{proc.stderr}")
    log.info("kafka_storage_formatted", log_dirs=str(bp.log_dirs))


def broker_status(settings: Settings) -> dict[str, object]:
    """Node 1's process and whether the cluster answers; with several nodes, ``brokers`` has each one."""
    per_node = [node_status(settings, node) for node in nodes(settings)]
    first = per_node[0]
    return {
        "component": "kafka",
        "running": any(b["running"] for b in per_node),
        "pid": first["pid"],
        "bootstrap": settings.kafka_bootstrap,
        "answering": any(b["answering"] for b in per_node),
        "log": first["log"],
        "brokers": per_node,
    }


def node_status(settings: Settings, node: int) -> dict[str, object]:
    bp = paths(settings, node)
    _, host, port, _ = settings.local_brokers()[node - 1]
    return {
        "node": node,
        "running": read_pid(bp.pid_file) is not None,
        "pid": read_pid(bp.pid_file),
        "address": f"{host}:{port}",
        "answering": port_open(host, port),
        "log": str(bp.log_file),
    }


def under_replicated(settings: Settings, timeout_s: float = 5.0) -> list[str]:
    """``topic/partition`` of every partition with fewer in-sync replicas than replicas."""
    from streams.kafka import make_admin

    admin = make_admin(settings, **{"log_level": 0})
    topics = admin.list_topics(timeout=timeout_s).topics
    return sorted(
        f"{name}/{pid}"
        for name, meta in topics.items()
        for pid, part in meta.partitions.items()
        if len(part.isrs) < len(part.replicas)
    )


def start_broker(settings: Settings, node: int | None = None) -> int:
    """Start every node of the stack (or only ``node``) and wait until the cluster answers; return node
    1's pid (or ``node``'s). A node this data dir already runs is an error when started alone."""
    chosen = nodes(settings) if node is None else [node]
    for n in chosen:
        pid = read_pid(paths(settings, n).pid_file)
        if pid is not None:
            raise StackError(
                f"Kafka is already running (pid {pid}, data dir {paths(settings, n).root}); "
                "`carnival stack down` stops it"
            )
    for n in chosen:
        _, host, port, ctrl = settings.local_brokers()[n - 1]
        for p in (port, ctrl):
            if port_open(host, p):
                raise StackError(
                    f"Port {p} on {host} is already in use by another process; stop it or set "
                    "CARNIVAL_KAFKA_BOOTSTRAP / CARNIVAL_KAFKA_CONTROLLER_PORT to free ports"
                )
    java = require_tool("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)")
    libs = resolve_jars(settings)
    cid = cluster_id(settings)
    procs = {n: _launch(settings, java, libs, n, cid) for n in chosen}  # a quorum needs them all at once
    for n, proc in procs.items():
        _wait_ready(settings, proc, paths(settings, n), n)
    return procs[chosen[0]].pid


def _launch(settings: Settings, java: str, libs: Path, node: int, cid: str) -> subprocess.Popen[bytes]:
    bp = paths(settings, node)
    bp.log_dirs.mkdir(parents=True, exist_ok=True)
    bp.log_file.parent.mkdir(parents=True, exist_ok=True)
    bp.config.write_text(server_properties(settings, bp.log_dirs, node))
    scram: list[str] = []
    if settings.stack_secure:
        from carnival.stack.security import scram_format_args

        scram = scram_format_args(settings)  # the users exist in the metadata before any client
    _format_storage(java, libs, bp, cid, scram)
    with open(bp.log_file, "ab") as out:
        proc = subprocess.Popen(
            _java_cmd(java, libs, "kafka.Kafka", str(bp.config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=bp.root,
        )
    bp.pid_file.write_text(str(proc.pid))
    log.info("kafka_starting", pid=proc.pid, node=node, bootstrap=settings.kafka_bootstrap)
    return proc


def _wait_ready(settings: Settings, proc: subprocess.Popen[bytes], bp: BrokerPaths, node: int = 1) -> None:
    """Ready means the node is registered in the cluster's metadata, not just that its port is open."""
    from streams.kafka import make_admin

    deadline = time.monotonic() + START_TIMEOUT_S
    # log_level 0: "connection refused" is expected until the broker listens; do not spam the terminal.
    admin = make_admin(settings, **{"log_level": 0, "socket.connection.setup.timeout.ms": "2000"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            bp.pid_file.unlink(missing_ok=True)
            raise StackError(
                f"Kafka node {node} exited during start (code {proc.returncode}). "
                f"Last lines of {bp.log_file}:\n{log_tail(bp.log_file)}"
            )
        try:
            meta = admin.list_topics(timeout=2)
            if node in meta.brokers:
                log.info("kafka_ready", pid=proc.pid, node=node, brokers=len(meta.brokers))
                return
        except Exception:  # noqa: BLE001 - not up yet; retry until the deadline
            pass
        time.sleep(0.5)
    stop_broker(settings)
    raise StackError(
        f"Kafka node {node} did not answer within {START_TIMEOUT_S:.0f}s. "
        f"Last lines of {bp.log_file}:\n{log_tail(bp.log_file)}"
    )


def stop_broker(settings: Settings, node: int | None = None) -> bool:
    """Stop every node (or only ``node``) cleanly: SIGTERM to all at once (a node stopped after the others
    would wait for a quorum that is gone), then SIGKILL what outlives the timeout. False if none ran."""
    running = {}
    for n in nodes(settings) if node is None else [node]:
        pid = read_pid(paths(settings, n).pid_file)
        if pid is not None:
            running[n] = pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    for n, pid in running.items():
        _terminate(pid, STOP_TIMEOUT_S)
        paths(settings, n).pid_file.unlink(missing_ok=True)
        log.info("kafka_stopped", pid=pid, node=n)
    return bool(running)


def kill_broker(settings: Settings, node: int) -> bool:
    """SIGKILL one node, as a crash would (fault injection). False if it was not running."""
    bp = paths(settings, node)
    pid = read_pid(bp.pid_file)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)
    bp.pid_file.unlink(missing_ok=True)
    log.info("kafka_killed", pid=pid, node=node)
    return True


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child so it does not linger as a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)
