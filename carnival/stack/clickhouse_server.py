"""Host the embedded chDB ClickHouse as a real server (HTTP + native) on 127.0.0.1.

chDB's connection API cannot open listeners, but its low-level ``_chdb.query`` runs a
clickhouse-local instance that can (see DOMAIN.md, "Hosting the embedded ClickHouse"). The host is
one process per data dir, started as::

    python -m carnival.stack.clickhouse_server serve --data-dir D --http-port P --tcp-port Q

It reads ``config.xml`` from its working directory, opens both listeners, then keeps a sleeping query
running; killing that query (``KILL QUERY ... SYNC``) returns the call and the process exits cleanly.
A second ``_chdb.query`` in the same process failed in our tests ("EventNotifier is initialized
twice"), so the host makes exactly one call.

Layout under ``<data_dir>/clickhouse``: ``config.xml``, ``server.pid``, ``data/`` (the ClickHouse path),
``tmp/``, ``user_files/``; the log goes to ``<data_dir>/logs/clickhouse.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import structlog

from carnival.stack.errors import StackError
from core.settings import CLICKHOUSE_SECRET_KEY, CLICKHOUSE_STACK_USER, Settings

log = structlog.get_logger(__name__)

LISTEN_HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
MODULE = "carnival.stack.clickhouse_server"
# TCP first, so once HTTP /ping answers both listeners are up. One row per second: this serves for
# ~3000 years; killing the query stops the server.
SERVE_SECONDS = 10**11
SERVE_SQL = (
    "SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; "
    f"SELECT sleepEachRow(1) FROM numbers({SERVE_SECONDS}) "
    "SETTINGS function_sleep_max_microseconds_per_block=0, max_block_size=1, max_execution_time=0"
)
# Finds the serving query in system.processes (its text is fixed, so matching it is exact enough).
SERVE_QUERY_MATCH = f"%sleepEachRow(1) FROM numbers({SERVE_SECONDS})%"


@dataclass(frozen=True)
class ServerPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.xml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.root.parent / "logs" / "clickhouse.log"


@dataclass(frozen=True)
class StartResult:
    pid: int
    url: str
    http_port: int
    tcp_port: int
    data_path: Path
    log_file: Path
    seconds: float
    stale_pid_removed: bool = False


def paths(data_dir: Path) -> ServerPaths:
    return ServerPaths(Path(data_dir).resolve() / "clickhouse")


USERS_FILE = "users.xml"  # written by ``start_clickhouse`` for a secured stack; absent otherwise


def users_xml(password_sha256_hex: str) -> str:
    """The users of a secured stack's engine: ``carnival`` (CLICKHOUSE_STACK_USER) with the data dir's
    password, owner of everything; ``default`` keeps no password (the host's own serving query runs as it,
    in process, and chDB cannot pass it one) but sees the ``system`` database only, so a client without
    credentials reads and writes no analyst table."""
    return f"""<clickhouse>
    <users>
        <default>
            <password></password>
            <networks><ip>::/0</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <allow_databases><database>system</database></allow_databases>
        </default>
        <{CLICKHOUSE_STACK_USER}>
            <password_sha256_hex>{password_sha256_hex}</password_sha256_hex>
            <networks><ip>::/0</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>1</access_management>
        </{CLICKHOUSE_STACK_USER}>
    </users>
    <profiles><default/></profiles>
    <quotas><default/></quotas>
</clickhouse>
"""


def config_xml(sp: ServerPaths, http_port: int, tcp_port: int) -> str:
    # Every path lives under the data dir: clickhouse-local would otherwise use /var/lib/clickhouse.
    # Caches are capped because the defaults (5 GiB mark cache) assume a dedicated server.
    # A short keep-alive: on shutdown the server waits for idle client connections (5 s, then exit
    # code 1); clients reconnect transparently (urllib3 and clickhouse-connect retry closed sockets).
    return f"""<clickhouse>
    <listen_host>{LISTEN_HOST}</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{sp.data}/</path>
    <tmp_path>{sp.root}/tmp/</tmp_path>
    <user_files_path>{sp.root}/user_files/</user_files_path>
    <format_schema_path>{sp.root}/format_schemas/</format_schema_path>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>134217728</uncompressed_cache_size>
    <keep_alive_timeout>2</keep_alive_timeout>{_user_directories(sp)}
