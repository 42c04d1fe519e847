"""The sink's knobs: ``core.settings.SinkSettings`` (``CARNIVAL_SINK_<FIELD>``), and the topics it lands."""

from __future__ import annotations

from typing import Any

from core.settings import Settings, SinkSettings
from sinks.tables import TABLE_FOR_TOPIC

# Every topic the sink lands, and its table: the analyst contract plus the two input topics
# analysts need for wait times and the owner ledger (tables added by migration 0002).
SINK_TABLES: dict[str, str] = TABLE_FOR_TOPIC  # every topic lands in its table


class SinkConfig(SinkSettings):
    """The sink's configuration: the settings' ``sink`` group, with per-run overrides (group, instance)."""

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SinkConfig:
        return cls(**{**settings.sink.model_dump(), **overrides})

    @classmethod
    def from_env(cls, **overrides: Any) -> SinkConfig:
        """Defaults, then ``CARNIVAL_SINK_<FIELD>`` environment variables, then ``overrides``."""
        return cls.from_settings(Settings(), **overrides)
