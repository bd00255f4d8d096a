"""Runners: one per (model, version), a supervised local process or an external address.

A local runner is started as ``python -m runners`` on a Unix socket, is READY only once
its grpc.health.v1 status says SERVING and its metadata has been read, and is restarted
with exponential backoff when it exits or stops answering health checks. While it is
not READY, calls fail at once with UNAVAILABLE and the reason: the gateway never waits
on a dead runner, and one runner's trouble never touches another's. ModelInfer goes to a
local runner over its framed socket (runners.framed, gateway.framed) when it has one (the
project's runners do), and over gRPC otherwise; both answers are translated by
``_translate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.framed import FramedClient, FramedStatus
from gateway.repository import ModelEntry, VersionEntry
from gateway.settings import GatewaySettings
from gateway.wire import with_string
from greenroom_client.errors import (
    DeadlineExceeded,
    GreenroomError,
    InternalError,
    ResourceExhausted,
    Unavailable,
    from_status,
)
from greenroom_client.signature import SignatureCheck
from greenroom_client.tensors import TensorSpec
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from runners.config import ModelConfig, TensorDecl

if TYPE_CHECKING:
    from gateway.replicas import Backend

# Called once a request is on its way to its runner (shadow copies start there).
Dispatched = Callable[[], None]

log = structlog.get_logger(__name__)

LISTENING = "GREENROOM_RUNNER_LISTENING"
MAX_IN_FLIGHT = 1024
HEALTH_FAILURES_BEFORE_RESTART = 3


class RunnerState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class Signature:
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    check: SignatureCheck = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check", SignatureCheck(self.inputs, self.outputs))


class StartupFailed(Exception):
    pass


def channel_options(settings: GatewaySettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.transport_limit),
        ("grpc.max_receive_message_length", settings.transport_limit),
        # Reconnect quickly after a runner restarts on the same address.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # The gateway decides about retries itself (it never retries an inference), and
        # runners are on this host: no transparent retries, no bandwidth probing.
        ("grpc.enable_retries", 0),
        ("grpc.http2.bdp_probe", 0),
    ]


def _specs(tensors: list[TensorDecl] | None, fallback: list[TensorSpec]) -> list[TensorSpec]:
    if tensors is None:
        return fallback
    return [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors]


def _translate(code: grpc.StatusCode, details: str, where: str, timeout: float) -> GreenroomError:
    """A runner's answer status (over gRPC or the framed socket) as the gateway reports it."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return Unavailable(f"{where}: runner is unavailable ({details})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{where}: no answer within {timeout:.3g}s")
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        log.error("runner internal error", where=where, details=details)
        return InternalError()
    return from_status(code.name, details or code.name)


