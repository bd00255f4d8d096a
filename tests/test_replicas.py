"""``instances: N``: several runner processes per version, least outstanding requests.

A custom model answers the pid of the process that ran it, so the test can see which
replica served each request; it sleeps a little so that concurrent requests overlap.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

from gateway.replicas import ReplicaSet
from gateway.repository import VersionEntry
from gateway.settings import GatewaySettings
from gateway.supervisor import Runner, RunnerState
from greenroom_client import Client
from greenroom_client.errors import GreenroomError
from runners.config import ModelConfig
from tests.conftest import GatewayProcess

PID_MODEL = '''
import os
import time
import numpy as np

class Model:
    """Answers the pid of the runner process that ran it, once per row."""
    inputs = [{"name": "x", "datatype": "FP64", "shape": [-1]}]
    outputs = [{"name": "pid", "datatype": "INT64", "shape": [-1]}]

    def predict(self, inputs):
        time.sleep(0.02)
        return {"pid": np.full(len(inputs["x"]), os.getpid(), dtype=np.int64)}
'''
INSTANCES = 3


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repo = tmp_path_factory.mktemp("replicas")
    (repo / "who" / "1").mkdir(parents=True)
    (repo / "who" / "1" / "model.py").write_text(PID_MODEL)
    (repo / "who" / "model.yaml").write_text(f"runner: {{instances: {INSTANCES}}}\n")
    gateway = GatewayProcess(repo, tmp_path_factory.mktemp("replicas-data"))
    yield gateway
    gateway.stop()


def _replica_pids(gateway: GatewayProcess) -> set[int]:
    pids = set()
    for child in psutil.Process(gateway.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "runners" in cmd and "--name" in cmd and cmd[cmd.index("--name") + 1] == "who":
            pids.add(child.pid)
    return pids


def _served_by(client: Client) -> int:
    answer = client.infer("who", {"x": np.zeros(1)})
    return int(answer.outputs["pid"][0])


def test_each_instance_is_a_process_and_load_is_spread(gateway: GatewayProcess) -> None:
    pids = _replica_pids(gateway)
    assert len(pids) == INSTANCES
    with Client(gateway.target, timeout=10.0) as client, ThreadPoolExecutor(12) as pool:
        served = Counter(pool.map(lambda _: _served_by(client), range(240)))
    assert set(served) == pids
    # Least outstanding requests with 12 callers over 3 replicas: none is starved.
    assert min(served.values()) >= 240 / INSTANCES / 3, served


def test_a_killed_replica_is_restarted_while_the_others_serve(gateway: GatewayProcess) -> None:
    before = _replica_pids(gateway)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    errors: list[str] = []
    served: set[int] = set()
    deadline = time.monotonic() + 20
    with Client(gateway.target, timeout=10.0) as client:
        while time.monotonic() < deadline:
            try:
                served.add(_served_by(client))
            except GreenroomError as exc:
                errors.append(f"{exc.code}: {exc.message}")
            now = _replica_pids(gateway)
            if len(now) == INSTANCES and victim not in now and served - before:
                break
    assert errors == [], "the surviving replicas should have answered every request"
    assert victim not in served or len(served) > 1
    now = _replica_pids(gateway)
    assert len(now) == INSTANCES and victim not in now, "the killed replica was not restarted"


def _runner(tmp_path: Path, index: int) -> Runner:
    entry = VersionEntry(model="m", version="1", path=tmp_path, kind="python", sha256="x")
    return Runner(entry, ModelConfig(), GatewaySettings(), tmp_path / f"{index}.sock")


def test_pick_prefers_ready_replicas_with_fewest_in_flight(tmp_path: Path) -> None:
    runners = [_runner(tmp_path, i) for i in range(3)]
    replicas = ReplicaSet(runners)
    assert replicas.reason.startswith("0 of 3 replicas ready")
    for runner, in_flight in zip(runners, (4, 1, 0), strict=True):
        runner.state = RunnerState.READY
        runner._in_flight = in_flight
    assert replicas.pick() is runners[2]
    assert replicas.pick(avoid=runners[2]) is runners[1]
    runners[2].state = RunnerState.UNAVAILABLE
    assert replicas.pick() is runners[1]
    assert replicas.state == RunnerState.READY
    assert "2 of 3 replicas ready" in replicas.reason
    runners[0]._in_flight = 1  # a tie: the one picked least recently goes first
    assert replicas.pick() is runners[0]
    assert replicas.pick() is runners[1]
    for runner in runners:
        runner.state = RunnerState.UNAVAILABLE
    assert replicas.pick() is None
