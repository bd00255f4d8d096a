"""One worker of ``greenroom serve --workers N``: a whole gateway but for runner supervision.

A worker is started by the supervisor (gateway/workers.py) as ``python -m gateway.worker
--plan FILE --index I``, never by hand. The plan (a pickle in the supervisor's private
0700 socket directory) holds the settings (with the concrete port), the models exactly as
the supervisor scanned them, and how each model version is reached. The worker then
assembles what ``Gateway.start`` does (ledger, router, shadows, recorder, V2 and control
services, health, reflection) with four differences, each argued here:

- **Runners are attached, not supervised.** The supervisor starts and restarts the runner
  processes; a worker reaches each one at its fixed Unix socket (``AttachedRunner``) and
  follows its grpc.health.v1 status as it would an external V2 server's, so a runner
  restart is seen by every worker within a health interval. Replica sets keep their
  least-outstanding balancing per worker; in-process models are loaded by each worker
  (they live in the process that answers) and external addresses are followed directly.
- **The port is shared** (``grpc.so_reuseport=1``): the kernel spreads *connections*
  over the workers. A client connection (one HTTP/2 channel) stays with one worker.
- **Workers talk to each other** over a private ``greenroom.internal.Peer`` service on
  their own Unix socket (``w<I>.sock`` beside the runners'), two calls only:
  ``Sync`` writes the worker's queued answers to the ledger and returns its ledger and
  shadow-drop counters; ``Reload`` re-reads the deployments from the database.
  ``WorkerControlPlane`` uses them so that the control API answers the same through any
  worker (see its docstring for the guarantees).
- **Every inference response says which worker answered**: trailing metadata
  ``x-greenroom-worker: <index>/<pid>`` (the index is stable across restarts, the pid is
  not), for a user asking "which process served this?" and for the tests.

Only worker 0 runs the automatic promotion policy (model.yaml ``promotion: {auto:
true}``): N schedules would test and promote the same candidate N times. A restarted worker
0 resumes it. A worker stops when the supervisor says so (SIGTERM: drain, flush the
ledger, exit) or when the supervisor is gone (PR_SET_PDEATHSIG, and a parent poll).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import json
import os
import pickle
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway import completion, local_rpc, logs
from gateway.control import ControlPlane, Report
from gateway.decision import Decision, Policy
from gateway.deployments import Deployment
from gateway.governance import Governor
from gateway.inprocess import InProcessRunner
from gateway.launch import call_supervisor, settled
from gateway.ledger import FeedbackResult, Ledger, LedgerStats
from gateway.metrics import Metrics, refresh_every
from gateway.monitor import Monitor
from gateway.policy import AutoPromoter
from gateway.recording import Recorder
from gateway.replicas import Backend, ReplicaSet
from gateway.repository import ModelEntry, VersionEntry
from gateway.retraining import Retrainer
from gateway.retraining_host import retrain_now, start_retrainer
from gateway.router import Router
from gateway.server import RolesCache, build_server, open_ledger, open_tracing, server_options
from gateway.servicer import SERVICE, InferenceServicer
from gateway.settings import GatewaySettings
from gateway.shadow import ShadowFanout
from gateway.supervisor import (
    HEALTH_FAILURES_BEFORE_RESTART,
    Runner,
    RunnerState,
    StartupFailed,
)
from greenroom_client.errors import FailedPrecondition, GreenroomError, Unavailable

if TYPE_CHECKING:
    from gateway.tracing import GatewayTracing

log = structlog.get_logger(__name__)

WORKER_LISTENING = "GREENROOM_WORKER_LISTENING"
WORKER_HEADER = "x-greenroom-worker"
PEER_SERVICE = "greenroom.internal.Peer"
# How long a worker waits for another to write its queued answers (as Ledger.flush does
# for its own), and for the call around it.
PEER_FLUSH_TIMEOUT_S = 5.0
PEER_CALL_TIMEOUT_S = PEER_FLUSH_TIMEOUT_S + 2.0
# Deployment changes made by another worker (or another gateway on the same PostgreSQL)
# and versions registered through another worker are also noticed by polling two counters
# this often: the safety net under Reload, for a worker too busy to answer it in time.
CHANGE_POLL_S = 0.5
# How often a worker looks again at a runner that is not READY (it comes back fast).
ATTACH_RETRY_S = 0.1
PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Attachment:
    """How a worker reaches one model version: at the runner sockets the supervisor
    serves (``replicated``: a replica set of them), in process, or at an external address."""

    kind: Literal["attached", "inprocess", "external"]
    sockets: tuple[Path, ...] = ()
    replicated: bool = False


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, written once by the supervisor."""

    settings: GatewaySettings  # with the concrete port
    models: dict[str, ModelEntry]
    attachments: dict[tuple[str, str], Attachment]
    peers: tuple[Path, ...]  # worker I's private socket is peers[I]
    supervisor: int  # pid
    # Where the workers' metrics live (PROMETHEUS_MULTIPROC_DIR); None: metrics are off.
    metrics_dir: Path | None = None
    # The supervisor's private socket (gateway.workers.SupervisorEndpoint).
    control: Path | None = None

    def save(self, path: Path) -> None:
        """Replace the file whole: a worker may read it at any moment (a registration,
        a reload), and must never find half of it."""
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(pickle.dumps(self))
        partial.replace(path)

    @staticmethod
    def load(path: Path) -> Plan:
        # The file lives in the supervisor's private (0700) directory: only this user wrote it.
        plan = pickle.loads(path.read_bytes())
        if not isinstance(plan, Plan):
            raise TypeError(f"{path} is not a worker plan")
        return plan


