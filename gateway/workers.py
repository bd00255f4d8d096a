"""``greenroom serve --workers N``: N gateway processes on one port, one fleet of runners,
one ledger.

Why processes: a gateway process answers on one event loop under one GIL, so on a busy
host it is bound by one core however many the runners leave free. N workers put N cores
behind the same port and the same models, with no change for clients.

How (``--workers 1``, the default, is the single process of gateway/server.py, unchanged):

- The ``serve`` process becomes a **supervisor**. It scans the repository once, migrates
  the ledger once (N workers must not race Alembic on one database), and starts and
  supervises the runner processes exactly as a single gateway does (``Fleet``: health
  checks, restarts with backoff, one fixed Unix socket per runner). It serves no gRPC.
- It **holds the port**: a socket bound (never listening) to host:port, first without
  SO_REUSEPORT, so that a port something else holds is an error as it is for one process,
  then with SO_REUSEPORT turned on. Port 0 becomes a concrete port here, once, for every
  worker. The workers' listening sockets join it with ``grpc.so_reuseport=1`` and the
  kernel spreads incoming *connections* over them (a non-listening socket receives none);
  the held socket keeps the port this gateway's while a worker restarts.
- It starts N **workers** (``python -m gateway.worker``, gateway/worker.py), each a whole
  gateway (V2 and control services, health, reflection, ledger writer, shadows) that
  reaches the runners at their sockets instead of supervising them, and waits until every
  one listens before it prints ``GREENROOM_GATEWAY_LISTENING host:port``. A worker that
  exits is restarted with the runners' backoff settings; calls in flight on its
  connections fail, and clients reconnect to the others.
- On SIGTERM/SIGINT it tells every worker to stop (each stops taking calls, lets those in
  flight and its shadow copies finish, and writes everything its ledger holds), then stops
  the runners, then releases the port. Workers die with the supervisor if it is killed
  (PR_SET_PDEATHSIG and a parent poll), as runners do: no orphans.

Per worker, not shared: connections to the runners and least-outstanding balancing over
replicas, in-process models (each worker loads its own), the shadow limit
(``shadow_limit`` copies in flight per shadow version *per worker*) and the ledger queue
(``ledger_queue_answers`` per worker). Shared: the runners, the database (deployments,
history, answers, feedback), and through gateway/worker.py's peer calls a consistent
control API. A client connection stays on the worker that accepted it: spread load with
several connections (most load generators open one by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import structlog

from gateway import local_rpc, registry
from gateway.inprocess import InProcessRunner
from gateway.launch import SUPERVISOR_SERVICE, settled
from gateway.metrics import (
    MetricsPortUnavailable,
    MetricsServer,
    multiprocess_registry,
    process_gone,
)
from gateway.metrics import announce as announce_metrics
from gateway.metrics import serve as serve_metrics
from gateway.replicas import Backend, ReplicaSet
from gateway.repository import ModelEntry, load_model, scan
from gateway.server import LISTENING, open_ledger
from gateway.settings import GatewaySettings
from gateway.supervisor import Fleet, Runner, StartupFailed
from gateway.worker import WORKER_LISTENING, Attachment, Plan
from greenroom_client.errors import GreenroomError, InvalidArgument
from runners.config import ConfigError

log = structlog.get_logger(__name__)

# Beyond the drain (shutdown_grace_s) and the shadows' deadline: the ledger's last write.
WORKER_STOP_MARGIN_S = 15.0
BIND_ATTEMPTS = 10


def hold_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind host:port (every address it resolves to, as gRPC does) for this gateway and
    return the sockets and the port (a concrete one for port 0). Raises StartupFailed when
    the port is taken."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(
            name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupFailed(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    for attempt in range(BIND_ATTEMPTS if port == 0 else 1):
        held: list[socket.socket] = []
        chosen = port
        try:
            for family, address in addresses:
                held_one = _bind(family, (address[0], chosen, *address[2:]))
                if held_one is not None:
                    held.append(held_one)
                    chosen = held_one.getsockname()[1]
        except OSError as exc:
            for sock in held:
                sock.close()
            # Port 0 on several addresses: the first one's port may be taken on another.
            if exc.errno == errno.EADDRINUSE and port == 0 and attempt + 1 < BIND_ATTEMPTS:
                continue
            raise StartupFailed(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        if not held:
            raise StartupFailed(f"cannot listen on {host}:{port}: no usable address")
        return held, chosen
    raise AssertionError("unreachable")  # pragma: no cover


def _bind(family: int, address: tuple[object, ...]) -> socket.socket | None:
    """A socket bound to ``address`` without SO_REUSEPORT, so that a port anyone else holds
    is refused, then with it, so that the workers can join. Strict first (no SO_REUSEADDR:
    even another supervisor's held socket is refused); if that fails, once more with
    SO_REUSEADDR as gRPC's own listeners have it, so that the last run's TIME_WAIT
    connections do not refuse a restart (a listener still does; another supervisor's
    socket held that way, before any of its workers listens, would not: a narrow window)."""
    for reuse_address in (False, True):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse_address))
            sock.bind(address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return None  # e.g. ::1 for "localhost" on a host without IPv6; gRPC skips it
            if exc.errno != errno.EADDRINUSE or reuse_address:
                raise
            continue
        return sock
    raise AssertionError("unreachable")  # pragma: no cover


def attachment(backend: Backend) -> Attachment:
    """How workers reach what ``Fleet.for_models`` made for one model version."""
    if isinstance(backend, ReplicaSet):
        return Attachment("attached", tuple(r.socket_path for r in backend.replicas), True)
    if isinstance(backend, InProcessRunner):
        return Attachment("inprocess")
    if isinstance(backend, Runner):
        external = backend.entry.external
        if external is not None and external.address is not None:
            return Attachment("external")
        return Attachment("attached", (backend.socket_path,))
    raise StartupFailed(f"{backend.where}: {type(backend).__name__} cannot serve --workers")


class WorkerProcess:
    """One worker: started, watched, restarted with backoff, stopped."""

    def __init__(
        self,
        index: int,
        plan_path: Path,
        settings: GatewaySettings,
        metrics_dir: Path | None = None,
    ) -> None:
        self.index = index
        self.plan_path = plan_path
        self.settings = settings
        self.metrics_dir = metrics_dir  # PROMETHEUS_MULTIPROC_DIR of the workers
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._began = 0.0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._log = log.bind(worker=index)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def launch(self) -> None:
        """Start the process and wait until it listens (StartupFailed otherwise)."""
        self._began = time.monotonic()
        self.proc = proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.worker",
            "--plan", str(self.plan_path), "--index", str(self.index),
            stdout=asyncio.subprocess.PIPE, start_new_session=True, env=self._env(),
        )  # fmt: skip
        assert proc.stdout is not None
        timeout = self.settings.runner_start_timeout_s + 30.0
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise StartupFailed(f"worker {self.index} did not listen in time") from None
        if not line.startswith(WORKER_LISTENING.encode()):
            code = await proc.wait()
            raise StartupFailed(f"worker {self.index} exited with code {code} while starting")
        self._drainer = asyncio.create_task(self._drain(proc.stdout))
        self._log.info("worker listening", pid=proc.pid)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._log.info("worker stdout", line=line.decode(errors="replace").rstrip())

    def _env(self) -> dict[str, str] | None:
        """With metrics on, prometheus_client must see its directory before its import."""
        if self.metrics_dir is None:
            return None
        return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}

    def _exited(self, pid: int) -> None:
        if self.metrics_dir is not None:
            process_gone(self.metrics_dir, pid)

    def watch(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        settings = self.settings
        backoff = settings.restart_backoff_initial_s
        while True:
            assert self.proc is not None
            code = await self.proc.wait()
            self._exited(self.proc.pid)
            if self._stopping:
                return
            if time.monotonic() - self._began > settings.restart_backoff_reset_s:
                backoff = settings.restart_backoff_initial_s
            self._log.warning("worker exited; restarting", code=code, pid=self.proc.pid,
                              in_s=backoff)  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.restart_backoff_max_s)
            self.restarts += 1
            try:
                await self.launch()
            except StartupFailed as exc:  # its process has ended: the loop waits again
                self._log.error("worker restart failed", error=str(exc))

    async def stop(self) -> None:
        """SIGTERM (the worker drains and writes its ledger), SIGKILL if it takes too long."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        proc = self.proc
        if proc is not None and proc.returncode is None:
            s = self.settings
            grace = s.shutdown_grace_s + s.shadow_deadline_s + WORKER_STOP_MARGIN_S
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                self._log.error("worker did not stop in time; killing it", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc is not None:
            self._exited(proc.pid)
        if self._drainer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer


class WorkerPool:
    def __init__(
        self, plan_path: Path, settings: GatewaySettings, metrics_dir: Path | None = None
    ) -> None:
        self.workers = [
            WorkerProcess(i, plan_path, settings, metrics_dir) for i in range(settings.workers)
        ]

    async def start(self) -> None:
        """Every worker listening, or none running and StartupFailed."""
        results = await asyncio.gather(*(w.launch() for w in self.workers), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        for worker in self.workers:
            worker.watch()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))


class SupervisorEndpoint:
    """The supervisor's private socket: a worker that registers a version asks here for
    its runner (``Start``), or gives it back when the registration failed (``Drop``).
    The plan file is rewritten with it, so that workers started later attach to it too."""

    def __init__(
        self, plan: Plan, plan_path: Path, fleets: tuple[Fleet, Fleet], settings: GatewaySettings
    ) -> None:
        self.plan, self.plan_path, self.settings = plan, plan_path, settings
        # The fleet that names sockets (new runners must not reuse one), and the one whose
        # processes this supervisor runs and stops.
        self.fleet, self.supervised = fleets
        self._lock = asyncio.Lock()
        self._server: grpc.aio.Server | None = None

    async def serve(self, socket_path: Path) -> None:
        handlers: dict[str, local_rpc.Handler] = {
            "Start": self._answering(self.start_version),
            "Drop": self._answering(self.drop_version),
        }
        self._server = await local_rpc.serve(socket_path, SUPERVISOR_SERVICE, handlers)

    @staticmethod
    def _answering(fn: local_rpc.Handler) -> local_rpc.Handler:
        """A runner that cannot start is the registering worker's answer, not a crash."""

        async def handle(body: dict[str, Any]) -> dict[str, Any]:
            try:
                return await fn(body)
            except GreenroomError as exc:
                return local_rpc.failure(exc)
            except (ConfigError, StartupFailed) as exc:
                return local_rpc.failure(InvalidArgument(str(exc)))

        return handle

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)

    async def start_version(self, body: dict[str, Any]) -> dict[str, Any]:
        name, version = body["model"], body["version"]
        async with self._lock:
            fresh = await asyncio.to_thread(load_model, self.settings.repo / name)
            entry = fresh.versions.get(version)
            if entry is None:
                where = self.settings.repo / name / version
                raise InvalidArgument(f"{where} is not a servable version")
            model = self.plan.models.get(name) or dataclasses.replace(
                fresh, versions={}, primary=version
            )
            backend = self.fleet.backend(model, entry, self.settings)
            how = attachment(backend)
            if how.kind == "attached":
                await settled(backend, self.settings, f"version {version} of '{name}'")
                self.supervised.runners[(name, version)] = backend
            model.versions[version] = entry
            self.plan.models[name] = model
            self.plan.attachments[(name, version)] = how
            await asyncio.to_thread(self.plan.save, self.plan_path)
        log.info("runner added", model=name, version=version, kind=how.kind)
        return {"kind": how.kind}

    async def drop_version(self, body: dict[str, Any]) -> dict[str, Any]:
        name, version = body["model"], body["version"]
        async with self._lock:
            backend = self.supervised.runners.pop((name, version), None)
            if backend is not None:
                await backend.stop()
            self.plan.attachments.pop((name, version), None)
            model = self.plan.models.get(name)
            if model is not None:
                model.versions.pop(version, None)
                if not model.versions:
                    del self.plan.models[name]
            await asyncio.to_thread(self.plan.save, self.plan_path)
        return {}


