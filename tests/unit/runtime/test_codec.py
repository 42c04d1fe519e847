"""``AgentCodec.watch``: a faust send that fails calls the worker's failure handler (no broker)."""

from __future__ import annotations

import asyncio

import faust

from core.settings import Settings
from processors.runtime.codec import AgentCodec


def test_a_failed_faust_send_calls_on_failed_and_a_delivered_one_does_not() -> None:
    failures: list[BaseException] = []
    app = faust.App("codec-test", broker="kafka://localhost:1", store="memory://", web_enabled=False)
    codec = AgentCodec(app, Settings(), "test", on_failed=failures.append)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        delivered, refused = loop.create_future(), loop.create_future()
        assert codec.watch(delivered) is delivered and codec.watch(refused) is refused
        delivered.set_result("metadata")
        refused.set_exception(RuntimeError("MessageSizeTooLarge"))
        await asyncio.sleep(0)  # done-callbacks run on the next loop turn

    asyncio.run(main())
    assert [str(e) for e in failures] == ["MessageSizeTooLarge"]
