"""Everything Carnival relies on inside faust, in one module.

faust-streaming offers no public API for what a durable batch processor needs (write a table in the
partition of an event that is not the current one, send a changelog record and get its delivery future,
ack events by hand, gate the commit on our own producer). Each of those reaches into faust here and
nowhere else, behind a small function whose docstring says which faust internal it uses; every one has
a test in ``tests/unit/runtime/test_faust_glue.py`` that fails when an upgrade changes that internal.
Importing this module with a faust outside ``SUPPORTED`` fails at once instead of at the first
checkpoint of a production worker.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import faust
from faust.streams import _current_event
from faust.types import TP

__all__ = ["TP"]  # re-exported: partitions as faust names them

SUPPORTED = ((0, 15, 3), (0, 16, 0))
"""faust-streaming versions whose internals this module was checked against: [low, high)."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def check_version(version: str = faust.__version__) -> None:
    low, high = SUPPORTED
    if not low <= _version(version) < high:
        raise ImportError(
            f"faust-streaming {version} is not supported (needs >= "
            f"{'.'.join(map(str, low))}, < {'.'.join(map(str, high))}): see processors/runtime/faust_glue.py"
        )


check_version()


def run_worker(app: faust.App, loglevel: str) -> None:
    """Run a faust App in this process until SIGTERM/SIGINT (faust's own Worker: signals, logging off)."""
    from faust.worker import Worker

    Worker(app, loglevel=loglevel, logfile=None, override_logging=False).execute_from_commandline()


# -- startup -----------------------------------------------------------------------------------------
def before_first_start(app: faust.App, hook: Callable[[], Awaitable[None]]) -> None:
    """Run ``hook`` once, before faust's consumer first subscribes (``App.on_first_start``, which faust
    calls before it starts its services)."""
    faust_first_start = app.on_first_start

    async def _first_start() -> None:
        await hook()
        await faust_first_start()

    app.on_first_start = _first_start  # type: ignore[method-assign]


def on_revoked(app: faust.App, handler: Callable[[], Awaitable[None]]) -> None:
    """``handler()`` when partitions are revoked (faust has waited for every event taken to be acked)."""

    async def _revoked(sender: Any, revoked: Any = None, **kwargs: Any) -> None:
        await handler()

    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]


def on_assigned(app: faust.App, handler: Callable[[set[TP]], Awaitable[None]]) -> None:
    async def _assigned(sender: Any, assigned: Any = None, **kwargs: Any) -> None:
        await handler(set(assigned or ()))

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]


def on_stop_begins(app: faust.App, handler: Callable[[], Awaitable[None]]) -> None:
    """Run ``handler`` as soon as the app starts stopping, before faust stops its consumer (``App.on_stop``
    is the first thing ``mode.Service.stop`` awaits; by then ``app.should_stop`` is set, so the app's
    timers have ended, and faust's ``Consumer.wait_empty`` is about to wait for every event taken to be
    acked)."""
    faust_on_stop = app.on_stop

    async def _on_stop() -> None:
        await handler()
        await faust_on_stop()

    app.on_stop = _on_stop  # type: ignore[method-assign]


def before_shutdown(app: faust.App, handler: Callable[[], Awaitable[None]]) -> None:
    async def _stopping(sender: Any, **kwargs: Any) -> None:
        await handler()

    # faust sends it once its consumer has stopped (after ``wait_empty``), before the last producer flush.
    app.on_before_shutdown.connect(_stopping)  # type: ignore[arg-type]


def is_settling(app: faust.App) -> bool:
    """True while faust rebalances or recovers tables: timers must not touch state then."""
    tables: Any = app.tables
    recovered = tables.recovery.completed.is_set() if hasattr(tables, "recovery") else True
    return bool(app.rebalancing) or bool(getattr(app, "in_recovery", False)) or not recovered


def assigned_actives(app: faust.App) -> set[TP]:
    return set(app.assignor.assigned_actives())


