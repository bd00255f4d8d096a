"""Checks that run on a schedule, one task per model: automatic promotion, the gauges.

A check that fails is logged and the schedule goes on: a bad round must not end it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class Periodic:
    """Subclasses say how often (``interval``) and what (``check``); ``wait_first``: the
    first round comes after one interval rather than at once."""

    what = "periodic check"
    wait_first = True

    def __init__(self, sleep: Sleep = asyncio.sleep) -> None:
        self.sleep = sleep
        self._tasks: list[asyncio.Task[None]] = []

    def interval(self, model: str) -> float:
        raise NotImplementedError

    async def check(self, model: str) -> object:
        raise NotImplementedError

    def start_for(self, models: Iterable[str]) -> None:
        for model in models:
            self._tasks.append(asyncio.create_task(self._loop(model), name=f"{self.what} {model}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self, model: str) -> None:
        if self.wait_first:
            await self.sleep(self.interval(model))
        while True:
            try:
                await self.check(model)
            except Exception:  # a failed round must not end the schedule
                log.exception(f"{self.what} failed", model=model)
            await self.sleep(self.interval(model))