</clickhouse>
"""


def _user_directories(sp: ServerPaths) -> str:
    users = sp.root / USERS_FILE
    if not users.exists():
        return ""
    return f"\n    <user_directories><users_xml><path>{users}</path></users_xml></user_directories>"


def write_users(settings: Settings) -> None:
    """A secured stack's users file (password as a SHA-256 hash, never in clear); none when not secured."""
    users = paths(settings.data_dir).root / USERS_FILE
    if not settings.stack_secure:
        users.unlink(missing_ok=True)
        return
    from carnival.stack import security

    password = security.users(settings)[CLICKHOUSE_SECRET_KEY]
    users.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(users_xml(hashlib.sha256(password.encode()).hexdigest()))


# ------------------------------------------------------------------------------- the host process
def serve(data_dir: Path, http_port: int, tcp_port: int) -> int:
    """Run the server in this process until its serving query is killed. Returns an exit code."""
    sp = paths(data_dir)
    # chdb's import runs a throwaway engine in the working directory: keep it away from our config.xml,
    # or it opens (and locks) the data dir before the real call does.
    os.chdir(sp.root.parent)
    import chdb._chdb as chdb_native  # heavy import: only the host process pays for it

    for d in (sp.data, sp.root / "tmp", sp.root / "user_files", sp.root / "format_schemas"):
        d.mkdir(parents=True, exist_ok=True)
    sp.config.write_text(config_xml(sp, http_port, tcp_port))
    os.chdir(sp.root)  # clickhouse-local reads config.xml from the working directory
    print(
        f"clickhouse host pid={os.getpid()} http={LISTEN_HOST}:{http_port} tcp={LISTEN_HOST}:{tcp_port} "
        f"path={sp.data}",
        flush=True,
    )
    started = time.monotonic()
    # TabSeparated, not CSV: with CSV clickhouse-connect's handshake fails (DOMAIN.md). Errors such as
    # "Address already in use" or QUERY_WAS_CANCELLED are printed to stderr by chDB, not raised.
    chdb_native.query(SERVE_SQL, "TabSeparated", path=str(sp.data))  # type: ignore[attr-defined]
    print(f"clickhouse host exiting after {time.monotonic() - started:.1f}s", flush=True)
    return 0


# ---------------------------------------------------------------------------- managing the host
def start_clickhouse(settings: Settings) -> StartResult:
    """Start the embedded server detached and wait until ``/ping`` answers."""
    if not settings.hosts_embedded_clickhouse:
        raise StackError(
            f"{settings.clickhouse.display_url} is not a local http:// URL (or "
            "CARNIVAL_CLICKHOUSE_EMBEDDED is off): the embedded ClickHouse is not hosted for it"
        )
    sp = paths(settings.data_dir)
    http_port, tcp_port = settings.clickhouse_host_port[1], settings.clickhouse_native_port
    started = time.monotonic()

    stale = False
    recorded = _recorded_pid(sp.pid_file)
    if recorded is not None:
        if _is_our_host(recorded):
            raise StackError(
                f"ClickHouse is already running (pid {recorded}, data dir {sp.root}); "
                "`carnival stack down` stops it"
            )
        log.warning("clickhouse_stale_pid_removed", pid=recorded, pid_file=str(sp.pid_file))
        sp.pid_file.unlink(missing_ok=True)
        stale = True
    for name, port in (("HTTP", http_port), ("native", tcp_port)):
        if not _port_free(port):
            raise StackError(
                f"Port {port} on {LISTEN_HOST} (ClickHouse {name}) is already in use by another "
                "process; stop it or set CARNIVAL_CLICKHOUSE_URL / "
                "CARNIVAL_CLICKHOUSE_NATIVE_PORT to free ports"
            )

    sp.root.mkdir(parents=True, exist_ok=True)
    write_users(settings)
    sp.log_file.parent.mkdir(parents=True, exist_ok=True)
    log_offset = sp.log_file.stat().st_size if sp.log_file.exists() else 0
    cmd = [
        sys.executable,
        "-m",
        MODULE,
        "serve",
        "--data-dir",
        str(sp.root.parent),
        "--http-port",
        str(http_port),
        "--tcp-port",
        str(tcp_port),
    ]
    with open(sp.log_file, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=sp.root,
            env=_child_env(),
        )
    sp.pid_file.write_text(str(proc.pid))
    log.info("clickhouse_starting", pid=proc.pid, http_port=http_port, tcp_port=tcp_port)

    deadline = started + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sp.pid_file.unlink(missing_ok=True)
            raise StackError(
                f"ClickHouse exited during start{f' (code {proc.returncode})' if proc.returncode else ''}. "
                f"Last lines of {sp.log_file}:\n{_log_tail(sp.log_file, log_offset)}"
            )
        if _ping(http_port, timeout=1.0):
            seconds = time.monotonic() - started
            log.info("clickhouse_ready", pid=proc.pid, seconds=round(seconds, 2))
            return StartResult(
                pid=proc.pid,
                url=f"http://{LISTEN_HOST}:{http_port}",
                http_port=http_port,
                tcp_port=tcp_port,
                data_path=sp.data,
                log_file=sp.log_file,
                seconds=seconds,
                stale_pid_removed=stale,
            )
        time.sleep(0.2)
    _terminate(proc.pid)
    sp.pid_file.unlink(missing_ok=True)
    raise StackError(
        f"ClickHouse did not answer /ping within {START_TIMEOUT_S:.0f}s. "
        f"Last lines of {sp.log_file}:\n{_log_tail(sp.log_file, log_offset)}"
    )


