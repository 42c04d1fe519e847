"""One test per faust internal that ``processors.runtime.faust_glue`` relies on: an upgrade of faust that
changes one fails here, not in a production checkpoint. No broker: an App is built, never started."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import faust
import pytest
from faust.streams import Stream, current_event
from faust.tables.base import Collection

from processors.runtime import faust_glue


@pytest.fixture
def app() -> faust.App:
    return faust.App("glue-test", broker="kafka://localhost:1", store="memory://", web_enabled=False)


@pytest.fixture
def table(app: faust.App) -> faust.Table:
    return app.Table("t", default=None, key_type=bytes, value_type=bytes, partitions=4, store="memory://t")


def test_version_guard() -> None:
    faust_glue.check_version()  # the installed faust is supported
    with pytest.raises(ImportError, match="not supported"):
        faust_glue.check_version("0.16.0")
    with pytest.raises(ImportError):
        faust_glue.check_version("0.15.2")


class _Event:
    def __init__(self) -> None:
        self.message = SimpleNamespace(partition=3)


def test_enter_sets_the_event_faust_tables_read() -> None:
    event = _Event()
    faust_glue.enter(event)
    assert current_event() is event


def test_memory_store_is_a_dict_with_a_key_partition_map(table: faust.Table) -> None:
    faust_glue.store_dict(table)[b"k"] = b"v"
    faust_glue.track_partition(table, b"k", 2)
    assert list(faust_glue.keys_of_partition(table, 2)) == [(b"k", b"v")]
    assert list(faust_glue.keys_of_partition(table, 1)) == []
    faust_glue.track_partition(table, b"k", None)
    assert list(faust_glue.keys_of_partition(table, 2)) == []
    # and faust drops keys of partitions it no longer owns through that very map
    assert "_key_partition" in inspect.getsource(type(table.data).on_recovery_completed)


def test_changelog_send_uses_what_tables_have(table: faust.Table) -> None:
    assert callable(Collection._on_changelog_sent)
    assert table.changelog_topic.get_topic_name() == "glue-test-t-changelog"
    assert {"key", "value", "partition", "key_serializer", "value_serializer", "callback"} <= set(
        inspect.signature(table.changelog_topic.send).parameters
    )


def test_noack_take_and_manual_ack_exist() -> None:
    assert list(inspect.signature(Stream.noack_take).parameters)[:3] == ["self", "max_", "within"]
    assert inspect.iscoroutinefunction(Stream.ack)


def test_first_start_hook_runs_before_faust_s_own(app: faust.App) -> None:
    import asyncio

    calls: list[str] = []

    async def ours() -> None:
        calls.append("ours")

    original = app.on_first_start

    async def faust_s() -> None:
        calls.append("faust")
        await original()

    app.on_first_start = faust_s  # type: ignore[method-assign]
    faust_glue.before_first_start(app, ours)
    asyncio.run(app.on_first_start())
    assert calls == ["ours", "faust"]


def test_app_parts_the_runtime_reads(app: faust.App) -> None:
    assert hasattr(app.tables, "recovery") and hasattr(app.tables.recovery, "completed")
    assert callable(app.assignor.assigned_actives)
    assert callable(app.producer.key_partition) and inspect.iscoroutinefunction(app.producer.flush)
    from faust.transport.consumer import Consumer

    assert callable(Consumer.highwater) and inspect.iscoroutinefunction(Consumer.position)
    assert hasattr(app, "rebalancing")
    assert faust_glue.is_settling(app) is True  # not started: recovery has not completed


def test_stop_hook_runs_before_faust_stops_its_consumer_and_shutdown_hooks_after(app: faust.App) -> None:
    """``drive.checkpoint_while_stopping`` relies on this order: ``on_stop_begins`` handlers, then faust's
    consumer stop (``wait_empty`` waits for acks), then ``before_shutdown`` handlers; and on mode's
    ``Service.stop`` awaiting ``on_stop`` with ``should_stop`` already set (so app timers have ended)."""
    import asyncio

    from mode import Service

    calls: list[str] = []

    async def stop_consumer() -> None:
        calls.append("faust stops its consumer")

    async def begins() -> None:
        calls.append(f"stop begins (should_stop={app.should_stop})")

    async def shutdown() -> None:
        calls.append("before shutdown")

    app._stop_consumer = stop_consumer  # type: ignore[method-assign]
    faust_glue.on_stop_begins(app, begins)
    faust_glue.before_shutdown(app, shutdown)
    app._stopped.set()  # what Service.stop does first
    asyncio.run(app.on_stop())
    assert calls == ["stop begins (should_stop=True)", "faust stops its consumer", "before shutdown"]
    stop = inspect.getsource(Service.stop)
    assert stop.index("_stopped_set()") < stop.index("await self.on_stop()") < stop.index("_stop_children")
