"""The gateway process: gRPC server, runner fleet, health, reflection, graceful stop.

Startup: scan the repository, start every runner, then report SERVING (health) and print
``GREENROOM_GATEWAY_LISTENING host:port`` on stdout, which scripts and tests wait for.
SIGTERM/SIGINT: health turns NOT_SERVING, new calls are refused, in-flight calls finish
(up to ``shutdown_grace_s``), then runners are stopped and their processes reaped.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.repository import scan
from gateway.router import Router
from gateway.servicer import SERVICE, InferenceServicer, generic_handler
from gateway.settings import GatewaySettings
from gateway.supervisor import Fleet

log = structlog.get_logger(__name__)

LISTENING = "GREENROOM_GATEWAY_LISTENING"


def server_options(settings: GatewaySettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.transport_limit),
        ("grpc.max_send_message_length", settings.transport_limit),
        # A busy port is an error, not a silent second listener.
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class Gateway:
    settings: GatewaySettings
    server: grpc.aio.Server
    fleet: Fleet
    health: health.aio.HealthServicer
    port: int

    @classmethod
    async def start(cls, settings: GatewaySettings) -> Gateway:
        models = scan(settings.repo)
        fleet = Fleet.for_models(models, settings)
        servicer = InferenceServicer(Router(models, fleet.runners), settings)
        server = grpc.aio.server(options=server_options(settings))
        server.add_generic_rpc_handlers((generic_handler(servicer),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        await server.start()
        await fleet.start(settings.runner_start_timeout_s)
        for service in ("", SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("gateway serving", host=settings.host, port=port, models=sorted(models))
        return cls(settings, server, fleet, health_servicer, port)

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s)
        await self.fleet.stop()
        log.info("gateway stopped")


async def serve(settings: GatewaySettings) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = await Gateway.start(settings)
    print(f"{LISTENING} {settings.host}:{gateway.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
