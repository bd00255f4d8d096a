"""The V2 inference service at the gateway's edge: protobuf in, domain call, protobuf out.

ModelInfer and ModelStreamInfer take the request as bytes: the gateway parses it to route
and validate, then forwards the client's own bytes to the runner (adding only an id when
the client sent none) and returns the runner's bytes unchanged. Tensors are never
re-encoded on the way through. Errors are translated to a gRPC status here, once.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError

from gateway import ids, wire
from gateway.recording import CANCELLED, Recorder
from gateway.router import Plan, Router, check_request, require_model_name, signature_of
from gateway.settings import GatewaySettings
from gateway.shadow import Copy, ShadowFanout, batched, merge_key, merged_request
from gateway.supervisor import RunnerState
from greenroom_client.errors import (
    DeadlineExceeded,
    GreenroomError,
    InternalError,
    InvalidArgument,
    InvalidInput,
)
from greenroom_client.tensors import describe
from greenroom_proto.inference import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.tracing import GatewayTracing

log = structlog.get_logger(__name__)

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["model_repository", "streaming", "health", "reflection"]
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one translation from an exception to what the client is told."""
    if isinstance(exc, GreenroomError):
        return grpc.StatusCode[exc.code], exc.message
    log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, InternalError().message


def edge(fn: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Wraps an RPC method: any exception leaves as a status, translated by ``_status``."""

    @functools.wraps(fn)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except Exception as exc:  # translated below; abort raises its own exception
            code, message = _status(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


# A handler cancelled this close to its deadline was cancelled by the deadline (grpc.aio's
# clock and the runner call's timer fire within moments of each other).
DEADLINE_SLACK_S = 0.01


def _cancelled(latency_ms: float, timeout_s: float) -> str:
    """The status of a call whose handler was cancelled: the client's deadline passing
    counts against the version (DEADLINE_EXCEEDED, as if the runner's timer had fired
    first); a client that gave up before it is CANCELLED, left out of reports."""
    late = latency_ms / 1e3 >= timeout_s - DEADLINE_SLACK_S
    return DeadlineExceeded.code if late else CANCELLED


def _code_of(exc: Exception) -> str:
    """The status name the client is told for ``exc`` (INTERNAL for a bug)."""
    return exc.code if isinstance(exc, GreenroomError) else InternalError.code


def _failure_code(exc: BaseException, latency_ms: float, timeout_s: float) -> str:
    """The status a failed primary call is recorded with: the one the client is told."""
    if isinstance(exc, asyncio.CancelledError):
        return _cancelled(latency_ms, timeout_s)
    assert isinstance(exc, Exception)
    return _code_of(exc)


def _parse(raw: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        raise InvalidArgument("request is not a valid ModelInferRequest") from None


def _size_problem(request: pb.ModelInferRequest, size: int, limit: int) -> InvalidInput:
    def weight(index: int) -> int:
        if request.raw_input_contents:
            return len(request.raw_input_contents[index])
        return request.inputs[index].contents.ByteSize()

    largest = max(range(len(request.inputs)), key=weight, default=None)
    name = request.inputs[largest].name if largest is not None else "(none)"
    return InvalidInput(name, f"request is {size} bytes, over the {limit}-byte limit")


def _answer_too_large(size: int, limit: int) -> InvalidArgument:
    """The answer could not be sent (the transport would refuse it): the request asked
    for more than the limit allows, and fewer rows per request is the fix."""
    return InvalidArgument(
        f"the answer is {size} bytes, over the {limit}-byte limit: send fewer rows per request"
    )


class InferenceServicer:
    def __init__(
        self,
        router: Router,
        settings: GatewaySettings,
        shadows: ShadowFanout,
        recorder: Recorder,
        *,
        metrics: Metrics | None = None,
        tracing: GatewayTracing | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        self.shadows = shadows
        self.recorder = recorder
        self.metrics = metrics
        self.tracing = tracing
        self.version = importlib.metadata.version("greenroom")

    async def infer_bytes(self, raw: bytes, timeout: float) -> bytes:
        request = _parse(raw)
        if len(raw) > self.settings.max_message_bytes:
            raise _size_problem(request, len(raw), self.settings.max_message_bytes)
        require_model_name(request.model_name)
        model, request_id = request.model_name, request.id
        structlog.contextvars.bind_contextvars(
            model=model, version=request.model_version, request_id=request_id
        )
        specs = describe(request.inputs, request.raw_input_contents)
        plan = self.router.plan(model, request.model_version)
        check_request(plan.runner, specs, [out.name for out in request.outputs])
        if not request_id:
            request_id = ids.request_id()
            raw = wire.with_string(raw, 3, request_id)
            request.id = request_id  # the message stays the bytes' twin

        version = plan.runner.entry.version
        if self.tracing is not None:
            self.tracing.routed(model, version, plan.role, request_id)
        began = time.perf_counter()

        def fan_out() -> None:
            key, rows = merge_key(request)
            copy = Copy(request, request_id, raw, key, rows)
            self.shadows.fan_out(model, plan.shadows, copy, self._shadow, self._mergeable(model))

        try:
            reply = await plan.runner.infer(
                raw, timeout, fan_out if plan.shadows else None, parsed=request
            )
        except (Exception, asyncio.CancelledError) as exc:
            # grpc.aio cancels the handler when the client cancels, or when the client's
            # deadline passes before the runner call's own timer (the same deadline) says
            # so: the request stays on record either way, beside its shadow copy. So does
            # one that met a bug (INTERNAL, as the client is told).
            latency = (time.perf_counter() - began) * 1e3
            code = _failure_code(exc, latency, timeout)
            self.recorder.failed(
                request,
                request_id=request_id,
                version=version,
                role=plan.role,
                latency_ms=latency,
                status=code,
            )
            raise
        latency = (time.perf_counter() - began) * 1e3
        if len(reply) > self.settings.max_message_bytes:
            problem = _answer_too_large(len(reply), self.settings.max_message_bytes)
            self.recorder.failed(
                request, request_id=request_id, version=version, role=plan.role,
                latency_ms=latency, status=problem.code,
            )  # fmt: skip
            raise problem
        # Recorded once the answer is on its way: grpc.aio sends it as this coroutine
        # returns, and the callback runs at the loop's next turn, before any later event.
        asyncio.get_running_loop().call_soon(
            self._record_answer, reply, plan, latency, request, len(raw)
        )
        return reply

    def _record_answer(
        self, reply: bytes, plan: Plan, latency: float, request: pb.ModelInferRequest, size: int
    ) -> None:
        """The answer's record (and its count and latency in the metrics), and its inputs
        when sampled. Off the answer's path: in the in-process lane at concurrency 1 this
        gave p50 / echo 1.148 -> 1.094 (median of eight interleaved rounds); the work is
        the same, it only comes after the send, so a scrape of the metrics racing the
        reply may miss it by a loop turn. A failure here loses the record (counted as
        dropped) or the sample, never the answer."""
        model, version = request.model_name, plan.runner.entry.version
        try:
            self.recorder.answered(reply, model, version, plan.role, latency)
        except Exception:
            log.exception("answer not recorded", model=model, version=version)
            self.recorder.ledger.record_lost()
        try:
            config = self.router.models[model].config
            rate = config.monitoring.input_sample_rate
            if rate and (rate >= 1.0 or random.random() < rate):
                self.recorder.inputs(request, request.id, config.features, size)
        except Exception:
            log.exception("inputs not sampled", model=model, version=version)

    def _mergeable(self, model: str) -> Callable[[str], bool]:
        def mergeable(version: str) -> bool:
            signature = self.router.resolve(model, version).signature
            return signature is not None and batched([*signature.inputs, *signature.outputs])

        return mergeable

    async def _shadow(self, version: str, copies: Sequence[Copy], timeout: float) -> None:
        """One shadow call carrying ``copies`` (merged when several), each copy recorded
        whatever happens; errors stay in the fan-out."""
        model = copies[0].request.model_name
        raw = copies[0].raw if len(copies) == 1 else merged_request(copies, ids.request_id())
        began = time.perf_counter()
        try:
            reply = await self.router.resolve(model, version).infer(raw, timeout)
        except Exception as exc:
            latency = (time.perf_counter() - began) * 1e3
            code = _code_of(exc)
            for copy in copies:
                self.recorder.failed(
                    copy.request,
                    request_id=copy.request_id,
                    version=version,
                    role="shadow",
                    latency_ms=latency,
                    status=code,
                )
            raise
        latency = (time.perf_counter() - began) * 1e3
        if len(copies) == 1:
            self.recorder.answered(reply, model, version, "shadow", latency)
            return
        total, start = sum(copy.rows for copy in copies), 0
        log.debug("shadow copies merged", version=version, copies=len(copies), rows=total)
        for copy in copies:
            rows = (start, start + copy.rows)
            self.recorder.answered(
                reply, model, version, "shadow", latency,
                request_id=copy.request_id, rows=rows, total_rows=total,
            )  # fmt: skip
            start += copy.rows

    async def observed(self, raw: bytes, timeout: float, context: Any) -> bytes:
        """``infer_bytes``, plus what the metrics and tracing need at the edge: a request
        refused before it reached a model is counted here (the others were counted as
        answered), and with tracing on the request runs under its span."""
        metrics, tracing = self.metrics, self.tracing
        if metrics is None and tracing is None:
            return await self.infer_bytes(raw, timeout)
        if metrics is not None:
            metrics.begin()
        try:
            if tracing is None:
                return await self.infer_bytes(raw, timeout)
            with tracing.request(context.invocation_metadata()):
                return await self.infer_bytes(raw, timeout)
        except Exception as exc:
            if metrics is not None:
                name = wire.leading_string(raw, 1)
                model = name if name is not None and name in self.router.models else ""
                metrics.refused(model, _code_of(exc))
            raise

    # ---- RPCs -------------------------------------------------------------------------

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        """What is left of the client's deadline (the settings' default without one)."""
        remaining = context.time_remaining()
        return self.settings.default_deadline_s if remaining is None else remaining

    @edge
    async def ModelInfer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self.observed(raw, self._timeout(context), context)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Triton's form: each request gets one response, or an error message in its place.
        The stream's deadline bounds every request in it, as a unary call's does, and
        ends the stream DEADLINE_EXCEEDED when it passes: a request cut short by it gets
        no message that would let the stream end OK before the client's own timer."""
        async for raw in requests:
            try:
                reply = await self.observed(raw, self._timeout(context), context)
                yield wire.length_delimited(2, reply)
            except Exception as exc:
                code, message = _status(exc)
                remaining = context.time_remaining()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and (
                    remaining is not None and remaining <= DEADLINE_SLACK_S
                ):
                    await context.abort(code, message)
                yield wire.length_delimited(1, message.encode()) + _echo(raw)

    @edge
    async def ServerLive(self, _: pb.ServerLiveRequest, __: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @edge
    async def ServerReady(self, _: pb.ServerReadyRequest, __: Any) -> pb.ServerReadyResponse:
        ready = all(r.state == RunnerState.READY for r in self.router.runners.values())
        return pb.ServerReadyResponse(ready=ready)

    @edge
    async def ServerMetadata(
        self, _: pb.ServerMetadataRequest, __: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="greenroom", version=self.version, extensions=EXTENSIONS
        )

    @edge
    async def ModelReady(self, request: pb.ModelReadyRequest, _: Any) -> pb.ModelReadyResponse:
        runner = self.router.resolve(request.name, request.version)
        return pb.ModelReadyResponse(ready=runner.state == RunnerState.READY)

    @edge
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, _: Any
    ) -> pb.ModelMetadataResponse:
        signature = signature_of(self.router.resolve(request.name, request.version))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=self.router.versions(request.name),
            platform=signature.platform,
            inputs=[
                tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in signature.inputs
            ],
            outputs=[
                tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in signature.outputs
            ],
        )

    @edge
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, _: Any
    ) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=name, version=version, state=r.state.value, reason=r.reason)
                for (name, version), r in self.router.runners.items()
                if not request.ready or r.state == RunnerState.READY
            ]
        )


def _echo(raw: bytes) -> bytes:
    """For a failed stream request: an infer_response naming its model and id, if readable."""
    try:
        request = pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        return b""
    reply = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    return wire.length_delimited(2, reply.SerializeToString())


def _unary(fn: Any, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def generic_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's handlers; ModelInfer and ModelStreamInfer move bytes, not messages."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": _unary(servicer.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": _unary(
                servicer.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse
            ),
            "ServerMetadata": _unary(
                servicer.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelReady": _unary(servicer.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ModelMetadata": _unary(
                servicer.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "RepositoryIndex": _unary(
                servicer.RepositoryIndex, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse
            ),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.ModelInfer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(servicer.ModelStreamInfer),
        },
    )
