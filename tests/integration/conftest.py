"""Fixtures shared by the scheduler's integration tests: the output reader and the producer (module-scoped:
each module starts its own worker, with its own settings, on the session's stack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_scheduler_itsupport import Feed, Outputs

from core.settings import Settings


@pytest.fixture(scope="module")
def outputs(stack: Settings) -> Iterator[Outputs]:
    out = Outputs(stack)
    yield out
    out.close()


@pytest.fixture(scope="module")
def feed(stack: Settings) -> Iterator[Feed]:
    f = Feed(stack)
    yield f
    f.close()
