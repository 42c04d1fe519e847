"""The error policy: retry a failing batch, isolate its records, quarantine the one that keeps failing."""

from __future__ import annotations

import asyncio

import pytest

from processors.runtime import BatchRunner, CheckpointFailed, RetryPolicy


class Processor:
    """Applies records to a list; ``poison`` records raise outside per-record handling."""

    def __init__(self, poison: set[str], transient: int = 0) -> None:
        self.poison = poison
        self.transient = transient  # the first N runs fail whatever they hold
        self.applied: list[str] = []
        self.acked: list[str] = []
        self.quarantined: list[tuple[str, str]] = []
        self.rewinds = 0

    async def process(self, events: list[str]) -> None:
        staged = list(events)
        self.applied.extend(staged)  # half-applied until the end
        if self.transient:
            self.transient -= 1
            raise ConnectionError("encoder not ready")
        for e in events:
            if e in self.poison:
                raise ValueError(f"cannot encode output of {e}")
        self.acked.extend(staged)

    async def rewind(self, events: list[str]) -> None:
        self.rewinds += 1
        del self.applied[len(self.applied) - len(events) :]

    async def quarantine(self, event: str, reason: str) -> None:
        self.quarantined.append((event, reason))
        self.acked.append(event)


def _runner(p: Processor, sleeps: list[float]) -> BatchRunner[str]:
    async def sleep(s: float) -> None:
        sleeps.append(s)

    return BatchRunner(p.process, p.rewind, p.quarantine, RetryPolicy(3, (0.1, 0.5)), sleep=sleep)


def test_a_healthy_batch_runs_once() -> None:
    p, sleeps = Processor(set()), []
    asyncio.run(_runner(p, sleeps).run(["a", "b"]))
    assert p.acked == ["a", "b"] and p.rewinds == 0 and sleeps == []


def test_a_transient_failure_is_retried_with_backoff_and_never_acked_meanwhile() -> None:
    p, sleeps = Processor(set(), transient=2), []
    asyncio.run(_runner(p, sleeps).run(["a", "b"]))
    assert p.acked == ["a", "b"]
    assert p.applied == ["a", "b"]  # each failed run was rewound
    assert sleeps == [0.1, 0.5] and p.quarantined == []


def test_the_record_that_keeps_failing_is_quarantined_and_the_rest_go_through() -> None:
    p, sleeps = Processor({"b"}), []
    asyncio.run(_runner(p, sleeps).run(["a", "b", "c"]))
    assert p.acked == ["a", "b", "c"]  # in order: the partition moves on
    assert [e for e, _ in p.quarantined] == ["b"]
    assert "failed 3 times" in p.quarantined[0][1] and "cannot encode output of b" in p.quarantined[0][1]
    assert p.applied == ["a", "c"]


def test_a_checkpoint_failure_is_not_a_record_problem() -> None:
    async def process(events: list[str]) -> None:
        raise CheckpointFailed("changelog refused")

    async def nothing(*_: object) -> None:
        raise AssertionError("must not rewind or quarantine")

    with pytest.raises(CheckpointFailed):
        asyncio.run(BatchRunner(process, nothing, nothing).run(["a"]))
