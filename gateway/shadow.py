"""Shadow fan-out: copies of live requests to candidate versions, never in the way.

A shadow copy starts right after the primary call has been dispatched, so that it is
scheduled behind the primary (on a two-core machine, starting it only once the primary had
answered measured worse: the copy then competes with the client's next request). Each
copy runs under its own deadline and is bounded per shadow version: when a version already
has ``limit`` copies queued or in flight the new copy is dropped and counted, so a slow or
stalled shadow can neither queue work without bound nor delay the primary. ``send``
records the outcome (the ledger); errors are counted here and never reach the client.

**Merged copies.** A shadow call costs the gateway a whole gRPC client call and its
runner a whole server call, about as much for one row as for a hundred, and on a small
machine that work competes with the primary's. So copies that can be merged (raw
contents, every input with the same row count, no parameters, the shadow's signature
batched on every tensor) wait up to ``window_s`` for others to the same version with the
same input layout and requested outputs, up to ``max_rows`` rows, and go as one request;
``send`` records each copy's own rows of the answer. The window only delays the copy, never
the primary; a copy's recorded latency is that of the call that carried it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.settings import GatewaySettings
from greenroom_client.tensors import TensorSpec
from greenroom_proto.inference import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from gateway.tracing import GatewayTracing


@dataclass
class LaneStats:
    """Counters of one shadow version (in copies, however they were carried)."""

    sent: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Copy:
    """One request copied to a shadow: parsed, as forwarded, and how it may merge."""

    request: pb.ModelInferRequest
    request_id: str
    raw: bytes
    key: Hashable | None  # copies merge only with copies of the same key; None: never
    rows: int


# (version, copies, timeout): make the call (merged if several copies), record each copy's
# outcome, and raise if the call failed.
Send = Callable[[str, Sequence[Copy], float], Awaitable[None]]


def merge_key(request: pb.ModelInferRequest) -> tuple[Hashable | None, int]:
    """What a copy must share with others to travel in one request, and its row count;
    (None, 0) when it must travel alone."""
    if not request.raw_input_contents or request.parameters or not request.inputs:
        return None, 0
    rows = -1
    layout = []
    for tensor in request.inputs:
        if not tensor.shape or tensor.parameters or rows not in (-1, tensor.shape[0]):
            return None, 0
        rows = tensor.shape[0]
        layout.append((tensor.name, tensor.datatype, tuple(tensor.shape[1:])))
    if rows < 1 or any(out.parameters for out in request.outputs):
        return None, 0
    return (tuple(layout), tuple(out.name for out in request.outputs)), rows


def batched(specs: Sequence[TensorSpec]) -> bool:
    """Whether a signature lets rows be merged: -1 first on every tensor."""
    return bool(specs) and all(spec.shape and spec.shape[0] == -1 for spec in specs)


def merged_request(copies: Sequence[Copy], request_id: str) -> bytes:
    """One request holding every copy's rows, in order (the copies share a key)."""
    first = copies[0].request
    merged = pb.ModelInferRequest(model_name=first.model_name, id=request_id)
    total = sum(copy.rows for copy in copies)
    for index, tensor in enumerate(first.inputs):
        merged.inputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=[total, *tensor.shape[1:]]
        )
        merged.raw_input_contents.append(
            b"".join(copy.request.raw_input_contents[index] for copy in copies)
        )
    for output in first.outputs:
        merged.outputs.add(name=output.name)
    return merged.SerializeToString()


@dataclass
class _Window:
    """Copies waiting to be merged for one version, and how to send them."""

    lane: LaneStats
    send: Send
    key: Hashable | None = None
    copies: list[Copy] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None
    # With tracing on: the first copy's request context, so that the merged call's span
    # is its child however the window closes (timer, full, or a copy that did not fit).
    context: contextvars.Context | None = None


class ShadowFanout:
    def __init__(
        self, limit: int, deadline_s: float, window_s: float = 0.0, max_rows: int = 256
    ) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self.window_s = window_s
        self.max_rows = max_rows
        self.lanes: dict[tuple[str, str], LaneStats] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.tracing: GatewayTracing | None = None  # set when tracing is on

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ShadowFanout:
        return cls(
            settings.shadow_limit,
            settings.shadow_deadline_s,
            settings.shadow_batch_window_ms / 1e3,
            settings.shadow_batch_rows,
        )

    def lane(self, model: str, version: str) -> LaneStats:
        return self.lanes.setdefault((model, version), LaneStats())

    def fan_out(
        self,
        model: str,
        versions: list[str],
        copy: Copy,
        send: Send,
        mergeable: Callable[[str], bool],
    ) -> None:
        """Queue the copy for each version that has room; count the others as dropped.
        ``mergeable(version)``: whether that version's signature allows merging."""
        for version in versions:
            lane = self.lane(model, version)
            if lane.in_flight >= self.limit:
                lane.dropped += 1
                continue
            lane.in_flight += 1
            lane.sent += 1
            lone = copy.key is None or self.window_s <= 0 or copy.rows >= self.max_rows
            if lone or not mergeable(version):
                self._start(version, lane, [copy], send)
            else:
                self._add((model, version), lane, copy, send)

    def _add(self, where: tuple[str, str], lane: LaneStats, copy: Copy, send: Send) -> None:
        window = self._windows.get(where)
        if window is not None and (
            window.key != copy.key or window.rows + copy.rows > self.max_rows
        ):
            self._flush(where)
            window = None
        if window is None:
            context = contextvars.copy_context() if self.tracing is not None else None
            window = self._windows[where] = _Window(lane, send, copy.key, context=context)
            window.timer = asyncio.get_running_loop().call_later(self.window_s, self._flush, where)
        window.copies.append(copy)
        window.rows += copy.rows
        if window.rows >= self.max_rows:
            self._flush(where)

    def _flush(self, where: tuple[str, str]) -> None:
        window = self._windows.pop(where, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        self._start(where[1], window.lane, window.copies, window.send, window.context)

    def _start(
        self,
        version: str,
        lane: LaneStats,
        copies: list[Copy],
        send: Send,
        context: contextvars.Context | None = None,
    ) -> None:
        task = asyncio.create_task(self._run(version, lane, copies, send), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, version: str, lane: LaneStats, copies: list[Copy], send: Send) -> None:
        try:
            if self.tracing is None:
                await send(version, copies, self.deadline_s)
            else:
                ids = [copy.request_id for copy in copies]
                with self.tracing.shadow(copies[0].request.model_name, version, ids):
                    await send(version, copies, self.deadline_s)
            lane.completed += len(copies)
        except Exception:  # recorded by ``send``; the client never sees a shadow's error
            lane.failed += len(copies)
        finally:
            lane.in_flight -= len(copies)

    def drops(self, model: str) -> dict[str, int]:
        return {v: lane.dropped for (m, v), lane in self.lanes.items() if m == model}

    async def drain(self, timeout: float) -> None:
        """Send what the windows hold, then let copies in flight finish (on shutdown),
        up to ``timeout``."""
        for where in list(self._windows):
            self._flush(where)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
