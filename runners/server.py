"""The runner's gRPC server: one model version behind ``inference.GRPCInferenceService``.

Lifecycle (``Runner.serve``, on the main thread): bind and start listening first, with
grpc.health.v1 answering NOT_SERVING, so that the gateway can poll health while a large
model loads; load the model in a daemon thread; then SERVING for "" and for the model's
name. A load that fails exits with ``EXIT_LOAD_FAILED``; a stop request (SIGTERM, parent
gone: a byte on the ``Wakeup`` pipe) stops accepting calls and lets in-flight ones
finish within ``GRACE_S``.

The server is grpc's synchronous one: every call runs in a thread of its pool, and
ModelInfer runs the model right there, in its handler thread. With an event loop each
request had to be handed to a worker thread and its answer handed back, two thread
wakeups that cost a small model about a third of its latency; here a handler blocked in
the model blocks nobody else, since health and metadata calls get other pool threads.
The pool is larger than ``threads``: ``runners.batching`` lets at most ``threads`` model
calls run at once and merges the requests that queue up meanwhile into one call.

With ``--framed-socket PATH`` the same servicer also answers ModelInfer on a plain Unix
socket (runners.framed), each connection in a thread of its own in the same way: the
gateway's fast path, which spares both sides a gRPC call.

The servicer is thin: check the request against the signature, decode it, let the model
check it, predict (batched), conform the answer to the signature and encode it.
GreenroomError travels as its status and message; anything else is logged with its
traceback and answered INTERNAL with a generic message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import grpc
import numpy as np
import structlog
from google.protobuf.message import DecodeError
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
from greenroom_client.signature import SignatureCheck, shape_matches
from greenroom_client.tensors import DTYPES, TensorSpec, decode, encode
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from runners.batching import INTERNAL_MESSAGE, Batcher, default_max_batch_size
from runners.config import RunnerOptions, load_model_config
from runners.framed import STATUS_OK, FramedServer
from runners.model import Arrays, Model, load_model
from runners.plain import PlainPath

if TYPE_CHECKING:
    from runners.tracing import RunnerTracing

log = structlog.get_logger(__name__)

SERVER_NAME = "greenroom-runner"
SERVER_VERSION = "0.1.0"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # gateway.settings.RUNNER_MESSAGE_LIMIT
GRACE_S = 5.0
LISTENING_PREFIX = "GREENROOM_RUNNER_LISTENING"
EXIT_OK = 0
EXIT_LOAD_FAILED = 3
EXIT_BIND_FAILED = 4
MAX_THREADS = 64
# Pool threads beyond ``threads``: calls waiting for a batch, health, metadata, streams.
# ThreadPoolExecutor starts threads only as calls need them, so a generous cap is free.
POOL_SPARE = 32

__all__ = ["INTERNAL_MESSAGE", "Runner", "RunnerSettings", "Wakeup", "serve"]

T = TypeVar("T")


class RunnerSettings(BaseModel):
    """Everything a runner process is told, from its command line (no environment reads)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_dir: Path
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    address: str = Field(min_length=1)
    framed_socket: Path | None = None
    threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)
    parent_pid: int | None = Field(default=None, ge=1)
    log_format: Literal["json", "console"] = "json"
    tracing: Literal["off", "console", "otlp"] = "off"
    tracing_file: Path | None = None


def batcher_for(model: Model, options: RunnerOptions) -> Batcher:
    """The batcher a model is served through (also by the gateway's in-process lane)."""
    return Batcher(
        model.predict,
        options.threads,
        default_max_batch_size(model, options.max_batch_size),
        max_queue_delay_us=options.max_queue_delay_us,
        preferred_batch_sizes=options.preferred_batch_sizes,
    )


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