def _plan(
    settings: GatewaySettings,
    models: dict[str, ModelEntry],
    attachments: dict[tuple[str, str], Attachment],
    directory: Path,
    metrics_dir: Path | None,
) -> Plan:
    peers = tuple(directory / f"w{i}.sock" for i in range(settings.workers))
    control = directory / "supervisor.sock"
    return Plan(settings, models, attachments, peers, os.getpid(), metrics_dir, control)


def _processes(
    fleet: Fleet, attachments: dict[tuple[str, str], Attachment]
) -> dict[tuple[str, str], Backend]:
    """The runner processes the supervisor starts (workers attach to them)."""
    return {key: b for key, b in fleet.runners.items() if attachments[key].kind == "attached"}


def _migrate(settings: GatewaySettings, models: dict[str, ModelEntry]) -> None:
    """Migrate the ledger once for every worker, and refuse altered artifacts."""
    ledger = open_ledger(settings)
    ledger.start()
    try:
        registry.reconcile(models, ledger)
    finally:
        ledger.stop()


def _serve_metrics(settings: GatewaySettings, directory: Path) -> tuple[Path, MetricsServer]:
    """/metrics served here, summed over the files the workers keep in ``directory``."""
    directory.mkdir()
    try:
        server = serve_metrics(
            multiprocess_registry(directory), settings.host, settings.metrics_port
        )
    except MetricsPortUnavailable as exc:
        raise StartupFailed(str(exc)) from None
    return directory, server


