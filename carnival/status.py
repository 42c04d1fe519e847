"""The demo's live status: simulated time, events/s and consumer lag per processor.

``PipelineMonitor`` samples Kafka (end offsets of the input topics, committed offsets of each
processor's group) with one admin client and one consumer kept open; the arithmetic is that of
``streams.lag.group_lag``. ``StatusLine`` shows a sample as one
line that rewrites itself on a terminal, and as a plain log line every ``LOG_EVERY_S`` otherwise.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from core.settings import Settings

log = structlog.get_logger(__name__)

LOG_EVERY_S = 10.0


@dataclass
class Sample:
    at: float  # monotonic seconds
    produced: int  # records in the input topics (sum of end offsets)
    lags: dict[str, int] = field(default_factory=dict)  # view label -> records not yet committed
    error: str | None = None

    @property
    def behind(self) -> int:
        return sum(self.lags.values())


class PipelineMonitor:
    def __init__(
        self, settings: Settings, views: dict[str, tuple[str, list[str]]], inputs: list[str]
    ) -> None:
        """``views``: label -> (consumer group, the topics of it to count)."""
        from streams.kafka import make_admin, make_consumer

        self.views = views
        self.inputs = inputs
        self.admin = make_admin(settings)
        self.consumer = make_consumer(settings)

    def sample(self, timeout_s: float = 10.0) -> Sample:
        now = time.monotonic()
        try:
            topics = sorted({t for _, ts in self.views.values() for t in ts} | set(self.inputs))
            meta = self.consumer.list_topics(timeout=timeout_s).topics
            partitions = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
            marks = {
                _key(tp): self.consumer.get_watermark_offsets(tp, timeout=timeout_s) for tp in partitions
            }
            ends = {k: high for k, (_, high) in marks.items()}
            starts = {k: low for k, (low, _) in marks.items()}
            committed = {g: self._committed(g, partitions) for g, _ in self.views.values()}
            lags = {}
            for label, (group, group_topics) in self.views.items():
                behind = 0
                for tp in partitions:
                    if tp.topic in group_topics:
                        done = committed[group].get(_key(tp), -1)
                        # Read a moment apart: a commit newer than the end offset read is no lag.
                        behind += max(0, ends[_key(tp)] - (done if done >= 0 else starts.get(_key(tp), 0)))
                lags[label] = behind
            produced = sum(n for (t, _), n in ends.items() if t in self.inputs)
            return Sample(now, produced, lags)
        except Exception as exc:  # noqa: BLE001 - a topic or group may not exist yet: report, do not stop
            return Sample(now, 0, {}, error=str(exc))

    def _committed(self, group: str, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        request = [ConsumerGroupTopicPartitions(group, partitions)]
        result = self.admin.list_consumer_group_offsets(request)[group].result()
        return {_key(tp): tp.offset for tp in result.topic_partitions}

    def close(self) -> None:
        self.consumer.close()


def _key(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


def format_status(phase: str, sim_ms: int | None, rate: float, sample: Sample) -> str:
    """One line: phase, simulated time, events/s and lag per processor."""
    sim = "-" if sim_ms is None else datetime.fromtimestamp(sim_ms / 1000, UTC).strftime("%m-%d %H:%M")
    if sample.error:
        lags = f"lag unknown ({sample.error[:60]})"
    else:
        lags = "lag " + " ".join(f"{label}={n:,}" for label, n in sample.lags.items())
    return f"{phase:8} sim {sim} {rate:>6,.0f} ev/s {lags}"


class StatusLine:
    """A self-rewriting line on a terminal (rich), a log line every LOG_EVERY_S elsewhere.

    ``close()`` clears the line so other output can follow; the next ``show`` starts a new one."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.live: Any = None
        self.last_log = 0.0

    def show(self, line: str, fields: dict[str, Any]) -> None:
        if self.tty:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            if self.live is None:
                console = Console(file=self.stream)
                self.live = Live(Text(""), console=console, refresh_per_second=4, transient=True)
                self.live.start()
            self.live.update(Text(line, no_wrap=True, overflow="ellipsis"))
        elif time.monotonic() - self.last_log >= LOG_EVERY_S:
            self.last_log = time.monotonic()
            log.info("demo_status", **fields)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
