"""The in-process lane: an ONNX model run by the gateway itself, with no runner process.

``runner: inprocess`` in a model's model.yaml (or ``runner: {kind: inprocess, threads:
N}``) makes the gateway load each version's ``model.onnx`` into an ONNX Runtime session
of its own, instead of starting a runner process. A request then costs one gRPC hop (the
client's) instead of two: no serialization to a Unix socket, no second server, no thread
handoff in a runner. Use it for small, fast, trusted ONNX models whose callers count
tens of microseconds, typically the primary of a latency-critical model.

The trade-off: the model shares the gateway's process, memory and failure domain. The
gateway's RSS grows by ONNX Runtime (tens of MB, once) plus each session; a model that
crashes the process (a segfault in a custom operator, an out-of-memory kill) takes the
gateway and every other model down with it; there is no health check, no restart and no
isolation, and model threads compete with the gateway's own for its cores (each
``--workers`` process loads its own copy). Anything that is not a small, well-tested ONNX
graph belongs in a runner process, which is the default. Only ONNX versions can run in
process: a joblib, model.py or runner.yaml version of a model marked ``inprocess`` is
UNAVAILABLE with that reason (the rest of the gateway serves on).

To the router, an in-process version is one more runner (the ``Backend`` interface):
READY once loaded, the same signature, and the same answers, errors and metadata as the
ONNX runner process would give, because it runs the runner's own code
(``runners.server.InferenceServicer.answer``: check, decode, batch, predict, conform,
encode) on the same serialized request. Shadows, canaries and the ledger need nothing
else.

Where the model runs: **inline** by default (``runner.inline``), on the gateway's event
loop, right in the request's handler: a hand-off to a thread and back costs more than a
small model's whole call (about 0.1 ms at concurrency 1 on the development machine), and
under load the loop does no better by waiting. The loop does nothing else meanwhile, so
this is only for models that answer in well under a millisecond; calls never overlap,
so there is no batching, and a call is not cut short by its deadline.

With ``inline: false``, ``threads`` above 1 or a ``max_queue_delay_us``, each request is
answered in a small thread pool of its own: ``runner.threads`` model calls at once, as in
a runner, plus ``SPARE_THREADS`` so that requests arriving meanwhile can queue in the
batcher and be merged into one call (more with ``max_queue_delay_us``, where requests
wait for a batch to fill). ONNX Runtime releases the GIL while it runs a graph. The pool
is kept small because its threads share the GIL with the event loop: Python work in many
threads at once (decoding, encoding) would delay the loop's own. A pooled request that
outlives its deadline is answered DEADLINE_EXCEEDED at once; its model call, which cannot
be interrupted, finishes in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from concurrent.futures import ThreadPoolExecutor

import structlog

from gateway.onnx_fused import FusedOnnx
from gateway.repository import VersionEntry
from gateway.settings import GatewaySettings
from gateway.supervisor import MAX_IN_FLIGHT, Dispatched, RunnerState, Signature
from greenroom_client.errors import (
    DeadlineExceeded,
    GreenroomError,
    InternalError,
    ResourceExhausted,
    Unavailable,
)
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.config import ModelConfig
from runners.model import Model, load_model
from runners.server import POOL_SPARE, InferenceServicer, batcher_for

log = structlog.get_logger(__name__)

# Pool threads beyond ``runner.threads``: requests waiting in the batcher for a model call.
SPARE_THREADS = 3


def _as_forwarded(err: GreenroomError, where: str) -> GreenroomError:
    """The error as the gateway reports it when a runner process answers with ``err``
    (supervisor._translate): the same status and message, except that INTERNAL stays
    generic and UNAVAILABLE names the version."""
    if err.code in ("INTERNAL", "UNKNOWN"):
        log.error("runner internal error", where=where, details=err.message)
        return InternalError()
    if err.code == "UNAVAILABLE":
        return Unavailable(f"{where}: runner is unavailable ({err.message})")
    return err


class InProcessRunner:
    """One ONNX model version run inside the gateway (see the module docstring)."""

    def __init__(self, entry: VersionEntry, config: ModelConfig, settings: GatewaySettings):
        self.entry = entry
        self.config = config
        self.settings = settings
        self.where = f"model '{entry.model}' version '{entry.version}'"
        self.state = RunnerState.LOADING
        self.reason = "loading the model in process"
        self.signature: Signature | None = None
        self._servicer = InferenceServicer(entry.model, entry.version)
        # Requests that wait for a batch to fill each hold a pool thread: with a queue
        # delay, as many as a runner process's pool would hold (runners.server).
        spare = POOL_SPARE if config.runner.max_queue_delay_us else SPARE_THREADS
        self._pool = ThreadPoolExecutor(
            max_workers=config.runner.threads + spare,
            thread_name_prefix=f"inprocess-{entry.model}-{entry.version}",
        )
        self._inline = config.runner.runs_inline()
        self._fused: FusedOnnx | None = None  # inline only: requests never overlap there
        self._in_flight = 0
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(model=entry.model, version=entry.version)

    @property
    def in_flight(self) -> int:
        """Calls being answered (or waiting for a pool thread) right now."""
        return self._in_flight

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._load())

    async def wait_settled(self, timeout: float) -> None:
        """Until the load has succeeded or failed (or ``timeout``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)

    async def stop(self) -> None:
        self._set(RunnerState.UNAVAILABLE, "gateway is shutting down")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Queued calls are cancelled; a model call already running finishes on its own.
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._servicer.serving = None
        self._fused = None  # it holds the session too

    def _set(self, state: RunnerState, reason: str) -> None:
        if state != self.state or reason != self.reason:
            self._log.info("in-process runner state", state=state.value, reason=reason)
        self.state, self.reason = state, reason
        if state != RunnerState.LOADING:
            self._settled.set()

    async def _load(self) -> None:
        entry = self.entry
        if entry.kind != "onnx":
            artifact = "runner.yaml" if entry.kind == "external" else f"a {entry.kind} model"
            reason = (
                f"model.yaml says 'runner: inprocess', which runs only ONNX models "
                f"(model.onnx); this version has {artifact}: serve it with a runner process"
            )
            self._log.error("in-process runner cannot serve this version", reason=reason)
            self._set(RunnerState.UNAVAILABLE, reason)
            return
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(
                self._pool, load_model, entry.path, entry.model, entry.version, self.config
            )
        except Exception as exc:
            self._log.error("model failed to load", exc_info=exc)
            self._set(RunnerState.UNAVAILABLE, f"model failed to load: {exc}")
            return
        self._serve(model)

    def _serve(self, model: Model) -> None:
        options = self.config.runner
        batcher = batcher_for(model, options)
        self._servicer.set_model(model, batcher)
        if self._inline:
            self._fused = FusedOnnx.of(model)
        # model.yaml's declarations are already bound into the model's specs, exactly as a
        # runner process reports them in ModelMetadata and supervisor._specs reads them.
        self.signature = Signature(model.platform, list(model.inputs), list(model.outputs))
        self._log.info(
            "serving in process",
            platform=model.platform,
            threads=options.threads,
            max_batch_size=batcher.max_batch_size,
            inline=self._inline,
        )
        self._set(RunnerState.READY, "serving in process")

    # ---- calls ------------------------------------------------------------------------

    async def infer(
        self,
        request: bytes,
        timeout: float,
        after_dispatch: Dispatched | None = None,
        parsed: pb.ModelInferRequest | None = None,
    ) -> bytes:
        """Answer a serialized ModelInferRequest with a serialized ModelInferResponse;
        ``after_dispatch`` runs once the request is queued for a pool thread. ``parsed``:
        the same request already parsed (the gateway parses it to route it), so that the
        inline lane does not parse it twice."""
        if self.state != RunnerState.READY:
            raise Unavailable(f"{self.where} is not ready: {self.reason}")
        if self._in_flight >= MAX_IN_FLIGHT:
            raise ResourceExhausted(f"{self.where} has {self._in_flight} requests in flight")
        self._in_flight += 1
        try:
            if self._inline:
                if after_dispatch is not None:
                    after_dispatch()
                return self._answer_inline(request, parsed)
            context = contextvars.copy_context()  # log lines keep the request's fields
            call = asyncio.get_running_loop().run_in_executor(
                self._pool, context.run, self._answer, request
            )
            if after_dispatch is not None:
                after_dispatch()
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError:
            raise DeadlineExceeded(f"{self.where}: no answer within {timeout:.3g}s") from None
        finally:
            self._in_flight -= 1

    def _answer_inline(self, request: bytes, parsed: pb.ModelInferRequest | None) -> bytes:
        message = pb.ModelInferRequest.FromString(request) if parsed is None else parsed
        if self._fused is not None:
            fused = self._fused.answer(message)
            if fused is not None:
                return fused
        return self._answer(request, message)

    def _answer(self, request: bytes, message: pb.ModelInferRequest | None = None) -> bytes:
        """Inline or in a pool thread: what the ONNX runner process would answer."""
        if message is None:
            message = pb.ModelInferRequest.FromString(request)
        try:
            response = self._servicer.answer(message)
        except GreenroomError as err:
            raise _as_forwarded(err, self.where) from None
        return response.SerializeToString()
