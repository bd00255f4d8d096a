"""The runner's gRPC server: one model version behind ``inference.GRPCInferenceService``.

Lifecycle (``serve``): bind and start listening first, with grpc.health.v1 answering
NOT_SERVING, so that the gateway can poll health while a large model loads; load the
model in a background thread; then SERVING for "" and for the model's name. A load that
fails exits with ``EXIT_LOAD_FAILED``; a stop request (SIGTERM, parent gone) stops
accepting calls and lets in-flight ones finish within ``GRACE_S``.

The servicer is thin: ModelInfer checks the request against the signature on the event
loop (cheap: names, datatypes, shapes), then decodes, predicts, conforms and encodes in
one worker-thread hop, so that neither the model nor large tensors ever block the loop.
GreenroomError travels as its status and message; anything else is logged with its
traceback and answered INTERNAL with a generic message.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
import numpy as np
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import BaseModel, ConfigDict, Field

from greenroom_client.errors import (
    GreenroomError,
    InternalError,
    ModelNotFound,
    Unavailable,
    VersionNotFound,
)
from greenroom_client.signature import check_inputs, check_outputs, shape_matches
from greenroom_client.tensors import DTYPES, TensorSpec, decode, encode
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from runners.config import ModelConfig, load_model_config
from runners.model import Arrays, Model, load_model

log = structlog.get_logger(__name__)

SERVER_NAME = "greenroom-runner"
SERVER_VERSION = "0.1.0"
INTERNAL_MESSAGE = "internal error; see the runner log"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
GRACE_S = 5.0
LISTENING_PREFIX = "GREENROOM_RUNNER_LISTENING"
EXIT_OK = 0
EXIT_LOAD_FAILED = 3
EXIT_BIND_FAILED = 4

T = TypeVar("T")


class RunnerSettings(BaseModel):
    """Everything a runner process is told, from its command line (no environment reads)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_dir: Path
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    address: str = Field(min_length=1)
    threads: int | None = Field(default=None, ge=1, le=64)
    parent_pid: int | None = Field(default=None, ge=1)
    log_format: Literal["json", "console"] = "json"


class ModelBug(Exception):
    """A model answered something its own signature rules out (a missing output, a wrong
    shape): the runner's fault, not the caller's, hence INTERNAL."""


def _status(err: GreenroomError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN)


def _tensor_metadata(
    specs: Sequence[TensorSpec],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=list(s.shape)
        )
        for s in specs
    ]