# ---- runners, attached ----------------------------------------------------------------


class AttachedRunner(Runner):
    """A runner process started (and restarted) by the supervisor, used by a worker.

    READY once its health says SERVING and its signature has been read (again after every
    time it was down); UNAVAILABLE at once when its socket refuses connections (it died:
    the supervisor is restarting it), or after ``HEALTH_FAILURES_BEFORE_RESTART`` slow
    health checks in a row, as a local runner would be. No process is started or stopped.
    """

    def start(self) -> None:
        self._task = asyncio.create_task(self._attend())

    async def _attend(self) -> None:
        address = f"unix:{self.socket_path}"
        self._open_channel(address)
        assert self._channel is not None
        checker = health_pb2_grpc.HealthStub(self._channel)
        failures = 0
        while not self._stopping.is_set():
            ready = self.state == RunnerState.READY
            refused = False
            try:
                reply = await checker.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                problem = "runner is loading its model"
            except grpc.aio.AioRpcError as exc:
                serving, refused = False, exc.code() == grpc.StatusCode.UNAVAILABLE
                problem = f"runner at {address} does not answer ({exc.code().name})"
            if serving:
                failures = 0
                if not ready:
                    await self._attach()
            else:
                failures += 1
                if not ready or refused or failures >= HEALTH_FAILURES_BEFORE_RESTART:
                    self._set(RunnerState.UNAVAILABLE, problem)
            ready = self.state == RunnerState.READY
            await asyncio.sleep(self.settings.health_interval_s if ready else ATTACH_RETRY_S)

    async def _attach(self) -> None:
        try:
            self.signature = await self._read_signature(self.entry.model, self.entry.version)
        except StartupFailed as exc:
            self._set(RunnerState.UNAVAILABLE, str(exc))
            return
        self._set(RunnerState.READY, "serving")


def backends(plan: Plan, settings: GatewaySettings) -> dict[tuple[str, str], Backend]:
    """One backend per model version, as the plan says; nothing is started yet."""
    return {key: backend_of(plan, key, settings) for key in plan.attachments}


