"""Shadow fan-out: copies of live requests to candidate versions, never in the way.

A shadow call starts right after the primary call has been dispatched, so that it is
scheduled behind the primary and its runner computes while the primary's does (on a
two-core machine, starting it only once the primary had answered measured worse: the copy
then competes with the client's next request). The copy runs under its own deadline and
is bounded per shadow version: when a version already has ``limit`` copies in flight the
new copy is dropped and counted, so a slow or stalled shadow can neither queue work
without bound nor delay the primary. ``send`` records the outcome (the ledger); errors
are counted here and never reach the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class LaneStats:
    """Counters of one shadow version."""

    sent: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    in_flight: int = 0


Send = Callable[[str, float], Awaitable[bytes]]  # (version, timeout) -> serialized reply


class ShadowFanout:
    def __init__(self, limit: int, deadline_s: float) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self.lanes: dict[tuple[str, str], LaneStats] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def lane(self, model: str, version: str) -> LaneStats:
        return self.lanes.setdefault((model, version), LaneStats())

    def fan_out(self, model: str, versions: list[str], send: Send) -> None:
        """Start one copy per version that has room; count the others as dropped."""
        for version in versions:
            lane = self.lane(model, version)
            if lane.in_flight >= self.limit:
                lane.dropped += 1
                continue
            lane.in_flight += 1
            lane.sent += 1
            task = asyncio.create_task(self._run(version, lane, send))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, version: str, lane: LaneStats, send: Send) -> None:
        try:
            await send(version, self.deadline_s)
            lane.completed += 1
        except Exception:  # recorded by ``send``; the client never sees a shadow's error
            lane.failed += 1
        finally:
            lane.in_flight -= 1

    def drops(self, model: str) -> dict[str, int]:
        return {v: lane.dropped for (m, v), lane in self.lanes.items() if m == model}

    async def drain(self, timeout: float) -> None:
        """Let copies in flight finish (on shutdown), up to ``timeout``."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
