"""The faust App settings every processor shares (no broker: nothing is started)."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings
from processors.runtime.app import state_dir


def test_replicas_of_a_processor_keep_apart_state_directories(tmp_path: Path) -> None:
    first = state_dir(Settings(data_dir=tmp_path), "scheduler")
    second = state_dir(Settings(data_dir=tmp_path, worker_replica=1), "scheduler")
    assert first == tmp_path.resolve() / "faust" / "scheduler"  # replica 0: where one worker always kept it
    assert second == tmp_path.resolve() / "faust" / "scheduler-1"
