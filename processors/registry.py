"""Which processors exist and where each one's entry point lives.

A faust processor names its module's ``app``; a plain consumer (the ClickHouse sink, the alert router)
names a ``run(settings)`` function. ``carnival worker`` runs one per process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProcessorSpec:
    name: str
    target: str  # "module:attribute"
    doc: str

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


PROCESSORS: dict[str, ProcessorSpec] = {
    p.name: p
    for p in (
        ProcessorSpec(
            "scheduler",
            "processors.scheduler.worker:app",
            "node state from telemetry, task matching, preemption and requeue",
        ),
        ProcessorSpec(
            "power",
            "processors.power.worker:run",
            "failover detection: incidents and alerts from power events",
        ),
        ProcessorSpec("sink", "sinks.kafka_sink:run_sink", "every topic into ClickHouse, exactly once"),
    )
}
