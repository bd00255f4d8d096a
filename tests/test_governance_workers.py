"""Governance with ``--workers 2``: a version registered through one worker is served by
every worker (the supervisor starts its runner, the others attach), and ``retrain``
through any worker runs on the one retrainer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from greenroom_client import Client
from greenroom_client.control import ControlClient
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc
from tests.conftest import GatewayProcess
from tests.test_gateway import request
from tests.test_governance import YAML, build, data, send, wait_for_gauge
from tests.test_workers import infer, one_channel_per_worker, worker_pids

COPY = "import shutil, sys; shutil.copy('next.joblib', sys.argv[2] + '/model.joblib')"


def retrain(ch: grpc.Channel, model: str) -> cpb.RetrainResult:
    stub = cpb_grpc.GovernanceStub(ch)
    reply: cpb.RetrainResult = stub.Retrain(cpb.RetrainRequest(model=model, reason="test"))
    return reply


def test_registration_and_retraining_reach_every_worker(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    policy = {"command": [sys.executable, "-c", COPY, "{dataset}", "{output}"]}
    build(repo, YAML + f"retraining: {json.dumps(policy)}\n")
    x, y = data(400, 1)
    strong = tmp_path / "strong.joblib"
    joblib.dump(LogisticRegression().fit(x, y), strong)
    shutil.copy(strong, repo / "m" / "next.joblib")
    gateway = GatewayProcess(repo, tmp_path / "data", env={"GREENROOM_WORKERS": "2"})
    try:
        with ControlClient(gateway.target) as control, Client(gateway.target) as client:
            send(client, x[:200], y[:200], control)
            assert control.register("m", strong)["version"] == "2"
            assert control.register("fresh", strong)["version"] == "1"
        # worker 0 computes the gauges, the supervisor serves them
        assert wait_for_gauge(gateway.metrics_url, 'greenroom_accuracy{model="m",version="1"}')
        one_channel_per_worker(gateway.target, x[:2], "m", "2")
        one_channel_per_worker(gateway.target, x[:2], "fresh", "1")
        workers = one_channel_per_worker(gateway.target, x[:2], "m", "1")
        # worker 1 hands `retrain` to worker 0, which runs the one retrainer
        first = retrain(workers["1"], "m")
        assert (first.outcome, first.version) == ("deployed", "3"), first
        second = retrain(workers["0"], "m")
        assert (second.outcome, second.version) == ("deployed", "4"), second
        for ch in workers.values():
            reply, _ = infer(ch, request("m", {"input": x[:2]}, model_version="4"))
            assert reply.model_version == "4"
            deployment = cpb_grpc.DeploymentsStub(ch).GetDeployment(
                cpb.GetDeploymentRequest(model="m")
            )
            assert [s.version for s in deployment.shadows] == ["3", "4"]
        # a worker started after the registrations attaches to their runners too
        killed = worker_pids(gateway)[1]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while worker_pids(gateway).get(1) in (None, killed) and time.monotonic() < deadline:
            time.sleep(0.2)
        for ch in per_worker_retrying(gateway.target, x[:2]).values():
            reply, _ = infer(ch, request("fresh", {"input": x[:2]}, model_version="1"))
            assert reply.model_version == "1"
    finally:
        gateway.stop()


def per_worker_retrying(target: str, x: np.ndarray) -> dict[str, grpc.Channel]:
    """``per_worker`` for a while: a restarted worker takes connections once it listens."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return one_channel_per_worker(target, x, "m", "4")
        except (grpc.RpcError, AssertionError):  # refused, or not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def register_at_once(
    workers: dict[str, grpc.Channel], messages: dict[str, cpb.RegisterRequest]
) -> dict[str, str]:
    """Each worker's registration sent at the same moment: its version, or its status."""
    outcomes: dict[str, str] = {}
    ready = threading.Barrier(len(messages))

    def register(index: str) -> None:
        stub = cpb_grpc.GovernanceStub(workers[index])
        ready.wait()
        try:
            outcomes[index] = stub.Register(messages[index], timeout=120).version
        except grpc.RpcError as error:
            outcomes[index] = error.code().name

    threads = [threading.Thread(target=register, args=(index,)) for index in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def served_by_each(
    workers: dict[str, grpc.Channel], model: str, versions: list[str], x: np.ndarray
) -> None:
    for ch in workers.values():
        for version in versions:
            reply, _ = infer(ch, request(model, {"input": x[:2]}, model_version=version))
            assert reply.model_version == version


def _two_workers(
    repo: Path, data_dir: Path, ledger: str, request: pytest.FixtureRequest
) -> GatewayProcess:
    """A two-worker gateway whose ledger is SQLite in ``data_dir`` or a fresh PostgreSQL
    database: numbering reads the versions' records, and the two differ in locking."""
    extra: list[str] = []
    if ledger == "postgresql":
        extra = ["--database-url", request.getfixturevalue("pg_cluster").create_database()]
    return GatewayProcess(repo, data_dir, *extra, env={"GREENROOM_WORKERS": "2"})


def _registration(model: str, artifact: Path) -> cpb.RegisterRequest:
    return cpb.RegisterRequest(
        model=model, artifact_name="model.joblib", artifact=artifact.read_bytes(),
        metadata_json="{}", reason="at once",
    )  # fmt: skip


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_registrations_through_two_workers_at_once_take_two_numbers(
    tmp_path: Path, ledger: str, request: pytest.FixtureRequest
) -> None:
    """Each worker numbers a registration from its own view of the model: two at once
    both picked 2, and one failed ALREADY_EXISTS. The directory's rename now claims the
    number, and the loser takes the next."""
    repo = tmp_path / "models"
    build(repo, YAML)
    x, y = data(400, 1)
    artifacts = [tmp_path / "a.joblib", tmp_path / "b.joblib"]
    joblib.dump(LogisticRegression().fit(x, y), artifacts[0])
    joblib.dump(LogisticRegression(C=0.1).fit(x, y), artifacts[1])
    gateway = _two_workers(repo, tmp_path / "data", ledger, request)
    try:
        workers = one_channel_per_worker(gateway.target, x[:2], "m", "1")
        messages = {
            index: _registration("m", artifact)
            for index, artifact in zip(sorted(workers), artifacts, strict=True)
        }
        numbers = register_at_once(workers, messages)
        assert sorted(numbers.values()) == ["2", "3"], numbers
        served_by_each(workers, "m", ["2", "3"], x)
    finally:
        gateway.stop()


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_a_new_models_first_version_registered_through_two_workers_at_once(
    tmp_path: Path, ledger: str, request: pytest.FixtureRequest
) -> None:
    """The second worker finds the model's directory made by the first: it attaches the
    model if that registration is done (and registers the next version), or answers
    ABORTED while it is under way, never "restart the gateway"."""
    repo = tmp_path / "models"
    build(repo, YAML)
    x, y = data(400, 1)
    artifact = tmp_path / "a.joblib"
    joblib.dump(LogisticRegression().fit(x, y), artifact)
    gateway = _two_workers(repo, tmp_path / "data", ledger, request)
    try:
        workers = one_channel_per_worker(gateway.target, x[:2], "m", "1")
        message = _registration("fresh", artifact)
        outcomes = register_at_once(workers, dict.fromkeys(workers, message))
        assert sorted(outcomes.values()) in (["1", "2"], ["1", "ABORTED"]), outcomes
        if "ABORTED" in outcomes.values():
            loser = next(i for i, outcome in outcomes.items() if outcome == "ABORTED")
            retried = cpb_grpc.GovernanceStub(workers[loser]).Register(message, timeout=120)
            assert retried.version == "2"
        served_by_each(workers, "fresh", ["1", "2"], x)
    finally:
        gateway.stop()


STALL_S = 20.0


def test_a_registration_waits_for_a_worker_busy_longer_than_a_peer_call(tmp_path: Path) -> None:
    """The registration answers once every worker serves the new version, even when one
    of them cannot take the announcement for longer than a peer call's 7 s: here it is
    stopped for 20 s, as a worker busy registering a version of its own on a slow machine
    holds its lock (which failed CI once: the registration answered after a 7 s wait, and
    that worker did not serve the version). With that wait the registration answered
    while the worker was still stopped: its runner starts in a few seconds."""
    repo = tmp_path / "models"
    build(repo, YAML)
    x, y = data(400, 1)
    artifact = tmp_path / "a.joblib"
    joblib.dump(LogisticRegression().fit(x, y), artifact)
    gateway = GatewayProcess(repo, tmp_path / "data", env={"GREENROOM_WORKERS": "2"})
    try:
        workers = one_channel_per_worker(gateway.target, x[:2], "m", "1")
        stalled = worker_pids(gateway)[1]
        os.kill(stalled, signal.SIGSTOP)
        stopped = time.monotonic()
        resume = threading.Timer(STALL_S, os.kill, (stalled, signal.SIGCONT))
        resume.start()
        try:
            stub = cpb_grpc.GovernanceStub(workers["0"])
            reply = stub.Register(_registration("m", artifact), timeout=120)
            waited = time.monotonic() - stopped
        finally:  # at once if the registration failed early
            resume.cancel()
            os.kill(stalled, signal.SIGCONT)
        assert reply.version == "2"
        assert waited >= STALL_S, waited  # it waited for the stopped worker
        served_by_each(workers, "m", ["2"], x)
    finally:
        gateway.stop()
