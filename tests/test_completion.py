"""to_completion: work that a cancelled caller must not leave half done."""

from __future__ import annotations

import asyncio

import pytest

from gateway.completion import drain, to_completion


def test_a_cancelled_caller_waits_for_the_work_then_is_cancelled() -> None:
    steps: list[str] = []

    async def work(release: asyncio.Event) -> str:
        steps.append("saved")
        await release.wait()
        steps.append("applied")
        return "done"

    async def scenario() -> None:
        release = asyncio.Event()
        caller = asyncio.create_task(to_completion(work(release)))
        await asyncio.sleep(0.01)
        caller.cancel()
        await asyncio.sleep(0.01)
        caller.cancel()  # a second cancellation changes nothing either
        await asyncio.sleep(0.01)
        assert not caller.done() and steps == ["saved"]
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(scenario())
    assert steps == ["saved", "applied"]


def test_results_and_errors_pass_through() -> None:
    async def fails() -> None:
        raise ValueError("the save failed")

    async def answers() -> int:
        return 42

    async def scenario() -> None:
        assert await to_completion(answers()) == 42
        with pytest.raises(ValueError, match="the save failed"):
            await to_completion(fails())

    asyncio.run(scenario())


def test_work_that_is_itself_cancelled_cancels_the_caller() -> None:
    async def scenario() -> None:
        work = asyncio.ensure_future(asyncio.sleep(10))
        caller = asyncio.create_task(to_completion(work))
        await asyncio.sleep(0.01)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(scenario())


def test_shutdown_drains_work_whose_caller_left() -> None:
    """grpc.aio's server.stop does not wait for it: the gateway's stop does, before it
    stops the ledger the work writes to."""
    finished: list[str] = []

    async def work() -> None:
        await asyncio.sleep(0.2)
        finished.append("saved")

    async def scenario() -> None:
        caller = asyncio.create_task(to_completion(work()))
        await asyncio.sleep(0.01)
        caller.cancel()
        await drain(timeout=5.0)
        assert finished == ["saved"]
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(scenario())