def backend_of(plan: Plan, key: tuple[str, str], settings: GatewaySettings) -> Backend:
    name, version = key
    how, model = plan.attachments[key], plan.models[name]
    entry = model.versions[version]
    if how.kind == "inprocess":
        return InProcessRunner(entry, model.config, settings)
    if how.kind == "external":
        # An external address: followed like the single gateway does (no socket used).
        return Runner(entry, model.config, settings, Path(os.devnull))
    attached: list[Runner] = [
        AttachedRunner(entry, model.config, settings, path) for path in how.sockets
    ]
    return ReplicaSet(attached) if how.replicated else attached[0]


class SupervisedLauncher:
    """``gateway.launch.Launcher`` for a worker: the supervisor starts the runner, the
    worker attaches to it (the others attach when they reload, ``WorkerControlPlane``)."""

    def __init__(self, plan_path: Path, settings: GatewaySettings) -> None:
        self.plan_path = plan_path
        self.settings = settings

    async def _plan(self) -> tuple[Plan, Path]:
        plan = await asyncio.to_thread(Plan.load, self.plan_path)
        if plan.control is None:
            raise FailedPrecondition("this gateway's supervisor takes no new versions")
        return plan, plan.control

    async def launch(self, model: ModelEntry, version: VersionEntry) -> Backend:
        body = {"model": model.name, "version": version.version}
        _, control = await self._plan()
        await call_supervisor(control, "Start", body)
        plan, _ = await self._plan()  # rewritten by the supervisor with the new runner
        backend = backend_of(plan, (model.name, version.version), self.settings)
        try:
            return await settled(backend, self.settings, f"version {version.version}")
        except GreenroomError:
            await call_supervisor(control, "Drop", body)
            raise

    async def discard(self, model: ModelEntry, version: VersionEntry, backend: Backend) -> None:
        await backend.stop()
        _, control = await self._plan()
        await call_supervisor(control, "Drop", {"model": model.name, "version": version.version})


# ---- talking to the other workers -------------------------------------------------------


@dataclass(frozen=True)
class PeerState:
    """What ``Sync`` returns: after writing its queue, a worker's counters."""

    flushed: bool
    ledger: LedgerStats
    shadow_drops: dict[str, int]


