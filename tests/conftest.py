"""Shared fixtures. Integration tests get ONE real stack per session, started by the project's own code
(`carnival.stack.lifecycle.stack_up`) on ports apart from a developer's running stack."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings

_PORT_OFFSETS = (1, 92, 93, 123)


def _ports_free(base: int) -> bool:
    for offset in _PORT_OFFSETS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("0.0.0.0", base + offset))
            except OSError:
                return False
    return True


def _port_base() -> int:
    """CARNIVAL_TEST_PORT_BASE when set (several sessions side by side each pick one). Otherwise the first
    base whose ports are free, below the kernel's ephemeral range (32768+): there an outgoing connection
    can hold the port a broker is about to listen on, and a clean CI machine failed on exactly that."""
    if "CARNIVAL_TEST_PORT_BASE" in os.environ:
        return int(os.environ["CARNIVAL_TEST_PORT_BASE"])
    for base in range(24000, 32000, 500):
        if _ports_free(base):
            return base
    raise RuntimeError("no free test ports between 24000 and 32000; set CARNIVAL_TEST_PORT_BASE")


_BASE = _port_base()
TEST_PORTS = {
    "CARNIVAL_KAFKA_BOOTSTRAP": f"localhost:{_BASE + 92}",
    "CARNIVAL_KAFKA_CONTROLLER_PORT": str(_BASE + 93),
    "CARNIVAL_CLICKHOUSE_URL": f"http://localhost:{_BASE + 123}",
    "CARNIVAL_CLICKHOUSE_NATIVE_PORT": str(_BASE + 1),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cluster`` (a 3-broker cluster killed and healed, the main job on a secured stack)
    take minutes each: `make cluster-test` runs them, `make test` skips them."""
    if os.environ.get("CARNIVAL_CLUSTER_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="a long cluster test: `make cluster-test` runs it")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment that points every component (and CLI subprocesses) at the test stack."""
    data_dir = tmp_path_factory.mktemp("carnival-stack")
    return {**TEST_PORTS, "CARNIVAL_DATA_DIR": str(data_dir), "CARNIVAL_LOG_FORMAT": "json"}


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Iterator[Settings]:
    """The real Kafka broker and embedded ClickHouse server, up for the whole session."""
    from carnival.stack.lifecycle import stack_down, stack_up

    saved = {k: os.environ.get(k) for k in stack_env}
    os.environ.update(stack_env)
    settings = Settings()
    stack_down(settings)  # a previous run killed mid-way may have left servers behind
    try:
        stack_up(settings)
        yield settings
    finally:
        stack_down(settings)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def settings(stack: Settings) -> Settings:
    return stack


@pytest.fixture
def run_cli(stack: Settings, stack_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Run the real `carnival` command in a subprocess against the test stack."""

    def run(
        *args: str, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, **stack_env}
        return subprocess.run(
            [sys.executable, "-m", "carnival.cli", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=env,
            cwd=Path(__file__).parent.parent,
        )

    return run
