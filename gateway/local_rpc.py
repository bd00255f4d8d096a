"""JSON calls between the processes of one gateway (its workers and their supervisor) over
Unix sockets: an internal, versionless protocol, so no generated code. A handler takes and
returns a JSON object; a failure travels as ``{"code": <status name>, "error": message}``
and is raised again on the calling side as the same exception class.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from greenroom_client.errors import GreenroomError, Unavailable, from_status

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def failure(exc: GreenroomError) -> dict[str, Any]:
    return {"code": exc.code, "error": exc.message}


def raise_failure(body: dict[str, Any]) -> dict[str, Any]:
    """``body``, unless it is a failure: then its exception."""
    if "error" in body:
        raise from_status(str(body.get("code", "INTERNAL")), str(body["error"]))
    return body


def _method(handler: Handler) -> grpc.RpcMethodHandler:
    async def handle(request: bytes, _: grpc.aio.ServicerContext) -> bytes:
        return json.dumps(await handler(json.loads(request or b"{}"))).encode()

    return grpc.unary_unary_rpc_method_handler(handle)


async def serve(path: Path, service: str, handlers: dict[str, Handler]) -> grpc.aio.Server:
    """Serve ``handlers`` as ``/service/name`` on ``path`` (a stale socket file, left by the
    process this one replaces, is removed first)."""
    path.unlink(missing_ok=True)  # noqa: ASYNC240 (a socket file: no disk wait to speak of)
    server = grpc.aio.server()
    methods = {name: _method(handler) for name, handler in handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server


async def call(
    path: Path, service: str, method: str, body: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """One call on a fresh channel; a failure in the answer is raised."""
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        try:
            reply: bytes = await channel.unary_unary(f"/{service}/{method}")(
                json.dumps(body).encode(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"{path.name} did not answer: {exc.details()}") from None
    return raise_failure(json.loads(reply))