class Runner:
    """One model version's runner and everything the gateway knows about its health."""

    def __init__(
        self,
        entry: VersionEntry,
        config: ModelConfig,
        settings: GatewaySettings,
        socket_path: Path,
    ) -> None:
        self.entry = entry
        self.config = config
        self.settings = settings
        self.socket_path = socket_path
        self.where = f"model '{entry.model}' version '{entry.version}'"
        self.state = RunnerState.LOADING
        self.reason = "starting"
        self.signature: Signature | None = None
        self.restarts = 0
        self.pid: int | None = None
        self._settled = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.UnaryUnaryMultiCallable | None = None
        # The project's own runners also answer ModelInfer on a framed socket beside the gRPC one.
        self.framed_path: Path | None = None
        if settings.framed_socket and settings.tracing == "off" and entry.external is None:
            self.framed_path = socket_path.with_name(socket_path.name + ".framed")
        self._framed: FramedClient | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._in_flight = 0
        self._drainer: asyncio.Task[None] | None = None
        ext = entry.external
        self._remote = ext if ext is not None and ext.address is not None else None
        self._remote_fields = b""
        if self._remote is not None and ext is not None:
            self._remote_fields = with_string(b"", 1, ext.model or entry.model)
            self._remote_fields = with_string(self._remote_fields, 2, ext.version or "")
        self._own_fields = with_string(with_string(b"", 1, entry.model), 2, entry.version)
        self._log = log.bind(model=entry.model, version=entry.version)
        # With tracing on, each call carries the current trace context (traceparent).
        self._trace_context: Callable[[], tuple[tuple[str, str], ...]] | None = None
        if settings.tracing != "off":
            from gateway.tracing import inject  # noqa: PLC0415 (only when tracing is on)

            self._trace_context = inject

    @property
    def in_flight(self) -> int:
        """Calls this gateway has sent to the runner that have not answered yet."""
        return self._in_flight

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        supervise = self._supervise_external if self._remote else self._supervise_local
        self._task = asyncio.create_task(supervise())

    async def wait_settled(self, timeout: float) -> None:
        """Until the first start attempt has succeeded or failed (or ``timeout``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)

    async def stop(self) -> None:
        self._stopping.set()
        self._set(RunnerState.UNAVAILABLE, "gateway is shutting down")
        await self._terminate(grace=5.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_channel()

    def _set(self, state: RunnerState, reason: str) -> None:
        if state != self.state or reason != self.reason:
            self._log.info("runner state", state=state.value, reason=reason)
        self.state, self.reason = state, reason
        if state != RunnerState.LOADING:
            self._settled.set()

    # ---- calls ------------------------------------------------------------------------

    async def infer(
        self,
        request: bytes,
        timeout: float,
        after_dispatch: Dispatched | None = None,
        parsed: pb.ModelInferRequest | None = None,
    ) -> bytes:
        """Forward a serialized ModelInferRequest; returns the serialized response.

        ``after_dispatch`` runs once the call is on its way (shadow copies start there, so
        that they are scheduled behind the primary, never ahead of it). ``parsed`` is not
        needed here: the runner process parses the bytes it is sent."""
        call, framed = self._call, self._framed
        if self.state != RunnerState.READY or call is None:
            raise Unavailable(f"{self.where} is not ready: {self.reason}")
        if self._in_flight >= MAX_IN_FLIGHT:
            raise ResourceExhausted(f"{self.where} has {self._in_flight} requests in flight")
        self._in_flight += 1
        try:
            if self._remote_fields:
                request += self._remote_fields
            # Each keeps the deadline itself: grpc, or the framed client's timer.
            if framed is not None:
                deadline = asyncio.get_running_loop().time() + timeout
                pending: Awaitable[bytes] = framed.send(request, deadline)
            elif self._trace_context is None:
                pending = call(request, timeout=timeout)
            else:
                pending = call(request, timeout=timeout, metadata=self._trace_context())
            if after_dispatch is not None:
                after_dispatch()
            reply: bytes = await pending
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc.code(), exc.details() or "", self.where, timeout) from None
        except FramedStatus as exc:
            raise _translate(exc.code, exc.details, self.where, timeout) from None
        except TimeoutError:
            raise DeadlineExceeded(f"{self.where}: no answer within {timeout:.3g}s") from None
        except asyncio.CancelledError:
            # Closing the channel of a runner that died cancels its calls; that is the
            # runner's failure, not this request's cancellation, unless it is ours.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise Unavailable(f"{self.where}: runner went away during the call") from None
        finally:
            self._in_flight -= 1
        return reply + self._own_fields if self._remote else reply

    # ---- local process ----------------------------------------------------------------

    async def _supervise_local(self) -> None:
        backoff = self.settings.restart_backoff_initial_s
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                await self._launch()
                self._set(RunnerState.READY, "serving")
                reason = await self._watch()
            except StartupFailed as exc:
                reason = str(exc)
            await self._terminate(grace=0.0)
            await self._close_channel()
            if self._stopping.is_set():
                return
            if time.monotonic() - began > self.settings.restart_backoff_reset_s:
                backoff = self.settings.restart_backoff_initial_s
            self.restarts += 1
            self._set(RunnerState.UNAVAILABLE, f"{reason}; restarting in {backoff:.1f}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max_s)

    def _base_command(self) -> list[str]:
        """``python -m runners``, or runner.yaml's command (paths from the version dir)."""
        ext = self.entry.external
        if ext is None or ext.command is None:
            return [sys.executable, "-m", "runners"]
        program = ext.command[0]
        if "/" in program and not program.startswith("/"):
            program = str((self.entry.path / program).resolve())
        return [program, *ext.command[1:]]

    def _command(self) -> list[str]:
        return [
            *self._base_command(),
            "--model-dir", str(self.entry.path),
            "--name", self.entry.model,
            "--version", self.entry.version,
            "--address", f"unix:{self.socket_path}",
            *(["--framed-socket", str(self.framed_path)] if self.framed_path is not None else []),
            "--threads", str(self.config.runner.threads),
            "--parent-pid", str(os.getpid()),
            "--log-format", self.settings.log_format,
            *self._tracing_args(),
        ]  # fmt: skip

    def _tracing_args(self) -> list[str]:
        """The project's own runner traces as the gateway does; other programs are not
        told (their command line is theirs), though the calls carry the context anyway."""
        ext = self.entry.external
        if self.settings.tracing == "off" or (ext is not None and ext.command is not None):
            return []
        args = ["--tracing", self.settings.tracing]
        if self.settings.tracing_file is not None:
            args += ["--tracing-file", str(self.settings.tracing_file.resolve())]
        return args

    async def _launch(self) -> None:
        why = self.reason.partition("; restarting")[0]
        self._set(
            RunnerState.LOADING,
            f"restart {self.restarts} after: {why}" if self.restarts else "starting runner process",
        )
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        try:
            self._proc = proc = await asyncio.create_subprocess_exec(
                *self._command(), stdout=asyncio.subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            raise StartupFailed(f"cannot start the runner: {exc}") from None
        self.pid = proc.pid
        deadline = time.monotonic() + self.config.runner.startup_timeout_s
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(
                proc.stdout.readline(), self.config.runner.startup_timeout_s
            )
        except TimeoutError:
            raise StartupFailed("runner did not bind its socket in time") from None
        if not line.startswith(LISTENING.encode()):
            code = await proc.wait()
            raise StartupFailed(f"runner exited with code {code} while starting")
        self._drainer = asyncio.create_task(self._drain(proc.stdout))
        address = line.decode().split(maxsplit=1)[1].strip()
        self._open_channel(address)
        await self._wait_serving(proc, deadline)
        self.signature = await self._read_signature(self.entry.model, self.entry.version)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._log.info("runner stdout", line=line.decode(errors="replace").rstrip())

    async def _wait_serving(self, proc: asyncio.subprocess.Process, deadline: float) -> None:
        assert self._channel is not None
        health = health_pb2_grpc.HealthStub(self._channel)
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise StartupFailed(f"runner exited with code {proc.returncode} while loading")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.05)
        raise StartupFailed("runner did not load its model in time")

    async def _watch(self) -> str:
        """Returns why the runner stopped being usable (it exited or stopped answering)."""
        proc = self._proc
        assert proc is not None and self._channel is not None
        health = health_pb2_grpc.HealthStub(self._channel)
        exited = asyncio.create_task(proc.wait())
        failures = 0
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=self.settings.health_interval_s)
                if done:
                    code = exited.result()
                    self._set(RunnerState.UNAVAILABLE, f"runner exited with code {code}")
                    return f"runner exited with code {code}"
                try:
                    await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                    failures = 0
                except grpc.aio.AioRpcError as exc:
                    failures += 1
                    if failures >= HEALTH_FAILURES_BEFORE_RESTART:
                        self._set(RunnerState.UNAVAILABLE, "runner stopped answering health checks")
                        return f"runner failed {failures} health checks ({exc.code().name})"
        finally:
            exited.cancel()

    async def _terminate(self, grace: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            await asyncio.wait_for(proc.wait(), grace or 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # ---- external address ---------------------------------------------------------------

    async def _supervise_external(self) -> None:
        ext = self._remote
        assert ext is not None and ext.address is not None
        self._open_channel(ext.address)
        assert self._channel is not None
        stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        name, version = ext.model or self.entry.model, ext.version or ""
        while not self._stopping.is_set():
            try:
                reply = await stub.ModelReady(
                    pb.ModelReadyRequest(name=name, version=version), timeout=2.0
                )
                if reply.ready and self.signature is None:
                    self.signature = await self._read_signature(name, version)
                if reply.ready:
                    self._set(RunnerState.READY, f"external runner at {ext.address}")
                else:
                    self._set(
                        RunnerState.UNAVAILABLE, f"external runner at {ext.address} says not ready"
                    )
            except grpc.aio.AioRpcError as exc:
                self._set(
                    RunnerState.UNAVAILABLE,
                    f"external runner at {ext.address} unreachable ({exc.code().name})",
                )
            except StartupFailed as exc:
                self._set(RunnerState.UNAVAILABLE, f"external runner at {ext.address}: {exc}")
            await asyncio.sleep(self.settings.health_interval_s)

    # ---- shared ---------------------------------------------------------------------------

    def _open_channel(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(self.settings))
        self._call = self._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        if self.framed_path is not None:
            self._framed = FramedClient(self.framed_path)

    async def _close_channel(self) -> None:
        framed, self._framed = self._framed, None
        if framed is not None:
            framed.close()
        channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def _read_signature(self, name: str, version: str) -> Signature:
        assert self._channel is not None
        stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            meta = await stub.ModelMetadata(
                pb.ModelMetadataRequest(name=name, version=version), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            raise StartupFailed(f"runner metadata call failed ({exc.code().name})") from None
        inputs = [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs]
        outputs = [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.outputs]
        return Signature(
            meta.platform,
            _specs(self.config.inputs, inputs),
            _specs(self.config.outputs, outputs),
        )


class Fleet:
    """Every runner of a repository: started together, stopped together."""

    def __init__(self, runners: dict[tuple[str, str], Backend], socket_dir: Path) -> None:
        self.runners = runners
        self.socket_dir = socket_dir
        self._sockets = itertools.count()

    @classmethod
    def for_models(cls, models: dict[str, ModelEntry], settings: GatewaySettings) -> Fleet:
        # Unix socket paths must stay under ~100 bytes: a short private dir, numbered files.
        fleet = cls({}, Path(tempfile.mkdtemp(prefix="greenroom-")))
        for model in models.values():
            for entry in model.versions.values():
                fleet.runners[(model.name, entry.version)] = fleet.backend(model, entry, settings)
        return fleet

    def backend(self, model: ModelEntry, entry: VersionEntry, settings: GatewaySettings) -> Backend:
        """What serves one version, by model.yaml: in process, one runner, or replicas."""
        from gateway.inprocess import InProcessRunner  # noqa: PLC0415 (it builds on this)
        from gateway.replicas import ReplicaSet  # noqa: PLC0415 (it builds on Runner)

        instances = model.config.runner.instances
        if model.config.runner.in_process(entry.version):
            return InProcessRunner(entry, model.config, settings)
        if instances == 1 or (entry.external and entry.external.address):
            return Runner(entry, model.config, settings, self._socket())
        return ReplicaSet(
            [Runner(entry, model.config, settings, self._socket()) for _ in range(instances)]
        )

    def _socket(self) -> Path:
        return self.socket_dir / f"r{next(self._sockets)}.sock"

    async def start(self, timeout: float) -> None:
        for runner in self.runners.values():
            runner.start()
        await asyncio.gather(*(r.wait_settled(timeout) for r in self.runners.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
        shutil.rmtree(self.socket_dir, ignore_errors=True)
