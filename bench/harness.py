"""What the Kafka benches share: a private broker (or the running stack) and stopping a worker."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carnival.settings import Settings  # noqa: E402


@dataclass
class BenchKafka:
    settings: Settings
    workdir: Path  # a fresh temp dir: the private broker's data, worker logs
    private: bool

    def close(self) -> None:
        if self.private:
            from carnival.stack import kafka_broker

            kafka_broker.stop_broker(self.settings)


def bench_kafka(port: int | None, prefix: str) -> BenchKafka:
    """A private broker on ``port`` (controller on ``port + 1``, no ClickHouse) with Carnival's topics,
    its settings exported to ``CARNIVAL_*`` for the workers the bench starts; None: the stack the
    ``CARNIVAL_*`` environment points at. Call ``close()`` when done."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    if port is None:
        return BenchKafka(Settings(), workdir, private=False)
    os.environ.update({
        "CARNIVAL_KAFKA_BOOTSTRAP": f"localhost:{port}", "CARNIVAL_KAFKA_CONTROLLER_PORT": str(port + 1),
        "CARNIVAL_CLICKHOUSE_EMBEDDED": "false", "CARNIVAL_DATA_DIR": str(workdir),
    })  # fmt: skip
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