@dataclass(frozen=True, slots=True)
class Serving:
    """The loaded model and what answering with it needs. Set in one assignment, so that a
    handler thread sees all of it or none of it."""

    model: Model
    batcher: Batcher
    specs: dict[str, TensorSpec]
    datatypes: dict[str, str]
    all_outputs: list[str]
    check: SignatureCheck
    plain: PlainPath | None  # None: no request is plain (runners.plain)

    @classmethod
    def of(cls, name: str, version: str, model: Model, batcher: Batcher) -> Serving:
        plain = PlainPath.of(name, version, model.inputs, model.outputs, model.output_parameters)
        return cls(
            model,
            batcher,
            {s.name: s for s in model.outputs},
            {s.name: s.datatype for s in model.outputs},
            [s.name for s in model.outputs],
            SignatureCheck(model.inputs, model.outputs),
            plain,
        )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """V2 inference for the one model version this runner holds (None while loading)."""

    def __init__(self, name: str, version: str):
        self.name = name
        self.version = version
        self.serving: Serving | None = None
        self.state = "LOADING"
        self.tracing: RunnerTracing | None = None  # set when tracing is on

    def set_model(self, model: Model, batcher: Batcher) -> None:
        self.serving = Serving.of(self.name, self.version, model, batcher)
        self.state = "READY"

    def _ready(self, name: str, version: str) -> Serving:
        if name != self.name:
            raise ModelNotFound(name)
        if version and version != self.version:
            raise VersionNotFound(name, version, [self.version])
        if self.serving is None:
            raise Unavailable(f"model '{name}' version '{self.version}' is still loading")
        return self.serving

    def _error(self, exc: Exception, request_id: str) -> GreenroomError:
        """The error to answer with; unexpected ones are logged here, never sent."""
        if isinstance(exc, GreenroomError):
            return exc
        log.error("inference failed", request_id=request_id, exc_info=exc)
        return InternalError(INTERNAL_MESSAGE)

    def _accepted(self, request: pb.ModelInferRequest) -> tuple[Serving, Arrays, list[str]]:
        """The request checked and decoded: what serves it, its arrays, the outputs wanted."""
        serving = self._ready(request.model_name, request.model_version)
        requested = [o.name for o in request.outputs]
        arrays = None
        if serving.plain is not None and not requested:
            arrays = serving.plain.arrays(request)
        if arrays is None:
            given = [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in request.inputs]
            serving.check(given, requested)
            arrays = decode(request.inputs, request.raw_input_contents)
        serving.model.check(arrays)
        return serving, arrays, requested or serving.all_outputs

    def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        serving, arrays, wanted = self._accepted(request)
        answer = serving.batcher.run(arrays, wanted, request.id)
        return self._response(serving, request, answer, wanted)

    def _infer_bytes(self, request: pb.ModelInferRequest) -> bytes:
        """``_infer``'s response, serialized; written straight from the answer when the
        request and the answer are plain (runners.plain)."""
        serving, arrays, wanted = self._accepted(request)
        answer = serving.batcher.run(arrays, wanted, request.id)
        plain = serving.plain
        if plain is not None and wanted is serving.all_outputs and request.raw_input_contents:
            body = plain.response(request.id, answer)
            if body is not None:
                return body
        return self._response(serving, request, answer, wanted).SerializeToString()

    def _response(
        self, serving: Serving, request: pb.ModelInferRequest, answer: Arrays, wanted: list[str]
    ) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(
            model_name=self.name, model_version=self.version, id=request.id
        )
        raw = len(request.raw_input_contents) > 0
        outputs = _conform(answer, wanted, serving.specs)
        encode(response.outputs, response.raw_output_contents, outputs, raw, serving.datatypes)
        parameters = serving.model.output_parameters
        if parameters:
            for tensor in response.outputs:
                for key, text in parameters.get(tensor.name, {}).items():
                    tensor.parameters[key].string_param = text
        return response

    def answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """ModelInfer without gRPC, for the gateway's in-process lane (gateway.inprocess):
        the response, or the GreenroomError this runner would answer with (an unexpected
        error is logged here and raised as InternalError with the generic message)."""
        try:
            return self._infer(request)
        except Exception as exc:
            raise self._error(exc, request.id) from None

    def framed_answer(self, raw: bytes) -> tuple[int, bytes]:
        """ModelInfer for the framed socket (runners.framed): the serialized response with
        status 0, or the status number and message this runner's gRPC answer would carry."""
        try:
            request = pb.ModelInferRequest.FromString(raw)
        except DecodeError:
            return grpc.StatusCode.INVALID_ARGUMENT.value[0], b"not a ModelInferRequest"
        try:
            return STATUS_OK, self._infer_bytes(request)
        except Exception as exc:
            err = self._error(exc, request.id)
            return _status(err).value[0], err.message.encode()

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        if self.tracing is None:
            return self._model_infer(request, context)
        with self.tracing.infer(context, request.id):
            return self._model_infer(request, context)

    def _model_infer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            return self._infer(request)
        except Exception as exc:
            err = self._error(exc, request.id)
            context.set_code(_status(err))
            context.set_details(err.message)
            return pb.ModelInferResponse()

    def ModelStreamInfer(
        self, request_iterator: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        """Triton's form: requests answered in order, a failure as its error_message."""
        for request in request_iterator:
            try:
                answer = pb.ModelStreamInferResponse(infer_response=self._infer(request))
            except Exception as exc:
                message = self._error(exc, request.id).message
                answer = pb.ModelStreamInferResponse(error_message=message)
            yield answer

    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.serving is not None)

    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        ours = request.name == self.name and request.version in ("", self.version)
        return pb.ModelReadyResponse(ready=ours and self.serving is not None)

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=["model_repository"]
        )

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            model = self._ready(request.name, request.version).model
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

    def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        if request.ready and self.serving is None:
            return pb.RepositoryIndexResponse()
        entry = pb.RepositoryIndexResponse.ModelIndex(
            name=self.name, version=self.version, state=self.state
        )
        return pb.RepositoryIndexResponse(models=[entry])