def _conform(answer: Arrays, wanted: Sequence[str], specs: dict[str, TensorSpec]) -> Arrays:
    """The wanted outputs, checked against the signature and cast to its datatypes."""
    out: Arrays = {}
    for name in wanted:
        if name not in answer:
            raise ModelBug(f"predict returned no output '{name}' (it returned {list(answer)})")
        spec = specs[name]
        array = np.asarray(answer[name])
        if not shape_matches(array.shape, spec.shape):
            raise ModelBug(
                f"output '{name}' has shape {list(array.shape)}; the signature says "
                f"{list(spec.shape)} (declare the outputs in model.yaml if it is wrong)"
            )
        if spec.datatype != "BYTES":
            array = array.astype(DTYPES[spec.datatype], copy=False)
        out[name] = array
    return out


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """V2 inference for the one model version this runner holds (None while loading)."""

    def __init__(self, name: str, version: str):
        self.name = name
        self.version = version
        self.model: Model | None = None
        self.state = "LOADING"
        self._executor: ThreadPoolExecutor | None = None
        self._specs: dict[str, TensorSpec] = {}
        self._datatypes: dict[str, str] = {}
        self._all_outputs: list[str] = []

    def set_model(self, model: Model, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._specs = {s.name: s for s in model.outputs}
        self._datatypes = {s.name: s.datatype for s in model.outputs}
        self._all_outputs = [s.name for s in model.outputs]
        self.model = model
        self.state = "READY"

    def _ready_model(self, name: str, version: str) -> Model:
        if name != self.name:
            raise ModelNotFound(name)
        if version and version != self.version:
            raise VersionNotFound(name, version, [self.version])
        if self.model is None:
            raise Unavailable(f"model '{name}' version '{self.version}' is still loading")
        return self.model

    def _error(self, exc: Exception, request_id: str) -> GreenroomError:
        """The error to answer with; unexpected ones are logged here, never sent."""
        if isinstance(exc, GreenroomError):
            return exc
        log.error("inference failed", request_id=request_id, exc_info=exc)
        return InternalError(INTERNAL_MESSAGE)

    def _compute(
        self, model: Model, request: pb.ModelInferRequest, wanted: list[str]
    ) -> pb.ModelInferResponse:
        """Worker-thread part of an inference: decode, predict, conform, encode."""
        arrays = decode(request.inputs, request.raw_input_contents)
        answer = _conform(model.predict(arrays, wanted), wanted, self._specs)
        response = pb.ModelInferResponse(
            model_name=self.name, model_version=self.version, id=request.id
        )
        raw = len(request.raw_input_contents) > 0
        encode(response.outputs, response.raw_output_contents, answer, raw, self._datatypes)
        return response

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self._ready_model(request.model_name, request.model_version)
        given = [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in request.inputs]
        check_inputs(given, model.inputs)
        requested = [o.name for o in request.outputs]
        check_outputs(requested, model.outputs)
        loop = asyncio.get_running_loop()
        wanted = requested or self._all_outputs
        response: pb.ModelInferResponse = await loop.run_in_executor(
            self._executor, self._compute, model, request, wanted
        )
        return response

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            return await self._infer(request)
        except Exception as exc:
            err = self._error(exc, request.id)
            context.set_code(_status(err))
            context.set_details(err.message)
            return pb.ModelInferResponse()

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's form: requests answered in order, a failure as its error_message."""
        async for request in request_iterator:
            try:
                answer = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except Exception as exc:
                message = self._error(exc, request.id).message
                answer = pb.ModelStreamInferResponse(error_message=message)
            yield answer

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.model is not None)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        ours = request.name == self.name and request.version in ("", self.version)
        return pb.ModelReadyResponse(ready=ours and self.model is not None)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=["model_repository"]
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            model = self._ready_model(request.name, request.version)
        except GreenroomError as err:
            context.set_code(_status(err))
            context.set_details(err.message)
            return pb.ModelMetadataResponse()
        return pb.ModelMetadataResponse(
            name=self.name,
            versions=[self.version],
            platform=model.platform,
            inputs=_tensor_metadata(model.inputs),
            outputs=_tensor_metadata(model.outputs),
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        if request.ready and self.model is None:
            return pb.RepositoryIndexResponse()
        entry = pb.RepositoryIndexResponse.ModelIndex(
            name=self.name, version=self.version, state=self.state
        )
        return pb.RepositoryIndexResponse(models=[entry])


def build_server(servicer: InferenceServicer, health_servicer: Any) -> Any:
    """A grpc.aio server with inference, health and reflection (not yet bound)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be silently shared
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    return server


def _remove_stale_socket(address: str) -> None:
    """A socket file left by a killed runner would make the bind fail; remove it."""
    path = Path(address.removeprefix("unix:").removeprefix("//"))
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def bind_address(server: Any, address: str) -> str:
    """Bind ``unix:PATH`` or ``HOST:PORT``; the address actually bound (port 0 resolved)."""
    if address.startswith("unix:"):
        _remove_stale_socket(address)
        server.add_insecure_port(address)
        return address
    port = server.add_insecure_port(address)
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"


def _announce(address: str) -> None:
    """The one stdout line the gateway waits for; later prints by model code go to stderr."""
    sys.stdout.write(f"{LISTENING_PREFIX} {address}\n")
    sys.stdout.flush()
    sys.stdout = sys.stderr


async def _in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a daemon thread: a load that hangs must not keep the process alive
    after a stop request (executor threads are joined at exit; daemon threads are not)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, exc = fn(), None
        except BaseException as caught:
            result, exc = None, caught
        with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=work, name="load-model", daemon=True).start()
    return await future


async def _set_health(health_servicer: Any, name: str, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", name):
        await health_servicer.set(service, status)


class Runner:
    """One runner process's server, from listening to a graceful stop."""

    def __init__(self, settings: RunnerSettings):
        self.settings = settings
        self.servicer = InferenceServicer(settings.name, settings.version)
        self.health = health.aio.HealthServicer()
        self.server = build_server(self.servicer, self.health)

    def _load(self) -> tuple[Model, int]:
        """model.yaml (in the model directory), then the artifact; also the thread count."""
        settings = self.settings
        config: ModelConfig = load_model_config(settings.model_dir.parent)
        threads = settings.threads or config.runner.threads
        runner = config.runner.model_copy(update={"threads": threads})
        config = config.model_copy(update={"runner": runner})
        model = load_model(settings.model_dir, settings.name, settings.version, config)
        return model, threads

    async def _listen(self) -> bool:
        try:
            bound = bind_address(self.server, self.settings.address)
        except RuntimeError as exc:
            log.error("cannot listen", address=self.settings.address, error=str(exc))
            return False
        await _set_health(self.health, self.settings.name, serving=False)
        await self.server.start()
        _announce(bound)
        log.info("listening; loading the model", address=bound, dir=str(self.settings.model_dir))
        return True

    async def serve(self, stop: asyncio.Event) -> int:
        """Listen, load, serve until ``stop`` is set; the process exit code."""
        if not await self._listen():
            return EXIT_BIND_FAILED
        stopping = asyncio.ensure_future(stop.wait())
        loading = asyncio.ensure_future(_in_daemon_thread(self._load))
        await asyncio.wait({stopping, loading}, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():
            loading.cancel()
            await self.server.stop(None)
            return EXIT_OK
        try:
            model, threads = loading.result()
        except Exception as exc:
            self.servicer.state = "UNAVAILABLE"
            log.error("model failed to load", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            await self.server.stop(None)
            return EXIT_LOAD_FAILED
        # Not a ``with``: its exit would wait for a predict that never returns.
        executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
        try:
            await self._serve_until(stopping, model, executor, threads)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        return EXIT_OK

    async def _serve_until(
        self,
        stopping: asyncio.Future[Any],
        model: Model,
        executor: ThreadPoolExecutor,
        threads: int,
    ) -> None:
        self.servicer.set_model(model, executor)
        await _set_health(self.health, self.settings.name, serving=True)
        inputs = [s.as_dict() for s in model.inputs]
        outputs = [s.as_dict() for s in model.outputs]
        log.info(
            "serving", platform=model.platform, threads=threads, inputs=inputs, outputs=outputs
        )
        await stopping
        log.info("stopping: finishing in-flight calls", grace_s=GRACE_S)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(GRACE_S)


async def serve(settings: RunnerSettings, stop: asyncio.Event) -> int:
    """Run one runner until ``stop`` is set; the process exit code."""
    return await Runner(settings).serve(stop)