class Peers:
    """This worker's private endpoint and its channels to the others.

    Calls carry small JSON documents (no generated code for an internal, versionless
    protocol between processes of one installation). A worker that refuses the
    connection is not running (it died, and what it held died with it, or it is being
    restarted and holds nothing yet); it is skipped, after one retry on a fresh channel so
    that a just-restarted worker is not missed while an old channel is backing off.
    """

    def __init__(self, paths: tuple[Path, ...], index: int) -> None:
        self.own = paths[index]
        self.first = paths[0]  # worker 0: the one that runs retraining
        self.others = [path for i, path in enumerate(paths) if i != index]
        # Set on worker 0: runs a retraining another worker was asked for.
        self.on_retrain: Callable[[str, str], Awaitable[dict[str, Any]]] | None = None
        self._channels: dict[Path, grpc.aio.Channel] = {}
        self._server: grpc.aio.Server | None = None

    async def serve(
        self,
        sync: Callable[[str], Awaitable[PeerState]],
        reload: Callable[[], Awaitable[None]],
    ) -> None:
        async def on_sync(body: dict[str, Any]) -> dict[str, Any]:
            return dataclasses.asdict(await sync(str(body.get("model", ""))))

        async def on_reload(_: dict[str, Any]) -> dict[str, Any]:
            await reload()
            return {}

        async def on_retrain(body: dict[str, Any]) -> dict[str, Any]:
            if self.on_retrain is None:
                return local_rpc.failure(FailedPrecondition("this worker runs no retrainer"))
            try:
                return {"outcome": await self.on_retrain(body["model"], body["reason"])}
            except GreenroomError as exc:
                return local_rpc.failure(exc)

        handlers: dict[str, local_rpc.Handler] = {
            "Sync": on_sync, "Reload": on_reload, "Retrain": on_retrain,
        }  # fmt: skip
        self._server = await local_rpc.serve(self.own, PEER_SERVICE, handlers)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _open(self, path: Path) -> grpc.aio.Channel:
        channel = self._channels[path] = grpc.aio.insecure_channel(f"unix:{path}")
        return channel

    async def _call(
        self,
        path: Path,
        method: str,
        body: dict[str, Any],
        timeout: float | None = PEER_CALL_TIMEOUT_S,
    ) -> bytes | None:
        request = json.dumps(body).encode()
        for _ in range(2):
            channel = self._channels.get(path) or self._open(path)
            try:
                reply: bytes = await channel.unary_unary(f"/{PEER_SERVICE}/{method}")(
                    request, timeout=timeout
                )
                return reply
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    log.warning("worker did not answer", peer=str(path), call=method,
                                code=exc.code().name)  # fmt: skip
                    return None
            # Refused: that worker is not running. Its replacement may be listening by
            # now, which this channel's reconnection backoff could hide: a fresh one.
            if self._channels.get(path) is channel:
                del self._channels[path]
            await channel.close()
        return None

    async def sync(self, model: str) -> list[PeerState]:
        """Every reachable worker writes its queued answers; their counters."""
        replies = await asyncio.gather(
            *(self._call(path, "Sync", {"model": model}) for path in self.others)
        )
        states = []
        for reply in replies:
            if reply is None:
                continue
            body = json.loads(reply)
            state = PeerState(body["flushed"], LedgerStats(**body["ledger"]), body["shadow_drops"])
            if not state.flushed:  # as the single gateway reads on after its own timeout
                log.warning(
                    "a worker could not write its queue in time", queued=state.ledger.queued
                )
            states.append(state)
        return states

    async def retrain(self, model: str, reason: str) -> dict[str, Any]:
        """Worker 0 runs the model's retraining (one retrainer per gateway) and answers
        when the run ends."""
        reply = await self._call(self.first, "Retrain", {"model": model, "reason": reason}, None)
        if reply is None:
            raise Unavailable("the worker that runs retraining did not answer")
        outcome: dict[str, Any] = local_rpc.raise_failure(json.loads(reply))["outcome"]
        return outcome

    async def reload(self, timeout: float = PEER_CALL_TIMEOUT_S) -> None:
        """Every reachable worker re-reads the deployments (and attaches the versions
        registered meanwhile); returns once they have, or after ``timeout``."""
        await asyncio.gather(*(self._call(path, "Reload", {}, timeout) for path in self.others))


def _summed(local: LedgerStats, others: Iterable[LedgerStats]) -> LedgerStats:
    stats = [local, *others]
    return LedgerStats(
        recorded_answers=sum(s.recorded_answers for s in stats),
        recorded_rows=sum(s.recorded_rows for s in stats),
        queued=sum(s.queued for s in stats),
        dropped=sum(s.dropped for s in stats),
        failed=sum(s.failed for s in stats),
        batches=sum(s.batches for s in stats),
        last_error=next((s.last_error for s in stats if s.last_error), None),
    )