def build_server(servicer: InferenceServicer, health_servicer: Any, pool_threads: int) -> Any:
    """A synchronous grpc server with inference, health and reflection (not yet bound)."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=pool_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be silently shared
            ("grpc.http2.bdp_probe", 0),  # no bandwidth probing on a same-host link
        ],
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


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """The Python half of a caught signal: nothing; its byte on the wakeup fd is the news."""


class Wakeup:
    """What the main thread sleeps on: a pipe that caught signals, the parent watch and
    the model loader each write a byte to.

    Not a threading.Event: Event.set in a signal handler deadlocks when the signal lands
    while the main thread holds the Event's own (non-reentrant) lock inside Event.wait,
    and a signal that the kernel delivers to one of grpc's threads would not interrupt
    the main thread's wait at all. The pipe is the interpreter's signal wakeup fd, which
    the C-level handler writes to from whichever thread the signal lands on.
    """

    LOADED = b"L"
    STOP = b"S"

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # set_wakeup_fd requires it
        self._stops = {self.STOP}

    def catch_signals(self, *signums: int) -> None:
        """Make these signals stop requests (main thread only, as ``signal`` requires)."""
        signal.set_wakeup_fd(self._write)
        for signum in signums:
            signal.signal(signum, _ignore_signal)
            self._stops.add(bytes([signum]))

    def post(self, what: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # full pipe: a wakeup is pending anyway
            os.write(self._write, what)

    def stop(self) -> None:
        self.post(self.STOP)

    def wait(self) -> bool:
        """Sleep until a stop request (True) or the end of the load (False)."""
        while True:
            byte = os.read(self._read, 1)
            if byte == self.LOADED:
                return False
            if byte in self._stops:
                return True


def _in_daemon_thread(fn: Callable[[], T], wakeup: Wakeup) -> Future[T]:
    """Run ``fn`` in a daemon thread, posting LOADED when it ends: a load that hangs must
    not keep the process alive after a stop request (daemon threads are not joined)."""
    future: Future[T] = Future()

    def work() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            wakeup.post(Wakeup.LOADED)

    threading.Thread(target=work, name="load-model", daemon=True).start()
    return future


def _set_health(health_servicer: Any, name: str, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", name):
        health_servicer.set(service, status)


class Runner:
    """One runner process's server, from listening to a graceful stop."""

    def __init__(self, settings: RunnerSettings):
        self.settings = settings
        self.servicer = InferenceServicer(settings.name, settings.version)
        if settings.tracing != "off":
            from runners.tracing import RunnerTracing  # noqa: PLC0415 (only when on)

            self.servicer.tracing = RunnerTracing(
                settings.tracing, settings.tracing_file, settings.name, settings.version
            )
        self.health = health.HealthServicer()
        # ``threads`` may only be known from model.yaml, read after listening: cap high.
        pool_threads = POOL_SPARE + (settings.threads or MAX_THREADS)
        self.server = build_server(self.servicer, self.health, pool_threads)
        self.framed: FramedServer | None = None
        if settings.framed_socket is not None:
            self.framed = FramedServer(
                settings.framed_socket, self.servicer.framed_answer, MAX_MESSAGE_BYTES
            )

    def _load(self) -> tuple[Model, RunnerOptions]:
        """model.yaml (in the model directory), then the artifact; also the runner options,
        ``threads`` from the command line when given there."""
        settings = self.settings
        config = load_model_config(settings.model_dir.parent)
        threads = settings.threads or config.runner.threads
        options = config.runner.model_copy(update={"threads": threads})
        config = config.model_copy(update={"runner": options})
        model = load_model(settings.model_dir, settings.name, settings.version, config)
        return model, options

    def _listen(self) -> bool:
        try:
            bound = bind_address(self.server, self.settings.address)
        except RuntimeError as exc:
            log.error("cannot listen", address=self.settings.address, error=str(exc))
            return False
        if self.framed is not None:
            try:
                self.framed.start()
            except OSError as exc:
                log.error(
                    "cannot listen", framed_socket=str(self.settings.framed_socket), error=str(exc)
                )
                return False
        _set_health(self.health, self.settings.name, serving=False)
        self.server.start()
        _announce(bound)
        log.info("listening; loading the model", address=bound, dir=str(self.settings.model_dir))
        return True

    def serve(self, wakeup: Wakeup) -> int:
        """Listen, load, serve until ``wakeup`` says stop; the process exit code."""
        if not self._listen():
            return EXIT_BIND_FAILED
        loading = _in_daemon_thread(self._load, wakeup)
        if wakeup.wait():  # a stop request before the model loaded
            self._stop(None)
            return EXIT_OK
        try:
            model, options = loading.result()
        except Exception as exc:
            self.servicer.state = "UNAVAILABLE"
            log.error("model failed to load", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self._stop(None)
            return EXIT_LOAD_FAILED
        self._start_serving(model, options)
        while not wakeup.wait():
            pass
        log.info("stopping: finishing in-flight calls", grace_s=GRACE_S)
        self.health.enter_graceful_shutdown()
        self._stop(GRACE_S)
        if self.servicer.tracing is not None:
            self.servicer.tracing.shutdown()  # export what is still pending
        return EXIT_OK

    def _stop(self, grace_s: float | None) -> None:
        """Both servers stop accepting at once; in-flight calls get ``grace_s`` (gRPC's
        and the framed socket's in parallel)."""
        stopped = self.server.stop(grace_s)
        if self.framed is not None:
            self.framed.stop(grace_s or 0.0)
        stopped.wait()

    def _start_serving(self, model: Model, options: RunnerOptions) -> None:
        batcher = batcher_for(model, options)
        max_batch_size = batcher.max_batch_size
        self.servicer.set_model(model, batcher)
        _set_health(self.health, self.settings.name, serving=True)
        log.info(
            "serving",
            platform=model.platform,
            threads=options.threads,
            max_batch_size=max_batch_size,
            max_queue_delay_us=options.max_queue_delay_us,
            preferred_batch_sizes=options.preferred_batch_sizes,
            inputs=[s.as_dict() for s in model.inputs],
            outputs=[s.as_dict() for s in model.outputs],
        )


def serve(settings: RunnerSettings, wakeup: Wakeup) -> int:
    """Run one runner until ``wakeup`` says stop; the process exit code."""
    return Runner(settings).serve(wakeup)
