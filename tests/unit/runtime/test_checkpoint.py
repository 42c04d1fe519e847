"""The checkpoint protocol, driven directly with in-memory links (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import pytest

from processors.runtime import Checkpointer, CheckpointFailed


class Log:
    """Records the order of what the links were asked to do."""

    def __init__(self) -> None:
        self.steps: list[str] = []


class Outputs:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.futures: list[asyncio.Future[Any]] = []

    def send(self, fail: BaseException | None = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        self._fail = fail
        return fut

    async def flush(self) -> None:
        self.log.steps.append("flush outputs")
        for fut in self.futures:
            if not fut.done():
                fut.set_exception(self._fail) if self._fail else fut.set_result(None)
                if self._fail:
                    fut.exception()


class State:
    def __init__(self, log: Log, fail_send: bool = False) -> None:
        self.log = log
        self.store: dict[str, str] = {}
        self.changelog: list[asyncio.Future[Any]] = []
        self.fail_send = fail_send

    def prepare(self, dirty: dict[str, str]) -> list[tuple[str, str]]:
        self.log.steps.append(f"write {sorted(dirty)}")
        self.store.update(dirty)
        return sorted(dirty.items())

    async def send(self, prepared: list[tuple[str, str]]) -> Sequence[Awaitable[Any]]:
        self.log.steps.append(f"send changelog {len(prepared)}")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.changelog.append(fut)
        return [fut]


class Inputs:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.acked: list[str] = []

    async def ack(self, events: Sequence[str]) -> None:
        self.log.steps.append(f"ack {list(events)}")
        self.acked.extend(events)


def _checkpointer(log: Log, **kw: Any) -> tuple[Checkpointer[str, str, Any], Outputs, State, Inputs]:
    outputs, state, inputs = Outputs(log), State(log), Inputs(log)
    return Checkpointer(outputs, state, inputs, **kw), outputs, state, inputs


async def _drain() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_outputs_then_state_then_acks() -> None:
    async def main() -> None:
        log = Log()
        cp, outputs, state, inputs = _checkpointer(log)
        async with cp.applying:
            cp.add(["e1", "e2"], {"site-a": "e2"}, [outputs.send()])
        await cp.checkpoint()
        assert inputs.acked == []  # the changelog record is not acknowledged yet
        state.changelog[0].set_result(None)
        await _drain()
        assert log.steps == ["flush outputs", "write ['site-a']", "send changelog 1", "ack ['e1', 'e2']"]

    asyncio.run(main())


def test_an_output_that_fails_leaves_the_batch_unacked_and_no_state_written() -> None:
    async def main() -> None:
        log = Log()
        cp, outputs, state, inputs = _checkpointer(log)
        async with cp.applying:
            cp.add(["e1"], {"site-a": "e1"}, [outputs.send(fail=RuntimeError("broker said no"))])
        with pytest.raises(CheckpointFailed):
            await cp.checkpoint()
        assert state.store == {} and inputs.acked == []
        with pytest.raises(CheckpointFailed):  # and it stays failed: nothing later is acked either
            await cp.checkpoint()

    asyncio.run(main())


def test_a_state_record_that_fails_is_never_acked() -> None:
    async def main() -> None:
        log = Log()
        cp, outputs, state, inputs = _checkpointer(log)
        async with cp.applying:
            cp.add(["e1"], {"site-a": "e1"})
        await cp.checkpoint()
        state.changelog[0].set_exception(RuntimeError("changelog refused"))
        await _drain()
        assert inputs.acked == []
        assert isinstance(cp.failed, RuntimeError)

    asyncio.run(main())


def test_checkpoints_ack_in_order_even_when_a_later_one_is_acknowledged_first() -> None:
    async def main() -> None:
        log = Log()
        cp, outputs, state, inputs = _checkpointer(log)
        for event in ("e1", "e2"):
            async with cp.applying:
                cp.add([event], {event: event})
            await cp.checkpoint()
        state.changelog[1].set_result(None)
        await _drain()
        assert inputs.acked == []  # e2 waits for e1's checkpoint
        state.changelog[0].set_result(None)
        await _drain()
        assert inputs.acked == ["e1", "e2"]

    asyncio.run(main())


def test_due_by_time_or_count() -> None:
    now = [100.0]
    log = Log()

    async def main() -> None:
        cp, *_ = _checkpointer(log, every_s=0.5, every_events=3, clock=lambda: now[0])
        assert not cp.due()
        cp.add(["e1"], {})
        assert not cp.due()
        now[0] += 0.6
        assert cp.due()
        cp.reset()
        cp.add(["a", "b", "c"], {})
        assert cp.due()

    asyncio.run(main())


def test_untracked_outputs_are_flushed_before_state() -> None:
    async def main() -> None:
        log = Log()
        cp, outputs, state, inputs = _checkpointer(log)
        async with cp.applying:
            cp.add(["e1"], {"k": "e1"}, untracked=1)  # a dead letter sent without a future
        await cp.checkpoint()
        assert log.steps[:2] == ["flush outputs", "write ['k']"]

    asyncio.run(main())
