"""How the scheduler worker keeps a partition's ``Scheduler`` in a changelogged key-value table.

No faust import: the worker hands in the table's dict and a ``send`` function for the changelog, so
this is tested directly.

Keys (bytes), all prefixed by the partition of the pool-partitioned stream that wrote them, so a
partition's state is found by prefix and keys of two partitions never collide:

* ``<p>/n/<vin>``      a node dict (``NodeState.to_dict``), orjson
* ``<p>/h/<vin>``      the node's hot fields (``NodeState.hot_values``), orjson; newer than ``n/`` iff its
  ts is larger, then restored over it
* ``<p>/t/<task_id>``  a task dict (``Task.to_dict``), orjson; deleted when the scheduler forgets it
* ``<p>/j<i>``         journal chunk i of the last batch (``J`` + seq + framed key/value pairs)
* ``<p>/jh``           journal header: ``{"seq", "n", "clock", "anchor"}`` (orjson; anchor: see ``TickClock``)

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

Hot writes. Most telemetry records move only event times, readings and the session's notes (the
node's "hot" fields, ``NodeState._HOT``), and the full node dict is ~1.5 KB, mostly the idle history
(96 hazard cells and more). So a dirty node whose ``cold_signature`` did not change since its last full
write is written as ``h/<vin>`` alone (~250 bytes: ts, lease, readings, ``history.cur`` and ``wifi``),
in the journal like any key. Nothing is skipped: restore puts the latest hot record over the latest
full one (the hot one is newer iff its ts is larger; at equal ts both hold the same hot values, since
only applied telemetry moves them), so the restored node equals the one in memory field for field and
a restored worker decides exactly as its predecessor did (no band, no staleness). A full write happens
whenever anything else changed (eligibility, reason, work, reliability, timers, publication, session,
a learnt session) and always for a node's first write after a restore (its signature is unknown).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.scheduler.config import SchedulerConfig
from processors.scheduler.eligibility import NodeState
from processors.scheduler.matching import Scheduler
from streams.sites import site_vin

__all__ = ["JOURNAL_CHUNK_BYTES", "PartitionState", "TickClock", "decode_chunk", "encode_chunks", "restore"]

JOURNAL_CHUNK_BYTES = 512 * 1024
_DELETED = 0xFFFFFFFF
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">q")

Send = Callable[[int, bytes, bytes | None], None]
"""``send(partition, key, value_or_None)``: write one changelog record (None = tombstone)."""


def node_key(partition: int, vin: str) -> bytes:
    return f"{partition}/n/{vin}".encode()


def hot_key(partition: int, vin: str) -> bytes:
    return f"{partition}/h/{vin}".encode()


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
    anchor: tuple[int, ...] | None = None
    seq: int = 0
    journal_applied: bool = False
    keys: int = 0


def restore(partition: int, items: Iterable[tuple[bytes, bytes]]) -> Restored:
    """Node and task dicts of ``partition`` from table items (any order, other partitions skipped)."""
    prefix = partition_prefix(partition)
    n_prefix, t_prefix, h_prefix = prefix + b"n/", prefix + b"t/", prefix + b"h/"
    hkey, jprefix = header_key(partition), prefix + b"j"
    raw_nodes: dict[bytes, bytes] = {}
    raw_hot: dict[bytes, bytes] = {}  # keyed like raw_nodes (n/<vin>)
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
        elif key.startswith(h_prefix):
            raw_hot[n_prefix + key[len(h_prefix) :]] = value
        elif key.startswith(t_prefix):
            raw_tasks[key] = value
        elif key == hkey:
            header = orjson.loads(value)
        elif key.startswith(jprefix):
            chunks[key] = value
    if header is not None:
        out.clock, out.seq = int(header["clock"]), int(header["seq"])
        if header.get("anchor"):
            out.anchor = tuple(int(v) for v in header["anchor"])  # event, arrival[, last wall]
        wanted = [chunks.get(chunk_key(partition, i)) for i in range(int(header["n"]))]
        decoded = [decode_chunk(c) for c in wanted if c is not None]
        if len(decoded) == len(wanted) and all(seq == out.seq for seq, _ in decoded):
            out.journal_applied = bool(decoded)
            for _, entries in decoded:
                for key, written in entries:
                    if key.startswith(h_prefix):
                        key, target = n_prefix + key[len(h_prefix) :], raw_hot
                    else:
                        target = raw_nodes if key.startswith(n_prefix) else raw_tasks
                    if written is None:
                        target.pop(key, None)
                    else:
                        target[key] = written
    for key, value in raw_nodes.items():
        nd = orjson.loads(value)
        if (hot := raw_hot.get(key)) is not None:
            values = orjson.loads(hot)
            if values[0] > nd.get("ts", -1):
                NodeState.overlay_hot(nd, values)
        out.nodes[nd["vin"] if "vin" in nd else site_vin(nd["site_id"])] = nd  # a site: kind "site"
    for value in raw_tasks.values():
        td = orjson.loads(value)
        out.tasks[td["task_id"]] = td
    return out


OUTAGE_MS = 30_000  # no pool record at all for this long: no worker was running (ticks come every tick_s)


@dataclass
class TickClock:
    """The event time a wall-clock tick stands for, on one partition of the pool stream.

    SPEC: event time, not arrival time, drives every decision. Records move the scheduler's clock to
    their event time, so while records flow, ticks add nothing: they only run the timers already due.
    A tick matters when a partition goes quiet (a silent fleet must still lose its leases and its
    tasks must still hit their deadlines), so from the newest record's event time the clock runs on at
    wall-clock rate from that record's arrival: ``anchor event + (tick wall - anchor arrival)``. A
    simulated or replayed past (event time far behind, or running faster than, the wall clock) is
    therefore never pushed to the wall clock, which would expire every lease at once.

    Both times come from the log (the record's Kafka timestamp, the tick's payload), so a replay after
    a crash maps every tick to the same event time; the anchor is persisted with the clock.

    The worker's own downtime is not the fleet's silence: while any worker runs, the partition gets a
    tick every ``tick_s``, so a gap of more than ``OUTAGE_MS`` between consecutive pool records means no
    worker ran. That gap is left out (the anchor's arrival moves by it); otherwise the first tick after
    an hour's outage would jump the clock an hour, ahead of the hour of telemetry still to be routed,
    and expire every lease and claim. The gap is read from the log too, so replays agree.
    """

    event_ms: int | None = None  # newest record event time seen on the partition
    wall_ms: int | None = None  # its arrival (Kafka timestamp of the pool-stream record), outages left out
    last_wall_ms: int | None = None  # latest wall time of any pool record (tick or not)

    def seen(self, wall_ms: int) -> None:
        """Call for every pool record, in stream order, with its wall time (before ``at``/``observe``)."""
        last = self.last_wall_ms
        if last is not None and self.wall_ms is not None and wall_ms - last > OUTAGE_MS:
            self.wall_ms += wall_ms - last
        if last is None or wall_ms > last:
            self.last_wall_ms = wall_ms

    def observe(self, event_ms: int, wall_ms: int) -> None:
        if self.event_ms is None or event_ms > self.event_ms:
            self.event_ms, self.wall_ms = event_ms, wall_ms

    def at(self, tick_wall_ms: int) -> int | None:
        """The event time of a tick sent at ``tick_wall_ms``; None before any record (nothing to run)."""
        if self.event_ms is None or self.wall_ms is None:
            return None
        return self.event_ms + max(0, tick_wall_ms - self.wall_ms)

    def as_header(self) -> list[int] | None:
        if self.event_ms is None:
            return None
        return [self.event_ms, int(self.wall_ms or 0), int(self.last_wall_ms or self.wall_ms or 0)]


class PartitionState:
    """The in-memory ``Scheduler`` of one partition of the pool stream, and how it is persisted."""

    def __init__(
        self, partition: int, scheduler: Scheduler, seq: int = 0, anchor: tuple[int, ...] | None = None
    ) -> None:
        self.partition = partition
        self.scheduler = scheduler
        self.seq = seq
        self.persisted_clock = scheduler.clock
        self.reported: dict[str, int] = {}
        self.ticks = TickClock(*anchor) if anchor else TickClock()
        self.persisted_anchor = self.ticks.as_header()

    def observe_record(self, arrival_ms: int) -> None:
        """Call after each non-tick record with its arrival (Kafka timestamp, ms)."""
        self.ticks.seen(arrival_ms)
        self.ticks.observe(self.scheduler.record_clock, arrival_ms)

    def tick_time(self, tick_wall_ms: int) -> int:
        """The event time to run a tick at (never behind the scheduler's clock)."""
        self.ticks.seen(tick_wall_ms)
        at = self.ticks.at(tick_wall_ms)
        return self.scheduler.clock if at is None else max(at, self.scheduler.clock)

    @classmethod
    def rebuild(
        cls, partition: int, items: Iterable[tuple[bytes, bytes]], config: SchedulerConfig
    ) -> tuple[PartitionState, Restored]:
        restored = restore(partition, items)
        sched = Scheduler.from_parts(restored.nodes.values(), restored.tasks.values(), restored.clock, config)
        return cls(partition, sched, restored.seq, restored.anchor), restored

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """The keys the scheduler changed since the last call, serialized (None = delete): a node whose
        cold part is as last written in full gets its hot record only (module docstring)."""
        sched, p = self.scheduler, self.partition
        vins, task_ids = sched.drain_dirty_keys()
        entries: list[tuple[bytes, bytes | None]] = []
        for vin in vins:
            node = sched.nodes.get(vin)
            if node is None:  # a site, or a node forgotten: written whole (or deleted, hot key too)
                nd = sched.node_dict(vin)
                entries.append((node_key(p, vin), None if nd is None else orjson.dumps(nd)))
                if nd is None:
                    entries.append((hot_key(p, vin), None))
                continue
            cold = node.cold_signature()
            if cold == node.persisted_cold:
                entries.append((hot_key(p, vin), orjson.dumps(node.hot_values())))
            else:
                node.persisted_cold = cold
                entries.append((node_key(p, vin), orjson.dumps(node.to_dict())))
        for tid in task_ids:
            task = sched.tasks.get(tid)
            entries.append((task_key(p, tid), None if task is None else orjson.dumps(task.to_dict())))
        return entries

    def persist(self, data: MutableMapping[bytes, bytes], send: Send) -> int:
        """Write this batch's changes (journal, header, then keys) to ``data`` and the changelog.

        Returns the number of changed keys. Nothing is written when neither state nor clock moved.
        """
        entries = self.changes()
        clock, anchor = self.scheduler.clock, self.ticks.as_header()
        if not entries and clock == self.persisted_clock and anchor == self.persisted_anchor:
            return 0
        p = self.partition
        self.seq += 1
        chunks = encode_chunks(self.seq, entries) if entries else []
        writes: list[tuple[bytes, bytes | None]] = [(chunk_key(p, i), c) for i, c in enumerate(chunks)]
        header = {"seq": self.seq, "n": len(chunks), "clock": clock, "anchor": anchor}
        writes.append((header_key(p), orjson.dumps(header)))
        writes.extend(entries)
        for key, value in writes:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
            send(p, key, value)
        self.persisted_clock, self.persisted_anchor = clock, anchor
        return len(entries)

    def counter_deltas(self) -> Iterator[tuple[str, int]]:
        """Scheduler counters that grew since the last call (for Prometheus)."""
        for name, value in self.scheduler.counters.items():
            delta = value - self.reported.get(name, 0)
            if delta:
                self.reported[name] = value
                yield name, delta