async def serve_workers(settings: GatewaySettings) -> None:
    """Run the supervisor until SIGTERM or SIGINT (see the module docstring)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    models = scan(settings.repo)
    await asyncio.to_thread(_migrate, settings, models)
    try:
        held, port = hold_port(settings.host, settings.port)
    except StartupFailed as exc:
        log.error("gateway cannot start", error=str(exc))
        raise SystemExit(1) from None
    settings = settings.model_copy(update={"port": port})
    fleet = Fleet.for_models(models, settings)
    supervised = Fleet({}, fleet.socket_dir)
    pool: WorkerPool | None = None
    endpoint: SupervisorEndpoint | None = None
    metrics_dir, metrics_server = None, None
    try:
        if settings.metrics_port >= 0:
            metrics_dir, metrics_server = _serve_metrics(settings, fleet.socket_dir / "metrics")
        attachments = {key: attachment(backend) for key, backend in fleet.runners.items()}
        supervised.runners = _processes(fleet, attachments)
        await supervised.start(settings.runner_start_timeout_s)
        plan_path = fleet.socket_dir / "plan.pickle"
        plan = _plan(settings, models, attachments, fleet.socket_dir, metrics_dir)
        plan.save(plan_path)
        endpoint = SupervisorEndpoint(plan, plan_path, (fleet, supervised), settings)
        await endpoint.serve(fleet.socket_dir / "supervisor.sock")
        pool = WorkerPool(plan_path, settings, metrics_dir)
        await pool.start()
        log.info("gateway serving", host=settings.host, port=port, workers=settings.workers,
                 models=sorted(models))  # fmt: skip
        if metrics_server is not None:
            announce_metrics(metrics_server)
        print(f"{LISTENING} {settings.host}:{port}", flush=True)
        await stop.wait()
    except StartupFailed as exc:
        log.error("gateway cannot start", error=str(exc))
        raise SystemExit(1) from None
    finally:
        if pool is not None:
            await pool.stop()
        if endpoint is not None:
            await endpoint.stop()
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)
        await supervised.stop()  # the runners, then the socket directory (and the plan)
        for sock in held:
            sock.close()
        log.info("gateway stopped")