class WorkerControlPlane(ControlPlane):
    """The control plane of one worker among N, answering as one gateway would.

    Guarantees, whichever worker a control call lands on:

    - **Deployments.** A change is saved to the database (current state and history, in
      one transaction, as always), applied here, then every other running worker re-reads
      the deployments before the call returns: once ``deploy``/``promote`` has answered,
      every worker routes by it. Re-reading (rather than pushing the new value) makes
      concurrent changes through different workers converge on the last one committed,
      and each is saved exactly once. A worker that missed the call (it was restarting)
      reads the deployments when it starts, and every worker also polls a change counter
      every ``CHANGE_POLL_S``. Every change re-reads first and is saved only if the
      stored deployment is still the one this worker last saw; if another worker saved
      first, it takes that one up and applies itself to it
      (``ControlPlane.change_deployment``), so that concurrent changes through different
      workers all land.
    - **Registrations.** A registration answers once the other workers have attached
      the new version: they are told to ``Reload`` and waited for up to
      ``registration_reload_timeout``, as long as one of them may be busy registering a
      version of its own. A worker busier than that attaches the version when its poll
      sees the count of registered versions move, once it is free again.
    - **Feedback, report, decide** first ask every other worker to write the answers it
      has queued (``Sync``) and wait for them (up to ``PEER_FLUSH_TIMEOUT_S`` each, as the
      single gateway waits for its own writer): they see every answer that any worker had
      returned to its client before the call began. A worker that cannot be reached holds
      nothing (see ``Peers``).
    - **Counters.** ``report``'s ledger counters and shadow drops are the sums over the
      running workers (a restarted worker's counters start again from zero).
    """

    def __init__(
        self,
        router: Router,
        ledger: Ledger,
        shadows: ShadowFanout,
        peers: Peers,
        plan_path: Path | None = None,
    ) -> None:
        super().__init__(router, ledger, shadows.drops)
        self.shadows = shadows
        self.peers = peers
        self.plan_path = plan_path  # re-read on reload: versions registered meanwhile

    async def reload(self) -> None:
        """Attach the versions registered since (by another worker), then apply the
        deployments stored in the database (one re-read at a time, so that an older read
        can never be applied after a newer one)."""
        async with self.changes:
            await self.adopt()
            await self.restore()

    async def adopt(self) -> None:
        """Attach the versions registered through the other workers (under ``changes``)."""
        if self.plan_path is None:
            return
        plan = await asyncio.to_thread(Plan.load, self.plan_path)
        for key in plan.attachments.keys() - self.router.runners.keys():
            name, version = key
            backend = backend_of(plan, key, plan.settings)
            backend.start()
            await backend.wait_settled(plan.settings.runner_start_timeout_s)
            entry = self.router.models.get(name)
            if entry is None:
                self.router.add_model(plan.models[name])
            else:
                entry.versions[version] = plan.models[name].versions[version]
            self.router.runners[key] = backend
            log.info("version attached", model=name, version=version)

    async def sync_state(self, model: str) -> PeerState:
        """The ``Sync`` call of the other workers: write what is queued, then count."""
        flushed = await asyncio.to_thread(self.ledger.flush, PEER_FLUSH_TIMEOUT_S)
        drops = self.shadows.drops(model) if model else {}
        return PeerState(flushed, self.ledger.stats, drops)

    async def change_deployment(
        self,
        model: str,
        change: Callable[[Deployment], Deployment],
        reason: str,
        actor: str,
        kind: str = "deployment",
    ) -> Deployment:
        self.router.model(model)
        await self.reload()  # the change applies to what the other workers committed
        try:
            return await super().change_deployment(model, change, reason, actor, kind)
        finally:  # also when cancelled after its save: the others see it at once
            await self.peers.reload()

    async def _take_up(self, model: str, stored: dict[str, Any] | None) -> None:
        """Another worker saved first, maybe with a version registered through it."""
        await self.adopt()
        await super()._take_up(model, stored)

    async def feedback(
        self, model: str, items: list[tuple[str, int, str]], first: int = 0
    ) -> FeedbackResult:
        self.router.model(model)
        await self.peers.sync(model)
        return await super().feedback(model, items, first)

    async def report(self, model: str, since_s: float) -> Report:
        self.router.model(model)
        others = await self.peers.sync(model)
        report = await super().report(model, since_s)
        drops = dict(report.shadow_drops)
        for other in others:
            for version, count in other.shadow_drops.items():
                drops[version] = drops.get(version, 0) + count
        ledger = _summed(report.ledger, (other.ledger for other in others))
        return dataclasses.replace(report, ledger=ledger, shadow_drops=drops)

    async def decide(self, model: str, candidate: str, policy: Policy, since_s: float) -> Decision:
        self.router.model(model)
        await self.peers.sync(model)  # pairs are read before decide's own report
        return await super().decide(model, candidate, policy, since_s)


# ---- the worker's inference service -------------------------------------------------------


