"""One exception tree for Greenroom, shared by the gateway, the runners and the client.

Each class carries the gRPC status it travels as. Servers raise these and translate them
to a status once, at their edge; the client maps a status back to the same class, so a
caller catches ``NotFound`` whether the model is missing at the gateway or at a runner.

    GreenroomError                 (base; never raised itself)
    ├── InvalidArgument            INVALID_ARGUMENT
    │   └── InvalidInput           INVALID_ARGUMENT  (names the input tensor)
    ├── NotFound                   NOT_FOUND
    │   ├── ModelNotFound          NOT_FOUND
    │   └── VersionNotFound        NOT_FOUND
    ├── Unavailable                UNAVAILABLE       (runner down, loading, restarting)
    ├── ResourceExhausted          RESOURCE_EXHAUSTED (overload, queue full)
    ├── DeadlineExceeded           DEADLINE_EXCEEDED
    ├── FailedPrecondition         FAILED_PRECONDITION
    ├── AlreadyExists              ALREADY_EXISTS    (a registered version, a running job)
    ├── Aborted                    ABORTED           (a concurrent change won: read, retry)
    └── InternalError              INTERNAL          (generic message; details only in logs)

Status names are strings so that domain modules need not import grpc.
"""

from __future__ import annotations


class GreenroomError(Exception):
    """Base class. ``code`` is the name of a ``grpc.StatusCode`` member."""

    code: str = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GreenroomError):
    code = "INVALID_ARGUMENT"


class InvalidInput(InvalidArgument):
    """A request tensor is wrong; the message always names the tensor and the problem."""

    def __init__(self, tensor: str, problem: str) -> None:
        super().__init__(f"input '{tensor}': {problem}")
        self.tensor = tensor
        self.problem = problem


class NotFound(GreenroomError):
    code = "NOT_FOUND"


class ModelNotFound(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' is not in the repository")
        self.model = model


class VersionNotFound(NotFound):
    def __init__(self, model: str, version: str, known: list[str] | None = None) -> None:
        hint = f" (versions: {', '.join(known)})" if known else ""
        super().__init__(f"model '{model}' has no version '{version}'{hint}")
        self.model = model
        self.version = version


class Unavailable(GreenroomError):
    code = "UNAVAILABLE"


class ResourceExhausted(GreenroomError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(GreenroomError):
    code = "DEADLINE_EXCEEDED"


class FailedPrecondition(GreenroomError):
    code = "FAILED_PRECONDITION"


class AlreadyExists(GreenroomError):
    code = "ALREADY_EXISTS"


class Aborted(GreenroomError):
    """A change lost to a concurrent one (another gateway wrote first): read the current
    state again and retry."""

    code = "ABORTED"


class InternalError(GreenroomError):
    code = "INTERNAL"

    def __init__(self, message: str = "internal error; see the server log") -> None:
        super().__init__(message)


_BY_CODE: dict[str, type[GreenroomError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        Unavailable,
        ResourceExhausted,
        DeadlineExceeded,
        FailedPrecondition,
        AlreadyExists,
        Aborted,
        InternalError,
    )
}


def from_status(code_name: str, message: str) -> GreenroomError:
    """The exception for a received status (used by clients and by the gateway's runner calls)."""
    cls = _BY_CODE.get(code_name)
    if cls is None:
        err = GreenroomError(message)
        err.code = code_name
        return err
    if cls is InternalError:
        return InternalError(message)
    return cls(message)
