"""What the sink holds between polls: one batch per topic, made of one contiguous run per partition.

A batch has a single writer schema (so it is one Avro container). Each partition's run covers a
contiguous range of that partition's offsets: the rows, plus records that went to the dead-letter topic
(they count as processed, but are not rows). It is inserted as pieces of one table partition each
(``sinks/table_partitions.py``), so that every insert is one part, all or nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sinks.avro_container import WriterSchema, container, datum_prefix, zigzag

MAX_READABLE_TOKEN = 200


@dataclass
class PartitionRun:
    partition: int
    prefix: bytes
    first: int | None = None  # offset of the first row
    last: int | None = None  # offset of the last row
    high: int = -1  # highest processed offset (rows and dead-lettered records)
    offsets: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)


@dataclass
class TopicBatch:
    topic: str
    table: str
    schema: WriterSchema | None = None
    runs: dict[int, PartitionRun] = field(default_factory=dict)
    rows: int = 0
    opened_at: float | None = None  # monotonic time of the first record

    def accepts(self, ws: WriterSchema) -> bool:
        return self.schema is None or self.schema.key == ws.key

    def _run(self, partition: int) -> PartitionRun:
        run = self.runs.get(partition)
        if run is None:
            run = self.runs[partition] = PartitionRun(partition, datum_prefix(self.topic, partition))
        if self.opened_at is None:
            self.opened_at = time.monotonic()
        return run

    def add(self, partition: int, offset: int, ws: WriterSchema, payload: bytes, key: bytes | None) -> None:
        if not self.accepts(ws):
            raise ValueError(f"batch of {self.topic} holds schema {self.schema.key if self.schema else None}")
        self.schema = ws
        run = self._run(partition)
        if run.first is None:
            run.first = offset
        run.last = run.high = offset
        run.offsets.append(offset)
        run.payloads.append(payload)
        run.keys.append(key)
        self.rows += 1

    def skip(self, partition: int, offset: int) -> None:
        """A dead-lettered record: processed, no row."""
        self._run(partition).high = offset

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            run = self.runs.pop(p, None)
            if run is not None:
                self.rows -= len(run.offsets)
        if not self.runs:
            self.clear()

    def remove_rows(self, partition: int, offsets: set[int]) -> None:
        """Turn rows into skipped records (they were dead-lettered after ClickHouse rejected them)."""
        run = self.runs[partition]
        keep = [i for i, o in enumerate(run.offsets) if o not in offsets]
        self.rows -= len(run.offsets) - len(keep)
        run.offsets = [run.offsets[i] for i in keep]
        run.payloads = [run.payloads[i] for i in keep]
        run.keys = [run.keys[i] for i in keep]
        run.first = run.offsets[0] if run.offsets else None
        run.last = run.offsets[-1] if run.offsets else None

    def clear(self) -> None:
        self.schema = None
        self.runs = {}
        self.rows = 0
        self.opened_at = None

    @property
    def empty(self) -> bool:
        return not self.runs

    def age(self, now: float) -> float:
        return 0.0 if self.opened_at is None else now - self.opened_at

    def token(self) -> str:
        """insert_deduplication_token: the exact offset ranges, so only a retry of this batch matches."""
        ranges = ",".join(
            f"{p}:{r.first}-{r.last}" for p, r in sorted(self.runs.items()) if r.first is not None
        )
        text = f"{self.topic}:{ranges}"
        if len(text) <= MAX_READABLE_TOKEN:
            return text
        return f"{self.topic}:sha256:{hashlib.sha256(ranges.encode()).hexdigest()}"

    def rows_in_order(self) -> list[tuple[int, int, bytes, bytes | None]]:
        """(partition, offset, payload, key) of every row, by partition then offset."""
        return [
            (p, o, payload, key)
            for p, run in sorted(self.runs.items())
            for o, payload, key in zip(run.offsets, run.payloads, run.keys, strict=True)
        ]

    def halves(self) -> tuple[TopicBatch, TopicBatch]:
        """The rows split in two batches, the first holding the lower half in ``rows_in_order``: inserting
        the first before the second keeps each partition's landed rows a prefix."""
        assert self.schema is not None and self.rows > 1
        rows = self.rows_in_order()
        cut = len(rows) // 2
        out = (TopicBatch(self.topic, self.table), TopicBatch(self.topic, self.table))
        for i, (partition, offset, payload, key) in enumerate(rows):
            out[i >= cut].add(partition, offset, self.schema, payload, key)
        return out

    def partitions_with_rows(self) -> list[int]:
        return sorted(p for p, r in self.runs.items() if r.offsets)

    def container(self) -> bytes:
        assert self.schema is not None
        skip = self.schema.header_len
        datums: list[bytes] = []
        append = datums.append
        for _, run in sorted(self.runs.items()):
            prefix = run.prefix
            for offset, payload in zip(run.offsets, run.payloads, strict=True):
                append(prefix + zigzag(offset) + payload[skip:])
        return container(self.schema, datums)

    def commit_positions(self) -> dict[int, int]:
        """partition -> next offset to read once this batch is durable."""
        return {p: r.high + 1 for p, r in self.runs.items() if r.high >= 0}