class WorkerInferenceServicer(InferenceServicer):
    """The V2 service, plus ``x-greenroom-worker`` on every inference response."""

    def __init__(
        self,
        router: Router,
        settings: GatewaySettings,
        shadows: ShadowFanout,
        recorder: Recorder,
        worker: str,
        *,
        metrics: Metrics | None = None,
        tracing: GatewayTracing | None = None,
    ) -> None:
        super().__init__(router, settings, shadows, recorder, metrics=metrics, tracing=tracing)
        self._worker = ((WORKER_HEADER, worker),)

    async def ModelInfer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.set_trailing_metadata(self._worker)
        return await super().ModelInfer(raw, context)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        context.set_trailing_metadata(self._worker)
        async for reply in super().ModelStreamInfer(requests, context):
            yield reply


def worker_server_options(settings: GatewaySettings) -> list[tuple[str, int]]:
    """The gateway's server options, but sharing the port with the other workers."""
    return [
        (key, 1 if key == "grpc.so_reuseport" else value) for key, value in server_options(settings)
    ]


# ---- the worker process ---------------------------------------------------------------------


def registration_reload_timeout(settings: GatewaySettings) -> float:
    """How long a registration waits for the other workers' ``Reload``. Each takes its
    lock for it, which it holds while it registers a version of its own (a runner's
    start: up to ``runner_start_timeout_s``). A peer call's 7 s was too short on a slow
    machine: a worker busy for 8 s with its own registration missed the other's
    announcement, and that registration answered before every worker served its
    version. Not a bound: several registrations at once, or an in-process model each
    worker loads itself, can hold the lock longer, and the poll covers those. Deployment
    changes keep the peer call's wait, inside the clients' 30 s deadline."""
    return settings.runner_start_timeout_s + PEER_CALL_TIMEOUT_S


async def _follow_changes(
    control: WorkerControlPlane, ledger: Ledger, seen: tuple[int, int]
) -> None:
    while True:
        await asyncio.sleep(CHANGE_POLL_S)
        try:
            now = await asyncio.to_thread(ledger.changes)
            if now != seen:
                await control.reload()
                seen = now
        except Exception as exc:  # the database may be away for a while: try again
            log.warning("change poll failed", error=str(exc))


