"""How the scheduler worker keeps a partition's ``Scheduler`` in a changelogged key-value table.

No faust import: the worker hands in the table's dict and a ``send`` function for the changelog, so
this is tested directly.

Keys (bytes), all prefixed by the partition of the pool-partitioned stream that wrote them, so a
partition's state is found by prefix and keys of two partitions never collide:

* ``<p>/n/<vin>``      a node dict (``NodeState.to_dict``), orjson
* ``<p>/t/<task_id>``  a task dict (``Task.to_dict``), orjson; deleted when the scheduler forgets it
* ``<p>/j<i>``         journal chunk i of the last batch (``J`` + seq + framed key/value pairs)
* ``<p>/jh``           journal header: ``{"seq", "n", "clock"}`` (orjson)

Atomicity. One batch of events changes many keys, and a SIGKILL can stop the changelog writes half
way (they go out in several producer batches). A half-written batch would restore an impossible
state (a task ASSIGNED to a node that is still free, or a node holding a task that is QUEUED), and
replaying the batch on it could assign a task twice. So a batch is written as: journal chunks (the
whole diff, ~0.5 MB each), then the header, then the per-key records, all to the same changelog
partition, whose order Kafka keeps. On restore the per-key records are read and then the journal
whose header and chunks agree (same seq, all chunks present) is applied on top. If the header did
not make it, none of the batch's per-key records did either (they come after it), and the previous
batch is complete (its per-key records precede the new chunks). Either way the restored state is a
batch boundary, and the batch's input offsets were not committed past it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.scheduler.config import SchedulerConfig
from processors.scheduler.matching import Scheduler

__all__ = ["JOURNAL_CHUNK_BYTES", "PartitionState", "decode_chunk", "encode_chunks", "restore"]

JOURNAL_CHUNK_BYTES = 512 * 1024
_DELETED = 0xFFFFFFFF
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">q")

Send = Callable[[int, bytes, bytes | None], None]
"""``send(partition, key, value_or_None)``: write one changelog record (None = tombstone)."""


def node_key(partition: int, vin: str) -> bytes:
    return f"{partition}/n/{vin}".encode()


def task_key(partition: int, task_id: str) -> bytes:
    return f"{partition}/t/{task_id}".encode()


def header_key(partition: int) -> bytes:
    return f"{partition}/jh".encode()


def chunk_key(partition: int, index: int) -> bytes:
    return f"{partition}/j{index}".encode()


def partition_prefix(partition: int) -> bytes:
    return f"{partition}/".encode()


def encode_chunks(
    seq: int, entries: list[tuple[bytes, bytes | None]], limit: int = JOURNAL_CHUNK_BYTES
) -> list[bytes]:
    """Frame ``(key, value)`` pairs into chunks of at most about ``limit`` bytes (never empty)."""
    chunks: list[bytes] = []
    parts: list[bytes] = [b"J", _SEQ.pack(seq)]
    size = 0
    for key, value in entries:
        parts.append(_LEN.pack(len(key)))
        parts.append(key)
        if value is None:
            parts.append(_LEN.pack(_DELETED))
        else:
            parts.append(_LEN.pack(len(value)))
            parts.append(value)
        size += len(key) + (len(value) if value else 0) + 8
        if size >= limit:
            chunks.append(b"".join(parts))
            parts, size = [b"J", _SEQ.pack(seq)], 0
    if size or not chunks:
        chunks.append(b"".join(parts))
    return chunks


def decode_chunk(data: bytes) -> tuple[int, list[tuple[bytes, bytes | None]]]:
    if data[:1] != b"J":
        raise ValueError("not a journal chunk")
    (seq,) = _SEQ.unpack_from(data, 1)
    pos, end = 9, len(data)
    out: list[tuple[bytes, bytes | None]] = []
    while pos < end:
        (klen,) = _LEN.unpack_from(data, pos)
        key = data[pos + 4 : pos + 4 + klen]
        pos += 4 + klen
        (vlen,) = _LEN.unpack_from(data, pos)
        pos += 4
        if vlen == _DELETED:
            out.append((key, None))
        else:
            out.append((key, data[pos : pos + vlen]))
            pos += vlen
    return seq, out


@dataclass
class Restored:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock: int = 0
    seq: int = 0
    journal_applied: bool = False
    keys: int = 0


def restore(partition: int, items: Iterable[tuple[bytes, bytes]]) -> Restored:
    """Node and task dicts of ``partition`` from table items (any order, other partitions skipped)."""
    prefix = partition_prefix(partition)
    n_prefix, t_prefix = prefix + b"n/", prefix + b"t/"
    hkey, jprefix = header_key(partition), prefix + b"j"
    raw_nodes: dict[bytes, bytes] = {}
    raw_tasks: dict[bytes, bytes] = {}
    header: dict[str, Any] | None = None
    chunks: dict[bytes, bytes] = {}
    out = Restored()
    for key, value in items:
        if not key.startswith(prefix) or value is None:
            continue
        out.keys += 1
        if key.startswith(n_prefix):
            raw_nodes[key] = value
        elif key.startswith(t_prefix):
            raw_tasks[key] = value
        elif key == hkey:
            header = orjson.loads(value)
        elif key.startswith(jprefix):
            chunks[key] = value
    if header is not None:
        out.clock, out.seq = int(header["clock"]), int(header["seq"])
        wanted = [chunks.get(chunk_key(partition, i)) for i in range(int(header["n"]))]
        decoded = [decode_chunk(c) for c in wanted if c is not None]
        if len(decoded) == len(wanted) and all(seq == out.seq for seq, _ in decoded):
            out.journal_applied = bool(decoded)
            for _, entries in decoded:
                for key, value in entries:
                    target = raw_nodes if key.startswith(n_prefix) else raw_tasks
                    if value is None:
                        target.pop(key, None)
                    else:
                        target[key] = value
    for value in raw_nodes.values():
        nd = orjson.loads(value)
        out.nodes[nd["vin"]] = nd
    for value in raw_tasks.values():
        td = orjson.loads(value)
        out.tasks[td["task_id"]] = td
    return out


class PartitionState:
    """The in-memory ``Scheduler`` of one partition of the pool stream, and how it is persisted."""

    def __init__(self, partition: int, scheduler: Scheduler, seq: int = 0) -> None:
        self.partition = partition
        self.scheduler = scheduler
        self.seq = seq
        self.persisted_clock = scheduler.clock
        self.reported: dict[str, int] = {}

    @classmethod
    def rebuild(
        cls, partition: int, items: Iterable[tuple[bytes, bytes]], config: SchedulerConfig
    ) -> tuple[PartitionState, Restored]:
        restored = restore(partition, items)
        sched = Scheduler.from_parts(restored.nodes.values(), restored.tasks.values(), restored.clock, config)
        return cls(partition, sched, restored.seq), restored

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """The keys the scheduler changed since the last call, serialized (None = delete)."""
        nodes, tasks = self.scheduler.drain_dirty()
        p = self.partition
        entries: list[tuple[bytes, bytes | None]] = [
            (node_key(p, vin), orjson.dumps(nd)) for vin, nd in nodes.items()
        ]
        entries.extend(
            (task_key(p, tid), None if td is None else orjson.dumps(td)) for tid, td in tasks.items()
        )
        return entries

    def persist(self, data: MutableMapping[bytes, bytes], send: Send) -> int:
        """Write this batch's changes (journal, header, then keys) to ``data`` and the changelog.

        Returns the number of changed keys. Nothing is written when neither state nor clock moved.
        """
        entries = self.changes()
        clock = self.scheduler.clock
        if not entries and clock == self.persisted_clock:
            return 0
        p = self.partition
        self.seq += 1
        chunks = encode_chunks(self.seq, entries) if entries else []
        writes: list[tuple[bytes, bytes | None]] = [(chunk_key(p, i), c) for i, c in enumerate(chunks)]
        writes.append((header_key(p), orjson.dumps({"seq": self.seq, "n": len(chunks), "clock": clock})))
        writes.extend(entries)
        for key, value in writes:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
            send(p, key, value)
        self.persisted_clock = clock
        return len(entries)

    def counter_deltas(self) -> Iterator[tuple[str, int]]:
        """Scheduler counters that grew since the last call (for Prometheus)."""
        for name, value in self.scheduler.counters.items():
            delta = value - self.reported.get(name, 0)
            if delta:
                self.reported[name] = value
                yield name, delta
