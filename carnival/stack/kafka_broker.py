"""A real single-node Apache Kafka broker in KRaft mode, run from the official Maven Central jars.

Layout under ``<data_dir>/kafka``: ``server.properties``, ``data/`` (KRaft log dirs), ``broker.pid``.
The jars are resolved once per Kafka version into a cache shared by every data dir, so test sessions
and the laptop stack do not download them twice.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from carnival.stack.errors import StackError
from core.settings import Settings

log = structlog.get_logger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BrokerPaths:
    root: Path

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
        return self.root.parent / "logs" / "kafka.log"


def paths(settings: Settings) -> BrokerPaths:
    return BrokerPaths(settings.data_dir.resolve() / "kafka")


def cache_dir(settings: Settings) -> Path:
    return settings.cache_dir or Path.home() / ".cache" / "carnival"


def require_tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` was not found on PATH: {hint}")
    return found


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


def server_properties(settings: Settings, log_dirs: Path) -> str:
    host, port = settings.kafka_host_port
    listen_host = "127.0.0.1" if host in ("localhost", "127.0.0.1") else host
    ctrl = settings.controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{listen_host}:{ctrl}",
        "listeners": f"PLAINTEXT://{listen_host}:{port},CONTROLLER://{listen_host}:{ctrl}",
        "advertised.listeners": f"PLAINTEXT://{listen_host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": str(settings.topic_partitions),
        # A single node: internal topics cannot be replicated, and few partitions start faster.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "12",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.retention.check.interval.ms": "60000",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
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


def _format_storage(java: str, libs: Path, bp: BrokerPaths) -> None:
    if (bp.log_dirs / "meta.properties").exists():
        return
    cmd = _java_cmd(
        java,
        libs,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _cluster_id(),
        "-c",
        str(bp.config),
        heap="-Xmx256m",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"Formatting KRaft storage in {bp.log_dirs} failed:\n{proc.stdout}{proc.stderr}")
    log.info("kafka_storage_formatted", log_dirs=str(bp.log_dirs))


def broker_status(settings: Settings) -> dict[str, object]:
    bp = paths(settings)
    host, port = settings.kafka_host_port
    pid = read_pid(bp.pid_file)
    return {
        "component": "kafka",
        "running": pid is not None,
        "pid": pid,
        "bootstrap": settings.kafka_bootstrap,
        "answering": port_open(host, port),
        "log": str(bp.log_file),
    }


def start_broker(settings: Settings) -> int:
    """Start the broker (idempotent for a broker this data dir already runs); return its pid."""
    bp = paths(settings)
    host, port = settings.kafka_host_port
    pid = read_pid(bp.pid_file)
    if pid is not None:
        raise StackError(
            f"Kafka is already running (pid {pid}, data dir {bp.root}); `carnival stack down` stops it"
        )
    for p in (port, settings.controller_port):
        if port_open(host, p):
            raise StackError(
                f"Port {p} on {host} is already in use by another process; stop it or set "
                "CARNIVAL_KAFKA_BOOTSTRAP / CARNIVAL_KAFKA_CONTROLLER_PORT to free ports"
            )
    java = require_tool("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)")
    libs = resolve_jars(settings)
    bp.log_dirs.mkdir(parents=True, exist_ok=True)
    bp.log_file.parent.mkdir(parents=True, exist_ok=True)
    bp.config.write_text(server_properties(settings, bp.log_dirs))
    _format_storage(java, libs, bp)

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
    log.info("kafka_starting", pid=proc.pid, bootstrap=settings.kafka_bootstrap)
    _wait_ready(settings, proc, bp)
    return proc.pid


def _wait_ready(settings: Settings, proc: subprocess.Popen[bytes], bp: BrokerPaths) -> None:
    """Ready means the broker answers metadata requests, not just that its port is open."""
    from streams.kafka import make_admin

    deadline = time.monotonic() + START_TIMEOUT_S
    # log_level 0: "connection refused" is expected until the broker listens; do not spam the terminal.
    admin = make_admin(settings, **{"log_level": 0, "socket.connection.setup.timeout.ms": "2000"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            bp.pid_file.unlink(missing_ok=True)
            raise StackError(
                f"Kafka exited during start (code {proc.returncode}). "
                f"Last lines of {bp.log_file}:\n{log_tail(bp.log_file)}"
            )
        try:
            meta = admin.list_topics(timeout=2)
            if meta.brokers:
                log.info("kafka_ready", pid=proc.pid, brokers=len(meta.brokers))
                return
        except Exception:  # noqa: BLE001 - not up yet; retry until the deadline
            pass
        time.sleep(0.5)
    stop_broker(settings)
    raise StackError(
        f"Kafka did not answer within {START_TIMEOUT_S:.0f}s. "
        f"Last lines of {bp.log_file}:\n{log_tail(bp.log_file)}"
    )


def stop_broker(settings: Settings) -> bool:
    """Stop the broker cleanly (SIGTERM, then SIGKILL after a timeout). False if none was running."""
    bp = paths(settings)
    pid = read_pid(bp.pid_file)
    if pid is None:
        return False
    _terminate(pid, STOP_TIMEOUT_S)
    bp.pid_file.unlink(missing_ok=True)
    log.info("kafka_stopped", pid=pid)
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
