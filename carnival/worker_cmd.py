"""``carnival worker``: run one processor in this process, or supervise several as child processes.

One processor per process keeps each faust App's event loop to itself (and the CPU it needs); the
supervisor restarts a child that crashes, with backoff, and stops them all on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import structlog

from carnival.stack.security import principal_env
from core.metrics import serve_metrics
from core.settings import Settings, get_settings
from processors.registry import PROCESSORS

log = structlog.get_logger(__name__)

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


def run_one(settings: Settings, name: str) -> int:
    spec = PROCESSORS[name]
    if own := principal_env(settings, name):  # a secured local stack: the processor's own ACLs
        os.environ.update(own)
        get_settings.cache_clear()
        settings = get_settings()
    serve_metrics(settings.metrics_port)
    target = spec.load()
    if hasattr(target, "conf") and hasattr(target, "agents"):  # a faust App
        from processors.runtime.faust_glue import run_worker

        log.info("worker_starting", processor=name, kind="faust")
        run_worker(target, settings.log_level.lower())
        return 0
    log.info("worker_starting", processor=name, kind="consumer")
    target(settings)  # runs until SIGTERM/SIGINT
    return 0


def supervise(settings: Settings, names: list[str]) -> int:
    """Run each processor as ``carnival worker NAME`` in a child; restart crashed ones."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    crashes: dict[str, int] = {n: 0 for n in names}
    stopping = False

    def spawn(name: str, index: int) -> None:
        env = dict(os.environ)
        if settings.metrics_port:
            env["CARNIVAL_METRICS_PORT"] = str(settings.metrics_port + index)
        children[name] = subprocess.Popen([sys.executable, "-m", "carnival.cli", "worker", name], env=env)
        log.info("worker_spawned", processor=name, pid=children[name].pid)

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for i, name in enumerate(names):
        spawn(name, i)
    while not stopping:
        time.sleep(0.5)
        for i, name in enumerate(names):
            code = children[name].poll()
            if code is None or stopping:
                continue
            delay = RESTART_BACKOFF_S[min(crashes[name], len(RESTART_BACKOFF_S) - 1)]
            crashes[name] += 1
            log.error("worker_exited", processor=name, code=code, restart_in_s=delay)
            time.sleep(delay)
            spawn(name, i)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker_killed", processor=name)
            child.kill()
    return 0
