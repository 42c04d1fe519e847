"""A real `carnival worker NAME` subprocess for integration tests: start, SIGKILL, stop, read its log."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`python -m carnival.cli worker <processor>`; each start logs to its own file in ``log_dir``.

    ``restart_if_exited`` is what the deployment's supervisor (``carnival worker`` with several
    processors, or Kubernetes) does: a worker that exits on its own (the runtime's policy for a Kafka
    failure it cannot recover from in-process, such as a fatal idempotent-producer error) is started
    again; ``exits`` counts those, apart from the test's own kills."""

    def __init__(self, processor: str, env: dict[str, str], log_dir: Path, name: str = "w") -> None:
        self.processor, self.env, self.log_dir, self.name = processor, env, log_dir, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[tuple[str, int]] = []  # (log file, exit code) of each exit the test did not cause
        self.wanted = False  # started and not stopped: should be running

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.processor}-{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.wanted = True
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "carnival.cli", "worker", self.processor],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.wanted = False
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart_if_exited(self) -> bool:
        """Start the worker again if it should run and has exited by itself; True if it did."""
        if not self.wanted or self.proc is None or self.proc.poll() is None:
            return False
        self.exits.append((self.log_path.name, int(self.proc.returncode)))
        self.start()
        return True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]
