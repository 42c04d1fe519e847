"""The plain processor loop's timers: a body runs every interval until stopping, a failure is fatal."""

from __future__ import annotations

import asyncio

from processors.runtime.loop import run_every


def test_a_timer_runs_its_body_until_stopping_and_hands_a_failure_to_fatal() -> None:
    async def main() -> None:
        stopping = asyncio.Event()
        runs: list[int] = []
        failures: list[BaseException] = []

        async def body() -> None:
            runs.append(len(runs))
            if len(runs) == 2:
                raise ValueError("tick broke")
            if len(runs) == 3:
                stopping.set()

        await asyncio.wait_for(run_every(0.001, body, failures.append, stopping), 10)
        assert runs == [0, 1, 2]
        assert [str(e) for e in failures] == ["tick broke"]

    asyncio.run(main())
