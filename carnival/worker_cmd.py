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


def slots(names: list[str], replicas: int) -> list[tuple[str, int]]:
    """(processor, replica) of every child: ``replicas`` of each named processor."""
    return [(name, r) for name in names for r in range(max(1, replicas))]


def supervise(settings: Settings, names: list[str], replicas: int = 1) -> int:
    """Run ``replicas`` children ``carnival worker NAME`` per processor; restart crashed ones.

    The replicas of a processor join its consumer group and split its partitions (a rebalance on every
    join and leave); each has its own metrics port (``metrics_port`` + its index) and faust state
    directory (``worker_replica``)."""
    children: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
    wanted = slots(names, replicas)
    crashes: dict[tuple[str, int], int] = dict.fromkeys(wanted, 0)
    stopping = False

    def spawn(slot: tuple[str, int], index: int) -> None:
        name, replica = slot
        env = dict(os.environ, CARNIVAL_WORKER_REPLICA=str(replica))
        if settings.metrics_port:
            env["CARNIVAL_METRICS_PORT"] = str(settings.metrics_port + index)
        children[slot] = subprocess.Popen([sys.executable, "-m", "carnival.cli", "worker", name], env=env)
        log.info("worker_spawned", processor=name, replica=replica, pid=children[slot].pid)

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for i, slot in enumerate(wanted):
        spawn(slot, i)
    while not stopping:
        time.sleep(0.5)
        for i, slot in enumerate(wanted):
            code = children[slot].poll()
            if code is None or stopping:
                continue
            delay = RESTART_BACKOFF_S[min(crashes[slot], len(RESTART_BACKOFF_S) - 1)]
            crashes[slot] += 1
            log.error("worker_exited", processor=slot[0], replica=slot[1], code=code, restart_in_s=delay)
            time.sleep(delay)
            spawn(slot, i)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for (name, replica), child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker_killed", processor=name, replica=replica)
            child.kill()
    return 0
