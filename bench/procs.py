"""Start a server process, learn its address from its LISTENING line, wait for health.

A server that takes its address from its configuration and has no grpc.health.v1
service (MLServer) is started with that ``address`` and a ``ready`` probe instead.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc


class StartError(RuntimeError):
    """The process exited, never printed its LISTENING line, or never became SERVING."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[str]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def _pump(stream: IO[str], log: IO[str], found: queue.Queue[str]) -> None:
    """Copy stdout to the log (so the child never blocks) and report the LISTENING line."""
    for line in stream:
        log.write(line)
        log.flush()
        words = line.split()
        if len(words) == 2 and words[0].endswith("_LISTENING"):
            found.put(words[1])


def _wait_listening(
    process: subprocess.Popen[str], found: queue.Queue[str], deadline: float
) -> str:
    while time.monotonic() < deadline:
        try:
            return found.get(timeout=0.1)
        except queue.Empty:
            if process.poll() is not None:
                raise StartError(f"exited with code {process.returncode}") from None
    raise StartError("no LISTENING line before the start timeout")


def _health_status(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return None
        status: int = response.status
        return status


Probe = Callable[[str], bool]


def health_serving(address: str) -> bool:
    return bool(_health_status(address) == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(
    process: subprocess.Popen[str], address: str, deadline: float, ready: Probe = health_serving
) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"exited with code {process.returncode} before SERVING")
        if ready(address):
            return
        time.sleep(0.1)
    raise StartError(f"{address} not ready (SERVING) before the start timeout")


def start(
    name: str,
    argv: list[str],
    log_dir: Path,
    timeout_s: float = 60.0,
    *,
    address: str | None = None,
    ready: Probe = health_serving,
) -> Server:
    """Start ``argv``; return once it is listening and ``ready`` (by default: health says
    SERVING), else stop it and raise. Without ``address`` it is read from the process's
    LISTENING line."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
    )
    found: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=_pump, args=(process.stdout, log, found), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    try:
        if address is None:
            address = _wait_listening(process, found, deadline)
        wait_serving(process, address, deadline, ready)
    except StartError:
        _terminate(process)
        raise
    return Server(name=name, process=process, address=address, log_path=log_path)


def rss_bytes(pid: int) -> tuple[int, dict[int, int]] | None:
    """Resident memory of ``pid`` and of each of its descendants (by pid); None if gone."""
    try:
        parent = psutil.Process(pid)
        if parent.status() == psutil.STATUS_ZOMBIE:
            return None
        own = parent.memory_info().rss
        descendants = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    children: dict[int, int] = {}
    for child in descendants:
        try:
            children[child.pid] = child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return own, children


def _terminate(process: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop(server: Server) -> None:
    """SIGTERM the server (it stops its own children); kill any descendant it left."""
    try:
        descendants = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    _terminate(server.process)
    for child in descendants:
        try:
            child.kill()  # psutil checks it is still the same process, not a reused pid
        except psutil.NoSuchProcess:
            continue


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_all(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.send_signal(signum)  # psutil checks the pid is still this process


@contextlib.contextmanager
def paused(servers: Iterable[Server]) -> Iterator[None]:
    """SIGSTOP every process of these servers (each with its children: runners, ledger
    writers, MLServer's workers) for the block, then SIGCONT them. A server idle during
    another's turn still wakes for its timers (health checks, flushes) and keeps its
    memory warm at the other's expense; on two cores that showed in the turn's p50."""
    stopped = [process for server in servers for process in _tree(server.pid)]
    try:
        _signal_all(stopped, signal.SIGSTOP)
        yield
    finally:
        _signal_all(stopped, signal.SIGCONT)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
