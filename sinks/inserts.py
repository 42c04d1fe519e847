"""A sealed batch on its way into ClickHouse: cut into pieces of one part each, each piece inserted
in order, a refused piece halved down to the records ClickHouse refuses on their own.

Invariants the resume logic (``max(_offset) + 1`` per Kafka partition, or the committed offset) needs:

- every insert is one part, so it lands whole or not at all (``sinks/table_partitions.py``);
- pieces (and the halves of a refused one) are inserted in order, so what landed of each Kafka partition
  is a prefix of it;
- a dead letter is acknowledged before any row after it is inserted and before its offset is committed
  (``settle_dead_letters``), so a record is always either a row or a durable dead letter.

What an error means for the rows is ``sinks/errors.py``: TRANSIENT is retried as is (same piece, same
deduplication token) after a backoff; REJECTED halves the piece, and a single record refused goes to
``deadletter.v1`` as SINK_REJECTED with ClickHouse's error; TOO_BIG halves the piece while it is larger
than ``MIN_SPLIT_ROWS``, then behaves as TRANSIENT. Finding k refused records among n costs about
k * 2 * log2(n) inserts (a batch refused whole, e.g. a column type that no longer matches, about 2n);
undecodable bodies are found first, by decoding the piece once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import structlog

from sinks import metrics
from sinks.batches import TopicBatch
from sinks.errors import Verdict
from sinks.table_partitions import KeyOf, UnsupportedPartitionKey, key_reader, split_at_partition_key
from sinks.writer import ClickHouseWriter, InsertFailed
from streams.deadletter import SINK_REJECTED
from streams.exceptions import SerializationError
from streams.serde import AvroSerde

log = structlog.get_logger(__name__)

MIN_SPLIT_ROWS = 64  # a TOO_BIG insert smaller than this is the server's state, not the batch
WORK_BUDGET_S = 2.0  # one call inserts pieces for at most this long (the consumer must be polled)

# (topic, partition, offset, value, key, kind, error)
DeadLetter = Callable[[str, int, int, bytes, bytes | None, str, str], None]


class Outcome(Enum):
    DONE = "done"  # every piece landed (or was dead-lettered): commit the batch
    RETRY = "retry"  # a transient error: retry at ``plan.retry_at``
    YIELD = "yield"  # work left, no error: continue at the next turn of the loop
    IN_FLIGHT = "in_flight"  # a piece is being inserted (pipelined): look again at the next turn


@dataclass
class InsertPlan:
    batch: TopicBatch  # the sealed batch: its commit positions cover rows and dead-lettered records
    pieces: deque[TopicBatch] | None = None  # computed at the first attempt (needs the table's key)
    retry_at: float = 0.0
    backoff: float = 0.0
    error: InsertFailed | None = None  # the last transient error
    inflight: Future[int] | None = None  # the head piece's insert, when it runs on the insert thread

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self.batch.drop_partitions(gone)
        if self.pieces is not None:
            for piece in self.pieces:
                piece.drop_partitions(gone)
            self.pieces = deque(p for p in self.pieces if not p.empty)


class Inserter:
    def __init__(
        self,
        writer: ClickHouseWriter,
        serde: AvroSerde,
        dead_letter: DeadLetter,
        settle_dead_letters: Callable[[], None],
        backoff_initial_s: float,
        backoff_max_s: float,
        pipelined: bool = False,
        insert_writer: Callable[[str], ClickHouseWriter] | None = None,
    ) -> None:
        self.writer = writer
        self.serde = serde
        self.dead_letter = dead_letter
        self.settle_dead_letters = settle_dead_letters
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.rows_inserted = 0
        self.on_inserted: Callable[[TopicBatch], None] | None = None  # after each piece landed (tests)
        self._keys: dict[tuple[str, str], KeyOf | None] = {}
        # Pipelined: the HTTP insert (ClickHouse parses the container meanwhile) runs on a thread of its
        # topic while the sink's loop reads on; everything else (splitting, dead letters, commits) stays
        # on the loop. ``insert_writer`` gives each topic its own writer (client), so the inserts of
        # different topics (disjoint Kafka partitions) run at the same time; by default they share one.
        self.pipelined = pipelined
        self._insert_writer = insert_writer or (lambda topic: writer)
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._writers: dict[str, ClickHouseWriter] = {}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for writer in self._writers.values():
            if writer is not self.writer:
                writer.close()

    def _start(self, piece: TopicBatch) -> Future[int]:
        writer = self._writers.get(piece.topic)
        if writer is None:
            writer = self._writers[piece.topic] = self._insert_writer(piece.topic)
        if self.pipelined:
            pool = self._pools.get(piece.topic)
            if pool is None:
                pool = self._pools[piece.topic] = ThreadPoolExecutor(1, thread_name_prefix="sink-insert")
            return pool.submit(writer.insert, piece)
        done: Future[int] = Future()
        try:
            done.set_result(writer.insert(piece))
        except Exception as exc:  # noqa: BLE001 - raised by result(), as from the insert thread
            done.set_exception(exc)
        return done

    def run(self, plan: InsertPlan, *, block: bool = True, start: bool = True) -> Outcome:
        """Insert the plan's pieces in order. A piece in flight is waited for when ``block`` (else
        IN_FLIGHT); ``start`` False only settles the piece in flight (a rebalance needs the rows as they
        are, with no insert running)."""
        started = time.monotonic()
        try:
            if plan.pieces is None:
                plan.pieces = deque(self._pieces(plan.batch))
            while plan.pieces:
                if plan.inflight is None:
                    if not start:
                        return Outcome.YIELD
                    self.settle_dead_letters()
                    plan.inflight = self._start(plan.pieces[0])
                if not block and not plan.inflight.done():
                    return Outcome.IN_FLIGHT
                future, plan.inflight = plan.inflight, None
                piece = plan.pieces[0]
                try:
                    self.rows_inserted += future.result()
                except InsertFailed as exc:
                    if not self._shrink(plan.pieces, exc):
                        raise
                    continue
                plan.pieces.popleft()
                plan.backoff, plan.error = 0.0, None
                if self.on_inserted is not None:
                    self.on_inserted(piece)
                if plan.pieces and time.monotonic() - started > WORK_BUDGET_S:
                    return Outcome.YIELD
        except InsertFailed as exc:
            plan.backoff = min(max(plan.backoff * 2, self.backoff_initial_s), self.backoff_max_s)
            plan.retry_at = time.monotonic() + plan.backoff
            plan.error = exc
            metrics.INSERT_RETRIES.labels(table=plan.batch.table, reason=exc.reason).inc()
            log.warning(
                "sink_insert_failed",
                table=plan.batch.table,
                rows=plan.batch.rows,
                reason=exc.reason,
                retry_in_s=round(plan.backoff, 2),
                error=str(exc)[:300],
            )
            return Outcome.RETRY
        self.settle_dead_letters()
        return Outcome.DONE

    # ---------------------------------------------------------------------------------- pieces
    def _pieces(self, batch: TopicBatch) -> list[TopicBatch]:
        if batch.rows == 0:
            return []
        return split_at_partition_key(batch, self._key_of(batch))

    def _key_of(self, batch: TopicBatch) -> KeyOf | None:
        assert batch.schema is not None
        cache_key = (batch.topic, batch.schema.key)
        if cache_key not in self._keys:
            expr = self.writer.partition_key(batch.table)
            try:
                self._keys[cache_key] = key_reader(batch.topic, expr, batch.schema.header_len)
            except UnsupportedPartitionKey as exc:
                # Inserting whole batches is today's behaviour: exact unless a crash falls between parts.
                log.error("sink_partition_key_unsupported", table=batch.table, error=str(exc))
                self._keys[cache_key] = None
        return self._keys[cache_key]

    def _shrink(self, pieces: deque[TopicBatch], exc: InsertFailed) -> bool:
        """Act on a refused head piece; False: nothing to do but retry it later (TRANSIENT)."""
        piece = pieces[0]
        if exc.verdict is Verdict.REJECTED:
            if self._dead_letter_undecodable(piece):
                if piece.rows == 0:
                    pieces.popleft()
                return True
            if piece.rows == 1:
                self._dead_letter_refused(piece, exc)
                pieces.popleft()
                return True
        elif exc.verdict is not Verdict.TOO_BIG or piece.rows < MIN_SPLIT_ROWS:
            return False
        metrics.SPLITS.labels(table=piece.table, verdict=exc.verdict.value).inc()
        log.info("sink_insert_split", table=piece.table, rows=piece.rows, verdict=exc.verdict.value)
        left, right = piece.halves()
        pieces.popleft()
        pieces.extendleft((right, left))
        return True

    def _dead_letter_refused(self, piece: TopicBatch, exc: InsertFailed) -> None:
        ((partition, offset, value, key),) = piece.rows_in_order()
        metrics.REJECTED.labels(table=piece.table).inc()
        log.warning(
            "sink_record_rejected",
            topic=piece.topic,
            partition=partition,
            offset=offset,
            error=str(exc)[:300],
        )
        self.dead_letter(
            piece.topic, partition, offset, value, key, SINK_REJECTED, f"ClickHouse refused the record: {exc}"
        )

    def _dead_letter_undecodable(self, piece: TopicBatch) -> bool:
        """Corrupt bodies the sink let through undecoded: found at once by decoding (kind DECODE...)."""
        assert piece.schema is not None
        if piece.schema.header_len == 0:
            return False  # re-encoded bodies were decoded by the serde already
        bad = 0
        for partition, run in list(piece.runs.items()):
            rejected: set[int] = set()
            for offset, payload, key in zip(run.offsets, run.payloads, run.keys, strict=True):
                try:
                    self.serde.decode(piece.topic, payload)
                except SerializationError as exc:
                    rejected.add(offset)
                    self.dead_letter(piece.topic, partition, offset, payload, key, exc.kind, str(exc))
            if rejected:
                piece.remove_rows(partition, rejected)
                bad += len(rejected)
        if bad:
            log.warning("sink_rejected_records_dead_lettered", topic=piece.topic, records=bad)
        return bad > 0
