"""Greenroom's Python client: ``Client`` (sync) and ``AsyncClient`` (asyncio) for any Open
Inference Protocol (V2) gRPC server, and the exception tree every failed call raises.

    from greenroom_client import Client
    with Client("127.0.0.1:8001") as client:
        result = client.infer("iris", {"input": x})
"""

from greenroom_client.client import (
    AsyncClient,
    Client,
    InferResult,
    ModelIndexEntry,
    ModelMetadata,
    ServerMetadata,
)
from greenroom_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GreenroomError,
    InternalError,
    InvalidArgument,
    InvalidInput,
    ModelNotFound,
    NotFound,
    ResourceExhausted,
    Unavailable,
    VersionNotFound,
    from_status,
)
from greenroom_client.tensors import TensorSpec

__all__ = [
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GreenroomError",
    "InferResult",
    "InternalError",
    "InvalidArgument",
    "InvalidInput",
    "ModelIndexEntry",
    "ModelMetadata",
    "ModelNotFound",
    "NotFound",
    "ResourceExhausted",
    "ServerMetadata",
    "TensorSpec",
    "Unavailable",
    "VersionNotFound",
    "from_status",
]
