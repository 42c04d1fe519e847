"""What the benches share: a private stack (or the running one) and stopping a worker."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.settings import Settings  # noqa: E402


@dataclass
class BenchKafka:
    settings: Settings
    workdir: Path  # a fresh temp dir: the private broker's data, worker logs
    private: bool

    def close(self) -> None:
        if self.private:
            from carnival.stack import kafka_broker

            kafka_broker.stop_broker(self.settings)


def bench_port(offset: int, default_base: int) -> int:
    """``CARNIVAL_BENCH_PORT_BASE + offset`` when set (benches side by side on one machine each pick a
    base), else ``default_base + offset``."""
    return int(os.environ.get("CARNIVAL_BENCH_PORT_BASE", default_base)) + offset


def private_stack_env(prefix: str, kafka_port: int, clickhouse_port: int | None = None) -> Path:
    """Point ``CARNIVAL_*`` at a private stack in a fresh data dir: Kafka on ``kafka_port`` (controller
    ``+ 1``), ClickHouse HTTP on ``clickhouse_port`` (native ``+ 1``). Returns the data dir."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update({
        "CARNIVAL_KAFKA_BOOTSTRAP": f"localhost:{kafka_port}",
        "CARNIVAL_KAFKA_CONTROLLER_PORT": str(kafka_port + 1),
        "CARNIVAL_DATA_DIR": str(workdir),
    })  # fmt: skip
    if clickhouse_port is not None:
        os.environ["CARNIVAL_CLICKHOUSE_URL"] = f"http://localhost:{clickhouse_port}"
        os.environ["CARNIVAL_CLICKHOUSE_NATIVE_PORT"] = str(clickhouse_port + 1)
    return workdir


def bench_kafka(port: int | None, prefix: str) -> BenchKafka:
    """A private broker on ``port`` (controller on ``port + 1``, no ClickHouse) with Carnival's topics,
    its settings exported to ``CARNIVAL_*`` for the workers the bench starts; None: the stack the
    ``CARNIVAL_*`` environment points at. Call ``close()`` when done."""
    if port is None:
        return BenchKafka(Settings(), Path(tempfile.mkdtemp(prefix=prefix)), private=False)
    workdir = private_stack_env(prefix, port)
    os.environ["CARNIVAL_CLICKHOUSE_EMBEDDED"] = "false"
    from carnival.stack import kafka_broker
    from streams.topics import apply_topics

    settings = Settings()
    kafka_broker.start_broker(settings)
    apply_topics(settings)
    return BenchKafka(settings, workdir, private=True)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    """SIGTERM a worker and wait for it; SIGKILL if it does not stop in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