# -- events ------------------------------------------------------------------------------------------
async def noack_batches(stream: faust.StreamT, max_events: int, within_s: float) -> AsyncIterator[list[Any]]:
    """Batches of events (what arrived within ``within_s``, at most ``max_events``) that faust does NOT
    ack: the caller acks each event with :func:`ack` once its effects are durable (``Stream.noack_take``;
    ``take_events`` acks its batch in a ``finally``, even when processing it failed)."""
    batches = cast(faust.Stream, stream).noack_take(max_events, within=within_s)
    async for events in batches:
        yield list(events)


async def ack(stream: faust.StreamT, events: Iterable[Any]) -> None:
    """Ack events taken with :func:`noack_batches`; faust commits offsets up to the acked ones."""
    for event in events:
        await stream.ack(event)


def enter(event: Any) -> None:
    """Make ``event`` faust's current event in this task. faust's table takes the changelog partition
    (``Collection.partition_for_key``) and its stores the partition database from
    ``faust.streams.current_event()``, a ContextVar holding a weakref to the event that stream iteration
    sets per event; a batch mixes partitions, so state is read and written with the right event current."""
    _current_event.set(weakref.ref(event))


# -- tables ------------------------------------------------------------------------------------------
def store_dict(table: Any) -> dict[bytes, bytes]:
    """The dict behind a table with faust's memory store (``Store.data``)."""
    return cast(dict[bytes, bytes], table.data.data)


def track_partition(table: Any, key: bytes, partition: int | None) -> None:
    """faust's memory store maps keys to partitions (``Store._key_partition``) to drop them when a
    partition moves away, but tracks only keys it restored or set in a stream context: record the
    partition of a key written directly (None: the key was deleted)."""
    key_partition = table.data._key_partition
    if partition is None:
        key_partition.pop(key, None)
    else:
        key_partition[key] = partition


def keys_of_partition(table: Any, partition: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of a memory-store table's keys in one partition."""
    store = table.data
    data = store.data
    for key, part in list(store._key_partition.items()):
        if part == partition and key in data:
            yield key, data[key]


async def send_changelog(table: Any, items: Sequence[tuple[Any, bytes, int]]) -> list[Awaitable[Any]]:
    """Send changelog records ``(key, value, partition)`` of values written straight to the table's
    store; returns their delivery futures.

    ``table[key] = value`` is ``Table.on_key_set`` (``send_changelog`` + key TTL + sensors) + the store
    write: this is the same minus the unused TTL and sensors, with two differences: ``send_changelog``
    goes through faust's ``ProducerBuffer``, which makes the consumer stop delivering events while it
    holds over 100 records (a big checkpoint would stall processing), and it returns no delivery future.
    Each record carries the table's own ``_on_changelog_sent`` callback (RocksDB keeps the changelog
    offset for recovery with it). Yields to the event loop now and then so processing goes on."""
    topic = table.changelog_topic
    futures: list[Awaitable[Any]] = []
    for i, (key, value, partition) in enumerate(items, 1):
        fut = await topic.send(
            key=key,
            value=value,
            partition=partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
            callback=table._on_changelog_sent,
        )
        futures.append(fut)
        if i % 64 == 0:
            await asyncio.sleep(0)
    return futures


# -- producer and consumer ---------------------------------------------------------------------------
async def send(topic: faust.TopicT, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
    """Hand one record to faust's producer; returns aiokafka's delivery future."""
    return await topic.send(key=key, value=value, partition=partition)


async def flush_producer(app: faust.App) -> None:
    """Wait until Kafka has acknowledged everything sent through faust's producer (aiokafka's flush
    waits for every batch in flight)."""
    await app.producer.flush()


def key_partition(app: faust.App, topic: str, key: bytes) -> int:
    """The partition faust's producer (murmur2, like every Kafka client) picks for ``key``."""
    return int(app.producer.key_partition(topic, key).partition)


def highwater(app: faust.App, topic: str, partition: int) -> int | None:
    """The high watermark of an assigned input partition (None: not known yet). Raises LookupError when
    the partition is not assigned or faust has no metadata for it."""
    try:
        return cast("int | None", app.consumer.highwater(TP(topic, partition)))
    except Exception as exc:
        raise LookupError(f"{topic}[{partition}] not assigned") from exc


async def position(app: faust.App, topic: str, partition: int) -> int | None:
    """The consumer's position in an assigned partition (None: not known yet)."""
    return cast("int | None", await app.consumer.position(TP(topic, partition)))
