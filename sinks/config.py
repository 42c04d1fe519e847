"""The sink's knobs: one small frozen dataclass with defaults, overridable by ``CARNIVAL_SINK_*``.

Kept apart from ``core.settings.Settings`` until the lead folds these fields in there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from sinks.clickhouse import TABLE_FOR_TOPIC

# Every topic the sink lands, and its table: the analyst contract plus the two input topics
# analysts need for wait times and the owner ledger (tables added by migration 0002).
SINK_TABLES: dict[str, str] = TABLE_FOR_TOPIC  # every topic lands in its table


@dataclass(frozen=True)
class SinkConfig:
    group_id: str = "carnival-sink"
    # Static group membership (group.instance.id): a restarted worker takes its partitions back at once
    # instead of waiting for the old member's session to expire. Give each worker its own stable id.
    instance_id: str = ""
    session_timeout_ms: int = 30_000
    # A topic's batch is inserted when it holds batch_rows rows or its oldest row waited flush_interval_s.
    # Keep batch_rows far below min_insert_block_size_rows (1,048,449): one insert is then one part,
    # all or nothing, which the restart logic relies on.
    batch_rows: int = 20_000
    flush_interval_s: float = 1.0
    poll_batch: int = 5_000  # messages taken from the consumer per call
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 15.0
    # Well below max.poll.interval.ms: a stuck insert cannot outlive the group membership.
    insert_timeout_s: float = 60.0
    position_timeout_s: float = 10.0  # ClickHouse / committed-offset lookups at assignment
    shutdown_timeout_s: float = 15.0  # how long a stopping sink keeps trying to write what it buffered
    lag_interval_s: float = 5.0

    @classmethod
    def from_env(cls, **overrides: object) -> SinkConfig:
        """Defaults, then ``CARNIVAL_SINK_<FIELD>`` environment variables, then ``overrides``."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(f"CARNIVAL_SINK_{f.name.upper()}")
            if raw is not None:
                values[f.name] = type(getattr(cls(), f.name))(raw)
        return replace(cls(**values), **overrides)  # type: ignore[arg-type]
