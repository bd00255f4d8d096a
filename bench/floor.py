"""The floors a Python gateway is measured against.

``echo``: a plain grpc.aio V2 server whose ModelInfer parses the request and answers a
valid ModelInferResponse echoing every input tensor as a raw output (one hop).

``proxy``: a plain grpc.aio server whose generic handler forwards every call's request
bytes unchanged to an upstream and the response bytes back (no parsing): with ``echo``
behind it, the two-hop floor of any Python gateway.

Both use the gateway's server options and grpc defaults otherwise (no tuning the gateway
could not use; the gateway reaches its runners over unix sockets, so the proxy may too),
and print ``GREENROOM_FLOOR_LISTENING <host:port>`` once bound.

    python bench/floor.py echo --address 127.0.0.1:0 [--uds /tmp/echo.sock]
    python bench/floor.py proxy --address 127.0.0.1:0 --upstream unix:/tmp/echo.sock
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from greenroom_proto.inference import grpc_service_pb2 as pb

MiB = 1024 * 1024
# The gateway's defaults: 64 MiB requests plus 16 MiB headroom at the transport.
TRANSPORT_LIMIT = 80 * MiB
# The same transport settings as the gateway's server and runner channels, so that the
# floor is what this gateway's settings would give a bare proxy, not an untuned one.
OPTIONS = [
    ("grpc.max_receive_message_length", TRANSPORT_LIMIT),
    ("grpc.max_send_message_length", TRANSPORT_LIMIT),
    ("grpc.so_reuseport", 0),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.enable_retries", 0),
]
LISTENING = "GREENROOM_FLOOR_LISTENING"

Forward = Callable[[bytes, Any], Awaitable[bytes]]


SERVICE = "inference.GRPCInferenceService"


async def echo_infer(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
    """Every input tensor comes back as a raw output of the same name, datatype, shape."""
    response = pb.ModelInferResponse(
        model_name=request.model_name,
        model_version=request.model_version or "1",
        id=request.id,
    )
    for tensor in request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


def echo_handler() -> Any:
    """ModelInfer only (other methods: UNIMPLEMENTED), with protobuf (de)serialization."""
    infer = grpc.unary_unary_rpc_method_handler(
        echo_infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": infer})


class ForwardHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Any unary method: request bytes upstream unchanged, response bytes back."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._handlers: dict[str, Any] = {}

    def service(self, handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = grpc.unary_unary_rpc_method_handler(self._forwarder(method))
            self._handlers[method] = handler
        return handler

    def _forwarder(self, method: str) -> Forward:
        call = self._channel.unary_unary(method)  # no (de)serializers: raw bytes

        async def forward(request: bytes, context: Any) -> bytes:
            try:
                response: bytes = await call(request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as error:
                await context.abort(error.code(), error.details() or "")
                raise  # unreachable: abort raises
            return response

        return forward


async def _serve(server: Any, address: str, uds: str | None = None) -> None:
    if uds:
        server.add_insecure_port(f"unix:{uds}")
    port = server.add_insecure_port(address)
    await server.start()
    host = address.rsplit(":", 1)[0]
    print(f"{LISTENING} {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


async def run_echo(address: str, uds: str | None) -> None:
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((echo_handler(),))
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await _serve(server, address, uds)


async def run_proxy(address: str, upstream: str) -> None:
    async with grpc.aio.insecure_channel(upstream, options=OPTIONS) as channel:
        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((ForwardHandler(channel),))
        await _serve(server, address)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["echo", "proxy"])
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--uds", help="also listen on this unix socket path (echo only)")
    parser.add_argument("--upstream", help="the echo server: host:port or unix:PATH (proxy only)")
    args = parser.parse_args(argv)
    if args.kind == "proxy" and not args.upstream:
        parser.error("proxy needs --upstream")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.kind == "echo":
        asyncio.run(run_echo(args.address, args.uds))
    else:
        asyncio.run(run_proxy(args.address, args.upstream))


if __name__ == "__main__":
    main()
