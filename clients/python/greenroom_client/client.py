"""A small typed client for Greenroom and any Open Inference Protocol (V2) gRPC server.

``Client`` is synchronous, ``AsyncClient`` runs on asyncio (``grpc.aio``). Both build
their requests and read their responses with the same code (``_Call`` below): the two
classes differ only in how they make the call, so they cannot drift apart. Tensors go
through ``greenroom_client.tensors``, the project's one protobuf<->numpy codec.

Every failed call raises the project's exception tree (``greenroom_client.errors``),
mapped once from the gRPC status; the original ``grpc.RpcError`` is kept as
``__cause__``.

Example::

    import numpy as np
    from greenroom_client import Client, NotFound

    with Client("127.0.0.1:8001", timeout=5.0) as client:
        x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
        result = client.infer("iris", {"input": x}, request_id="req-1")
        print(result.outputs["label"], result.version, result.id)
        try:
            client.model_metadata("no-such-model")
        except NotFound as err:
            print(err.code, err.message)

    # asyncio:
    #   async with AsyncClient("127.0.0.1:8001") as client:
    #       result = await client.infer("iris", {"input": x})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt

from greenroom_client import tensors
from greenroom_client.errors import GreenroomError, from_status
from greenroom_client.tensors import TensorSpec
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc

__all__ = [
    "AsyncClient",
    "Client",
    "InferResult",
    "ModelIndexEntry",
    "ModelMetadata",
    "ServerMetadata",
]

T = TypeVar("T")

DEFAULT_TARGET = "127.0.0.1:8001"

# gRPC's default 4 MiB receive limit is too small for real tensors; Triton's client
# lifts both limits to the protocol's maximum, and so do we.
_MAX_MESSAGE = 2**31 - 1
_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class InferResult:
    """One inference answer. ``version`` is the version that actually served the request
    (the gateway picks it when none was asked for); ``id`` is the request id it echoed
    or made."""

    outputs: dict[str, npt.NDArray[Any]]
    model: str
    version: str
    id: str

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.outputs[name]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A model's V2 metadata; -1 in a shape means any size."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True, slots=True)
class ModelIndexEntry:
    """One row of the repository index; ``state`` is READY, LOADING or UNAVAILABLE."""

    name: str
    version: str
    state: str
    reason: str


# ------------------------------------------------------- the shared request/response half


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """Everything about one RPC except making it: which stub method, the request, and how
    to turn the response into the public result. Both clients execute these."""

    method: str
    request: Any
    parse: Callable[[Any], T]


def _infer_call(
    model: str,
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    version: str | None,
    request_id: str | None,
    outputs: Sequence[str] | None,
    raw: bool,
) -> _Call[InferResult]:
    request = pb.ModelInferRequest(
        model_name=model, model_version=version or "", id=request_id or ""
    )
    arrays = {name: np.asarray(array) for name, array in inputs.items()}
    tensors.encode(request.inputs, request.raw_input_contents, arrays, raw)
    for name in outputs or ():
        request.outputs.add(name=name)
    return _Call("ModelInfer", request, _parse_infer)


def _parse_infer(response: Any) -> InferResult:
    return InferResult(
        outputs=tensors.decode(response.outputs, response.raw_output_contents),
        model=str(response.model_name),
        version=str(response.model_version),
        id=str(response.id),
    )


def _specs(entries: Any) -> list[TensorSpec]:
    return [TensorSpec(e.name, e.datatype, tuple(e.shape)) for e in entries]


def _parse_model_metadata(response: Any) -> ModelMetadata:
    return ModelMetadata(
        name=str(response.name),
        versions=list(response.versions),
        platform=str(response.platform),
        inputs=_specs(response.inputs),
        outputs=_specs(response.outputs),
    )


def _model_metadata_call(model: str, version: str | None) -> _Call[ModelMetadata]:
    request = pb.ModelMetadataRequest(name=model, version=version or "")
    return _Call("ModelMetadata", request, _parse_model_metadata)


def _model_ready_call(model: str, version: str | None) -> _Call[bool]:
    request = pb.ModelReadyRequest(name=model, version=version or "")
    return _Call("ModelReady", request, _parse_ready)


def _parse_ready(response: Any) -> bool:
    return bool(response.ready)


def _parse_live(response: Any) -> bool:
    return bool(response.live)


def _server_live_call() -> _Call[bool]:
    return _Call("ServerLive", pb.ServerLiveRequest(), _parse_live)


def _server_ready_call() -> _Call[bool]:
    return _Call("ServerReady", pb.ServerReadyRequest(), _parse_ready)


def _parse_server_metadata(response: Any) -> ServerMetadata:
    return ServerMetadata(
        name=str(response.name),
        version=str(response.version),
        extensions=list(response.extensions),
    )


def _server_metadata_call() -> _Call[ServerMetadata]:
    return _Call("ServerMetadata", pb.ServerMetadataRequest(), _parse_server_metadata)


def _parse_index(response: Any) -> list[ModelIndexEntry]:
    return [ModelIndexEntry(m.name, m.version, m.state, m.reason) for m in response.models]


def _repository_index_call(ready: bool) -> _Call[list[ModelIndexEntry]]:
    request = pb.RepositoryIndexRequest(ready=ready)
    return _Call("RepositoryIndex", request, _parse_index)


def _to_error(exc: Any) -> GreenroomError:
    """The project's exception for a failed call: the one place a status is mapped."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    name = code.name if code is not None else "UNKNOWN"
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return from_status(name, details or str(exc))


