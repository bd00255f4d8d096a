"""Fixtures: a model repository trained into a temp folder, and real gateway processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.models import build_repository
from tests.pg import Cluster, PostgresMissing, bin_dir, postgres_cluster

GREENROOM = [sys.executable, "-m", "gateway.cli"]


class GatewayProcess:
    """``greenroom serve`` on port 0, started and stopped as a user would."""

    def __init__(
        self,
        repo: Path,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        # Metrics on a free port too (the default, 8002, would collide between gateways);
        # ``extra`` may say otherwise.
        command = [*GREENROOM, "serve", "--repo", str(repo), "--port", "0", "--metrics-port", "0"]
        self.repo = repo
        self.data_dir = data_dir
        self.log_path = log_path  # the gateway's log (stderr), when the test reads it
        self.proc = subprocess.Popen(
            [*command, "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE,
            stderr=None if log_path is None else log_path.open("w"),
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.metrics_port: int | None = None  # from the METRICS line, when served
        self.target = self._wait_listening(timeout=120)
        self.pid = self.proc.pid

    @property
    def metrics_url(self) -> str:
        assert self.metrics_port is not None, "this gateway serves no metrics"
        return f"http://{self.target.rsplit(':', 1)[0]}:{self.metrics_port}/metrics"

    def _wait_listening(self, timeout: float) -> str:
        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("GREENROOM_GATEWAY_METRICS") and self.metrics_port is None:
                    self.metrics_port = int(line.split()[1].rsplit(":", 1)[1])
                if line.startswith("GREENROOM_GATEWAY_LISTENING") and not found:
                    found.append(line.split()[1])

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode} before listening")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("gateway did not start in time")
            time.sleep(0.05)
        return found[0]

    def runner_pids(self) -> dict[str, int]:
        """Runner processes by ``name/version``, read from their command lines."""
        pids = {}
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "runners" in cmd and "--name" in cmd:
                name = cmd[cmd.index("--name") + 1]
                version = cmd[cmd.index("--version") + 1]
                pids[f"{name}/{version}"] = child.pid
        return pids

    def runner_pids_of(self, program: str) -> list[int]:
        """Child processes whose command starts with ``program`` (runners of any language)."""
        pids = []
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if cmd and Path(cmd[0]).name == program:
                pids.append(child.pid)
        return pids

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    build_repository(path)
    return path


@pytest.fixture(scope="session")
def gateway(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(repo, tmp_path_factory.mktemp("data")) as process:
        yield process


@pytest.fixture(scope="session")
def stub(gateway: GatewayProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        bin_dir()
        missing = None
    except PostgresMissing as e:
        missing = str(e)
    if missing:
        pytest.fail(missing, pytrace=False)
    with postgres_cluster() as cluster:
        yield cluster


def wait_for_predictions(
    control: ControlClient, model: str, version: str, count: int, timeout: float = 30.0
) -> None:
    """Until the ledger holds ``count`` predictions of ``version``: shadow copies are
    answered after the primary and recorded in batches, so a report or a label sent
    right after the traffic may not see the last ones yet."""
    deadline = time.monotonic() + timeout
    while True:
        versions = {v["version"]: v for v in control.report(model)["versions"]}
        seen = versions.get(version, {}).get("predictions", 0)
        if seen >= count:
            return
        assert time.monotonic() < deadline, f"{model}/{version}: {seen} of {count} recorded"
        time.sleep(0.1)
