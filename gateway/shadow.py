"""Shadow fan-out: copies of live requests to candidate versions, never in the way.

A shadow call starts only once the primary has answered (or failed): started beside it,
the copy's runner, its reply and its record compete with the primary for the same few
cores and for the event loop, which cost the primary about a fifth of its one-row latency
on a two-core machine; started after it, they overlap the client's next request instead.
The copy runs under its own deadline, and is bounded per shadow version: when a version
already has ``limit`` copies in flight the new copy is dropped and counted, so a slow or
stalled shadow can neither queue work without bound nor delay the primary. ``send``
records the outcome (the ledger); errors are counted here and never reach the client.

With a ``relay`` (the default; ``gateway.relay``) the copies' gRPC calls are made by a
helper process, so that they cost the event loop that answers live traffic a framed
write and read instead of a whole client call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.relay import ShadowRelay
    from gateway.supervisor import Transport


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
    def __init__(self, limit: int, deadline_s: float, relay: ShadowRelay | None = None) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self.relay = relay
        # How copies travel to their runner: the relay process, or (None) this one's channel.
        self.via: Transport | None = relay.call if relay is not None else None
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

    async def close(self) -> None:
        """Stop the relay (after ``drain``)."""
        if self.relay is not None:
            await self.relay.stop()
