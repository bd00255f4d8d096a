"""Starting the runner of a version registered while the gateway serves.

A single gateway starts it from its own fleet. A worker of ``--workers N`` cannot: the
supervisor owns every runner process (so that they outlive worker restarts), so the
worker asks it over the supervisor's private socket, then attaches to the runner as it
does at start-up. Either way the caller gets a started backend whose signature is known,
or InvalidArgument saying why the artifact does not load, with nothing left running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from gateway import local_rpc
from gateway.replicas import Backend
from gateway.repository import ModelEntry, VersionEntry
from gateway.settings import GatewaySettings
from gateway.supervisor import Fleet
from greenroom_client.errors import InvalidArgument

SUPERVISOR_SERVICE = "greenroom.internal.Supervisor"


class Launcher(Protocol):
    async def launch(self, model: ModelEntry, version: VersionEntry) -> Backend: ...

    async def discard(self, model: ModelEntry, version: VersionEntry, backend: Backend) -> None: ...


async def settled(backend: Backend, settings: GatewaySettings, what: str) -> Backend:
    """Start ``backend`` and wait until it answers, or stop it and say why it cannot."""
    backend.start()
    await backend.wait_settled(settings.runner_start_timeout_s)
    if backend.signature is None:
        reason = backend.reason
        await backend.stop()
        raise InvalidArgument(f"{what} does not load: {reason}")
    return backend


class FleetLauncher:
    """The single gateway: the runner joins its own fleet."""

    def __init__(self, fleet: Fleet, settings: GatewaySettings) -> None:
        self.fleet = fleet
        self.settings = settings

    async def launch(self, model: ModelEntry, version: VersionEntry) -> Backend:
        backend = self.fleet.backend(model, version, self.settings)
        await settled(backend, self.settings, f"version {version.version} of '{model.name}'")
        self.fleet.runners[(model.name, version.version)] = backend
        return backend

    async def discard(self, model: ModelEntry, version: VersionEntry, backend: Backend) -> None:
        self.fleet.runners.pop((model.name, version.version), None)
        await backend.stop()


async def call_supervisor(socket: Path, method: str, body: dict[str, str]) -> dict[str, Any]:
    """One call on the supervisor's socket (gateway.workers.SupervisorEndpoint)."""
    return await local_rpc.call(socket, SUPERVISOR_SERVICE, method, body)