@dataclass
class Worker:
    settings: GatewaySettings
    index: int
    server: grpc.aio.Server
    runners: dict[tuple[str, str], Backend]
    ledger: Ledger
    shadows: ShadowFanout
    peers: Peers
    promoter: AutoPromoter | None
    follower: asyncio.Task[None]
    health: health.aio.HealthServicer
    metrics: Metrics | None = None
    refresher: asyncio.Task[None] | None = None
    tracing: GatewayTracing | None = None
    retrainer: Retrainer | None = None
    monitor: Monitor | None = None

    @classmethod
    async def start(cls, plan: Plan, index: int, plan_path: Path | None = None) -> Worker:
        """Like ``Gateway.start``, except that the runners are attached before the port is
        bound: a (re)started worker takes connections only once it can answer them."""
        settings = plan.settings
        ledger = open_ledger(settings)
        await asyncio.to_thread(ledger.start)  # migrated by the supervisor already
        runners = backends(plan, settings)
        router = Router(plan.models, runners)
        shadows = ShadowFanout.from_settings(settings)
        shadows.tracing = tracing = open_tracing(settings, f"worker {index}")
        peers = Peers(plan.peers, index)
        control = WorkerControlPlane(router, ledger, shadows, peers, plan_path)
        # Reachable before the deployments are read: a change saved after the read is
        # announced to this worker, one saved before it is in the read.
        await peers.serve(control.sync_state, control.reload)
        seen = await asyncio.to_thread(ledger.changes)
        await control.reload()  # under the lock, like a Reload that may arrive meanwhile
        for runner in runners.values():
            runner.start()
        await asyncio.gather(
            *(r.wait_settled(settings.runner_start_timeout_s) for r in runners.values())
        )
        metrics, refresher = None, None
        if plan.metrics_dir is not None:  # the supervisor serves the sum over the workers
            metrics = Metrics(multiprocess=True)
            metrics.watch(ledger, shadows)
            refresher = asyncio.create_task(refresh_every(metrics))
        recorder = Recorder(ledger, RolesCache(router), settings.record_predictions, metrics)
        servicer = WorkerInferenceServicer(
            router, settings, shadows, recorder, f"{index}/{os.getpid()}",
            metrics=metrics, tracing=tracing,
        )  # fmt: skip
        launcher = SupervisedLauncher(plan_path, settings) if plan_path is not None else None
        governor = Governor(control, launcher, settings)
        governor.announce = functools.partial(peers.reload, registration_reload_timeout(settings))
        governor.adopt = control.adopt
        retrainer = start_retrainer(governor) if index == 0 else None
        monitor = Monitor(governor, metrics) if metrics is not None and index == 0 else None
        if monitor is not None:  # one worker computes the gauges; the supervisor serves them
            monitor.start()
        if retrainer is not None:
            peers.on_retrain = functools.partial(retrain_now, retrainer)
        else:
            governor.forward_retrain = peers.retrain
        server, health_servicer = build_server(
            servicer, control, governor, worker_server_options(settings)
        )
        governor.target = f"{settings.host}:{settings.port}"
        server.add_insecure_port(f"{settings.host}:{settings.port}")
        await server.start()
        promoter = None
        if index == 0:
            promoter = AutoPromoter(control)
            promoter.start()
        follower = asyncio.create_task(_follow_changes(control, ledger, seen))
        for service in ("", SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("worker serving", port=settings.port, pid=os.getpid())
        return cls(
            settings, index, server, runners, ledger, shadows, peers, promoter, follower,
            health_servicer, metrics, refresher, tracing, retrainer, monitor,
        )  # fmt: skip

    async def stop(self) -> None:
        """Drain and flush as the single gateway does; the peer endpoint stays up until the
        ledger is written, so that the others' ``Sync`` still reaches this queue."""
        if self.monitor is not None:
            await self.monitor.stop()
        if self.retrainer is not None:  # before the server: no run outlives the ledger
            await self.retrainer.stop()
        if self.promoter is not None:
            await self.promoter.stop()
        self.follower.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s)
        await completion.drain(self.settings.shutdown_grace_s)
        await self.shadows.drain(timeout=self.settings.shadow_deadline_s)
        await asyncio.to_thread(self.ledger.stop)
        if self.refresher is not None:
            self.refresher.cancel()
        if self.metrics is not None:
            self.metrics.refresh()  # the ledger's last counts
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
        await self.peers.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        log.info("worker stopped", ledger=self.ledger.stats)


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (best effort elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def _watch_parent(supervisor: int, stop: asyncio.Event) -> None:
    while True:
        await asyncio.sleep(PARENT_POLL_S)
        if os.getppid() != supervisor:
            break
    log.warning("supervisor is gone; stopping", supervisor=supervisor)
    stop.set()


async def run(plan: Plan, index: int, plan_path: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT or the supervisor's death."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphaned = asyncio.create_task(_watch_parent(plan.supervisor, stop))
    worker = await Worker.start(plan, index, plan_path)
    print(f"{WORKER_LISTENING} {index} {os.getpid()}", flush=True)
    try:
        await stop.wait()
    finally:
        orphaned.cancel()
        await worker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.worker",
        description="one worker of 'greenroom serve --workers N' (started by it)",
    )
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    _set_parent_death_signal()
    plan = Plan.load(args.plan)
    logs.configure(plan.settings.log_format, plan.settings.log_level)
    structlog.contextvars.bind_contextvars(worker=args.index)
    asyncio.run(run(plan, args.index, args.plan))
    return 0


if __name__ == "__main__":
    # Through the module's real name, so that the plan unpickles to gateway.worker.Plan.
    from gateway.worker import main as worker_main

    sys.exit(worker_main())