def stop_clickhouse(settings: Settings) -> bool:
    """Stop the server: kill its serving query, wait for exit, then SIGTERM/SIGKILL. False if none ran."""
    sp = paths(settings.data_dir)
    pid = _recorded_pid(sp.pid_file)
    if pid is None or not _is_our_host(pid):
        sp.pid_file.unlink(missing_ok=True)
        return False
    http_port = settings.clickhouse_host_port[1]
    try:
        _kill_serving_query(http_port)
        stopped = _wait_exit(pid, STOP_TIMEOUT_S)
    except (OSError, urllib.error.URLError) as exc:  # e.g. the URL changed since it was started
        log.warning("clickhouse_kill_query_failed", pid=pid, error=str(exc))
        stopped = False
    if not stopped:
        log.warning("clickhouse_stop_escalating", pid=pid)
        _terminate(pid)
    sp.pid_file.unlink(missing_ok=True)
    log.info("clickhouse_stopped", pid=pid)
    return True


def clickhouse_status(settings: Settings) -> dict[str, object]:
    sp = paths(settings.data_dir)
    pid = _recorded_pid(sp.pid_file)
    running = pid is not None and _is_our_host(pid)
    http_port = settings.clickhouse_host_port[1]
    answering = _ping(http_port, timeout=1.0) if running else False
    version = _http_query(http_port, "SELECT version()", timeout=2.0).strip() if answering else None
    return {
        "component": "clickhouse",
        "running": running,
        "pid": pid if running else None,
        "url": settings.clickhouse.display_url,
        "http_port": http_port,
        "tcp_port": settings.clickhouse_native_port,
        "answering": answering,
        "version": version,
        "data": str(sp.data),
        "log": str(sp.log_file),
    }


# ------------------------------------------------------------------------------------- helpers
def _child_env() -> dict[str, str]:
    # The host runs `-m carnival...` from the data dir: make the package importable without install.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _http_query(port: int, sql: str, timeout: float) -> str:
    req = urllib.request.Request(f"http://{LISTEN_HOST}:{port}/", data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def _ping(port: int, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LISTEN_HOST}:{port}/ping", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _kill_serving_query(port: int) -> None:
    match = SERVE_QUERY_MATCH.replace("'", "\\'")
    ids = _http_query(
        port,
        f"SELECT query_id FROM system.processes WHERE query LIKE '{match}' AND query_id != queryID()",
        timeout=5.0,
    ).split()
    for qid in ids:
        _http_query(port, f"KILL QUERY WHERE query_id = '{qid}' SYNC", timeout=STOP_TIMEOUT_S)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ClickHouse does: TIME_WAIT is fine
        try:
            sock.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def _recorded_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_our_host(pid: int) -> bool:
    """Alive and really our host: a pid from a stale file may have been reused by another program."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    return MODULE.encode() in cmdline


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child, so it does not linger as a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _terminate(pid: int) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if _wait_exit(pid, wait_s):
            return


def _log_tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    """The last lines written since ``offset`` (this start's output, not a previous run's)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    srv = sub.add_parser("serve", help="host the server in this process until its serving query is killed")
    srv.add_argument("--data-dir", type=Path, required=True, help="Carnival data dir (uses <dir>/clickhouse)")
    srv.add_argument("--http-port", type=int, required=True)
    srv.add_argument("--tcp-port", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(args.data_dir, args.http_port, args.tcp_port)


if __name__ == "__main__":
    sys.exit(main())
