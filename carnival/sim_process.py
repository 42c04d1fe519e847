"""``carnival simulate`` as a child of the demo: its output goes to a log file, its progress to us.

The child logs JSON (``simulate_progress`` every 10 s of wall time, with the simulated time); a reader
thread copies every line to the log file and keeps the latest simulated time, which the demo's status
line extrapolates at the run's speed between two progress lines.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson


class SimulatorProcess:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, start_ms: int, speed: float):
        self.start_ms = start_ms
        self.speed = speed
        self._reported: tuple[int, float] | None = None  # (simulated ms, monotonic s when reported)
        self._started = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed by wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "carnival.cli", "simulate", *args],
            stdout=self._log,
            stderr=subprocess.PIPE,
            env={**env, "CARNIVAL_LOG_FORMAT": "json"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            if b"simulate_progress" in line:
                try:
                    sim = orjson.loads(line)["sim_time"]
                    at = datetime.strptime(sim, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
                    self._reported = (int(at.timestamp() * 1000), time.monotonic())
                except (orjson.JSONDecodeError, KeyError, ValueError):
                    pass

    def sim_ms(self, end_ms: int) -> int:
        """Simulated time now: the last reported one, moved on at the run's speed (capped at the end)."""
        base, at = self._reported or (self.start_ms, self._started)
        return min(end_ms, base + int((time.monotonic() - at) * 1000 * self.speed))

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=10)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.wait()