def _options(extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    merged = dict(_DEFAULT_OPTIONS)
    merged.update(extra)
    return list(merged.items())


# ------------------------------------------------------------------------ the clients


class SyncChannel:
    """Owns a synchronous channel: ``close`` it, or use the client as a context manager."""

    _channel: grpc.Channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Client(SyncChannel):
    """Synchronous client. ``timeout`` (seconds) is the deadline of every call; None waits
    as long as the server takes. Pass ``credentials`` (``grpc.ssl_channel_credentials()``)
    for TLS, ``options`` for extra channel arguments."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = None,
        *,
        credentials: Any = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = _options(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._timeout = timeout
        self.target = target

    def _run(self, call: _Call[T]) -> T:
        method = getattr(self._stub, call.method)
        try:
            response = method(call.request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _to_error(exc) from exc
        return call.parse(response)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        version: str | None = None,
        request_id: str | None = None,
        outputs: Sequence[str] | None = None,
        raw: bool = True,
    ) -> InferResult:
        """Run ``model`` on ``inputs`` (name -> array; the V2 datatype follows the dtype, so
        send float32 to an FP32 input). ``version=None`` lets the server choose;
        ``outputs=None`` asks for all of them. ``raw`` sends raw bytes (fast, and what
        Triton expects); ``raw=False`` sends typed contents and the answer comes typed."""
        return self._run(
            _infer_call(
                model, inputs, version=version, request_id=request_id, outputs=outputs, raw=raw
            )
        )

    def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        return self._run(_model_metadata_call(model, version))

    def model_ready(self, model: str, version: str | None = None) -> bool:
        return self._run(_model_ready_call(model, version))

    def server_live(self) -> bool:
        return self._run(_server_live_call())

    def server_ready(self) -> bool:
        return self._run(_server_ready_call())

    def server_metadata(self) -> ServerMetadata:
        return self._run(_server_metadata_call())

    def repository_index(self, ready: bool = False) -> list[ModelIndexEntry]:
        """Every model version the server knows (``ready=True``: only the ready ones)."""
        return self._run(_repository_index_call(ready))


class AsyncClient:
    """The asyncio twin of ``Client``: same arguments, same results, same errors; each
    method is a coroutine. Create it inside the running event loop."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = None,
        *,
        credentials: Any = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = _options(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._timeout = timeout
        self.target = target

    async def _run(self, call: _Call[T]) -> T:
        method = getattr(self._stub, call.method)
        try:
            response = await method(call.request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _to_error(exc) from exc
        return call.parse(response)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        version: str | None = None,
        request_id: str | None = None,
        outputs: Sequence[str] | None = None,
        raw: bool = True,
    ) -> InferResult:
        """See ``Client.infer``."""
        return await self._run(
            _infer_call(
                model, inputs, version=version, request_id=request_id, outputs=outputs, raw=raw
            )
        )

    async def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        return await self._run(_model_metadata_call(model, version))

    async def model_ready(self, model: str, version: str | None = None) -> bool:
        return await self._run(_model_ready_call(model, version))

    async def server_live(self) -> bool:
        return await self._run(_server_live_call())

    async def server_ready(self) -> bool:
        return await self._run(_server_ready_call())

    async def server_metadata(self) -> ServerMetadata:
        return await self._run(_server_metadata_call())

    async def repository_index(self, ready: bool = False) -> list[ModelIndexEntry]:
        return await self._run(_repository_index_call(ready))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
