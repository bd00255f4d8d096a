"""Several runner processes for one model version, chosen by least outstanding requests.

``instances: N`` in model.yaml's ``runner`` section starts N identical runner processes
for every version of the model (each its own socket, health checks and restarts). A
single Python runner answers one model call at a time per ``threads``; replicas put more
cores behind one version without touching the model's code, and keep serving while one
of them restarts.

Each request goes to the READY replica with the fewest requests in flight from this
gateway (ties: the one picked least recently), which beats round robin when answers
take uneven time (a big batch, a replica in a GC pause): a slow replica accumulates
outstanding calls and stops being chosen. A replica that died since its last health check
answers UNAVAILABLE; the request then gets one more try on another replica. The set is
READY when any replica is; its reason lists the others while some are down.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

from gateway.repository import VersionEntry
from gateway.supervisor import Dispatched, Runner, RunnerState, Signature
from greenroom_client.errors import Unavailable
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.config import ModelConfig


class Backend(Protocol):
    """What the router and the servicer need of whatever serves one model version."""

    entry: VersionEntry
    config: ModelConfig
    where: str

    @property
    def state(self) -> RunnerState: ...

    @property
    def reason(self) -> str: ...

    @property
    def signature(self) -> Signature | None: ...

    def start(self) -> None: ...

    async def wait_settled(self, timeout: float) -> None: ...

    async def stop(self) -> None: ...

    async def infer(
        self,
        request: bytes,
        timeout: float,
        after_dispatch: Dispatched | None = None,
        parsed: pb.ModelInferRequest | None = None,
    ) -> bytes: ...


class ReplicaSet:
    """N ``Runner`` replicas of one version behind the ``Backend`` interface."""

    def __init__(self, replicas: list[Runner]) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one runner")
        self.replicas = replicas
        self.entry = replicas[0].entry
        self.config = replicas[0].config
        self.where = replicas[0].where
        self._turn = itertools.count()
        self._last_pick = [0] * len(replicas)

    @property
    def state(self) -> RunnerState:
        states = {r.state for r in self.replicas}
        if RunnerState.READY in states:
            return RunnerState.READY
        return self.replicas[0].state

    @property
    def reason(self) -> str:
        down = [(i, r) for i, r in enumerate(self.replicas) if r.state != RunnerState.READY]
        if not down:
            return "serving"
        ready = len(self.replicas) - len(down)
        details = "; ".join(f"replica {i}: {r.reason}" for i, r in down)
        return f"{ready} of {len(self.replicas)} replicas ready ({details})"

    @property
    def signature(self) -> Signature | None:
        return next((r.signature for r in self.replicas if r.signature is not None), None)

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    async def wait_settled(self, timeout: float) -> None:
        await asyncio.gather(*(r.wait_settled(timeout) for r in self.replicas))

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas))

    def pick(self, avoid: Runner | None = None) -> Runner | None:
        """The READY replica (other than ``avoid``) with the fewest requests in flight,
        ties to the one picked least recently; None when no replica is READY."""
        best: int | None = None
        for index, replica in enumerate(self.replicas):
            if replica.state != RunnerState.READY or replica is avoid:
                continue
            key = (replica.in_flight, self._last_pick[index])
            if best is None or key < (self.replicas[best].in_flight, self._last_pick[best]):
                best = index
        if best is None:
            return None
        self._last_pick[best] = next(self._turn)
        return self.replicas[best]

    async def infer(
        self,
        request: bytes,
        timeout: float,
        after_dispatch: Dispatched | None = None,
        parsed: pb.ModelInferRequest | None = None,
    ) -> bytes:
        """On the chosen replica; if it turns out to be gone (UNAVAILABLE: it died before
        its health check noticed), once more on another READY one. With none READY, the
        first replica's ``infer`` raises UNAVAILABLE with its reason. Replicas are runner
        processes, which parse the bytes themselves: ``parsed`` is not passed on."""
        chosen = self.pick()
        if chosen is None:
            return await self.replicas[0].infer(request, timeout, after_dispatch)
        try:
            return await chosen.infer(request, timeout, after_dispatch)
        except Unavailable:
            other = self.pick(avoid=chosen)
            if other is None:
                raise
            return await other.infer(request, timeout)
