"""The gateway process: gRPC server, runner fleet, ledger, health, reflection, graceful stop.

Startup: scan the repository, open the ledger (migrating it), restore stored deployments,
start every runner, then report SERVING (health) and print
``GREENROOM_GATEWAY_LISTENING host:port`` on stdout, which scripts and tests wait for
(preceded by ``GREENROOM_GATEWAY_METRICS host:port`` when /metrics is served: see
gateway/metrics.py).
SIGTERM/SIGINT: health turns NOT_SERVING, new calls are refused, in-flight calls finish
(up to ``shutdown_grace_s``), shadow copies drain, the ledger writes everything it holds,
then runners are stopped and their processes reaped.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway import completion, registry
from gateway.control import ControlPlane
from gateway.control_servicer import CONTROL_SERVICES, add_control_servicers
from gateway.governance import Governor
from gateway.launch import FleetLauncher
from gateway.ledger import Ledger
from gateway.metrics import Metrics, MetricsServer, open_metrics
from gateway.metrics import announce as announce_metrics
from gateway.monitor import Monitor
from gateway.policy import AutoPromoter
from gateway.recording import OutputRoles, Recorder, convert
from gateway.repository import scan
from gateway.retraining import Retrainer
from gateway.retraining_host import start_retrainer
from gateway.router import Router
from gateway.servicer import SERVICE, InferenceServicer, generic_handler
from gateway.settings import GatewaySettings
from gateway.shadow import ShadowFanout
from gateway.supervisor import Fleet

if TYPE_CHECKING:
    from gateway.tracing import GatewayTracing

log = structlog.get_logger(__name__)

LISTENING = "GREENROOM_GATEWAY_LISTENING"


def open_tracing(settings: GatewaySettings, process: str) -> GatewayTracing | None:
    """The gateway's tracing, or None when it is off (OpenTelemetry is imported only then)."""
    if settings.tracing == "off":
        return None
    from gateway.tracing import GatewayTracing  # noqa: PLC0415 (an optional dependency)

    return GatewayTracing(settings, process)


def server_options(settings: GatewaySettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.transport_limit),
        ("grpc.max_send_message_length", settings.transport_limit),
        # A busy port is an error, not a silent second listener.
        ("grpc.so_reuseport", 0),
        # No HTTP/2 bandwidth-delay probing: a PING per data burst costs more than it
        # tunes on loopback and LAN links (measured with make bench).
        ("grpc.http2.bdp_probe", 0),
    ]


def open_ledger(settings: GatewaySettings) -> Ledger:
    """Answers are queued raw and converted by the writer (``recording.convert``), in its
    own process unless ``ledger_writer`` says thread."""
    options: dict[str, Any] = {
        "convert": convert,
        "queue_items": settings.ledger_queue_answers,
        "flush_interval_s": settings.ledger_flush_interval_s,
        "writer": settings.ledger_writer,
        "log": (settings.log_format, settings.log_level),
    }
    if settings.database_url:
        return Ledger(settings.database_url, **options)
    return Ledger.for_data_dir(settings.data_dir, **options)


def build_server(
    servicer: InferenceServicer,
    control: ControlPlane,
    governor: Governor,
    options: list[tuple[str, int]],
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The gRPC server with every service a client sees: V2 inference, the control API,
    health (NOT_SERVING until the caller says otherwise) and reflection."""
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    add_control_servicers(server, control, governor)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, *CONTROL_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server, health_servicer


class RolesCache:
    """Output roles per (model, version), computed once its signature is known."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._cache: dict[tuple[str, str], OutputRoles] = {}

    def __call__(self, model: str, version: str) -> OutputRoles:
        key = (model, version)
        roles = self._cache.get(key)
        if roles is None:
            roles = self.router.output_roles(model, version)
            if self.router.resolve(model, version).signature is not None:
                self._cache[key] = roles
        return roles


@dataclass
class Gateway:
    settings: GatewaySettings
    server: grpc.aio.Server
    fleet: Fleet
    ledger: Ledger
    shadows: ShadowFanout
    promoter: AutoPromoter
    health: health.aio.HealthServicer
    port: int
    metrics: Metrics | None = None
    metrics_server: MetricsServer | None = None
    tracing: GatewayTracing | None = None
    retrainer: Retrainer | None = None
    monitor: Monitor | None = None

    @classmethod
    async def start(cls, settings: GatewaySettings) -> Gateway:
        # gateway/worker.py (Worker.start, for --workers N) assembles the same parts: keep
        # the two in step.
        metrics, metrics_server = open_metrics(settings)  # first: a taken port stops here
        tracing = open_tracing(settings, "gateway")
        models = scan(settings.repo)
        ledger = open_ledger(settings)
        await asyncio.to_thread(ledger.start)
        await asyncio.to_thread(registry.reconcile, models, ledger)
        fleet = Fleet.for_models(models, settings)
        router = Router(models, fleet.runners)
        shadows = ShadowFanout.from_settings(settings)
        shadows.tracing = tracing
        control = ControlPlane(router, ledger, shadows.drops)
        await control.restore()
        governor = Governor(control, FleetLauncher(fleet, settings), settings)
        if metrics is not None:
            metrics.watch(ledger, shadows)
        recorder = Recorder(ledger, RolesCache(router), settings.record_predictions, metrics)
        servicer = InferenceServicer(
            router, settings, shadows, recorder, metrics=metrics, tracing=tracing
        )
        server, health_servicer = build_server(
            servicer, control, governor, server_options(settings)
        )
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        governor.target = f"{settings.host}:{port}"
        await server.start()
        await fleet.start(settings.runner_start_timeout_s)
        promoter = AutoPromoter(control)
        promoter.start()
        for service in ("", SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        retrainer = start_retrainer(governor)
        monitor = Monitor(governor, metrics) if metrics is not None else None
        if monitor is not None:
            monitor.start()
        log.info("gateway serving", host=settings.host, port=port, models=sorted(models))
        return cls(
            settings, server, fleet, ledger, shadows, promoter, health_servicer, port,
            metrics, metrics_server, tracing, retrainer, monitor,
        )  # fmt: skip

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        if self.retrainer is not None:
            await self.retrainer.stop()
        await self.promoter.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s)
        await completion.drain(self.settings.shutdown_grace_s)
        await self.shadows.drain(timeout=self.settings.shadow_deadline_s)
        await asyncio.to_thread(self.ledger.stop)
        await self.fleet.stop()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)
        if self.tracing is not None:
            self.tracing.shutdown()
        log.info("gateway stopped", ledger=self.ledger.stats)


async def serve(settings: GatewaySettings) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = await Gateway.start(settings)
    if gateway.metrics_server is not None:
        announce_metrics(gateway.metrics_server)  # before LISTENING: readers stop there
    print(f"{LISTENING} {settings.host}:{gateway.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
