"""The Go runner under the gateway: supervised from runner.yaml's command, shadowing the
Python runner on the same LightGBM model, and restarted after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
from lightgbm import LGBMClassifier
from sklearn.datasets import make_classification

from gateway.ledger import Ledger
from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess, wait_for_predictions
from tests.test_gateway import request

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "runners" / "go" / "bin" / "greenroom-runner-go"


@pytest.fixture(scope="module")
def go_runner() -> Path:
    done = subprocess.run(
        ["make", "-C", str(ROOT / "runners" / "go"), "build"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return BINARY


@pytest.fixture
def lgbm_gateway(go_runner: Path, tmp_path: Path) -> Iterator[tuple[GatewayProcess, np.ndarray]]:
    x, y = make_classification(n_samples=600, n_features=6, n_informative=4, random_state=3)
    x = x.astype(np.float32)
    clf = LGBMClassifier(n_estimators=30, num_leaves=8, random_state=0, verbose=-1).fit(
        x[:300], y[:300]
    )
    repo = tmp_path / "models"
    (repo / "lgbm" / "1").mkdir(parents=True)
    joblib.dump(clf, repo / "lgbm" / "1" / "model.joblib")
    (repo / "lgbm" / "2").mkdir()
    clf.booster_.save_model(str(repo / "lgbm" / "2" / "model.txt"))
    (repo / "lgbm" / "2" / "runner.yaml").write_text(f"command: [{go_runner}]\n")
    # Agreement is the subject, not latency: the shadow's copies wait for batch-mates and
    # go over gRPC while the primary uses its framed socket, so no p99 guardrail here.
    (repo / "lgbm" / "model.yaml").write_text('primary: "1"\npromotion: {max_p99_ratio: null}\n')
    gateway = GatewayProcess(repo, tmp_path / "data", env={"GREENROOM_SHADOW_LIMIT": "1000"})
    try:
        yield gateway, x[300:]
    finally:
        gateway.stop()


def test_go_runner_shadows_the_python_runner_and_agrees(
    lgbm_gateway: tuple[GatewayProcess, np.ndarray], tmp_path: Path
) -> None:
    gateway, x = lgbm_gateway
    with ControlClient(gateway.target) as control:
        control.deploy("lgbm", "1", shadows={"2": 1.0}, reason="Go runner as a shadow")
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for i in range(250):
                stub.ModelInfer(request("lgbm", {"input": x[i : i + 1]}, id=f"g{i}"))
        wait_for_predictions(control, "lgbm", "2", 250)
        truth = [(f"g{i}", 0, str(i % 2)) for i in range(250)]
        control.feedback("lgbm", truth)
        decision = control.decide("lgbm", "2", min_pairs=200)
    assert decision["decision"] == "hold", decision["reasons"]
    assert decision["pairs"] == 250
    assert decision["discordant"] == {"primary_only": 0, "candidate_only": 0}
    ledger = Ledger.for_data_dir(gateway.data_dir)
    ledger.start()
    try:
        rows = ledger.rows("lgbm")
    finally:
        ledger.stop()
    by_version: dict[str, dict[str, tuple[str | None, tuple[float, ...] | None]]] = {}
    for row in rows:
        by_version.setdefault(row.version, {})[row.request_id] = (row.label, row.probabilities)
    assert len(by_version["1"]) == len(by_version["2"]) == 250
    for rid, (label, proba) in by_version["1"].items():
        go_label, go_proba = by_version["2"][rid]
        assert go_label == label
        assert proba is not None and go_proba is not None
        np.testing.assert_allclose(go_proba, proba, rtol=1e-5, atol=1e-6)


def test_go_runner_killed_is_restarted(lgbm_gateway: tuple[GatewayProcess, np.ndarray]) -> None:
    gateway, x = lgbm_gateway
    victim = gateway.runner_pids_of("greenroom-runner-go")
    assert len(victim) == 1
    os.kill(victim[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    answered = None
    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline and answered is None:
            try:
                answered = stub.ModelInfer(request("lgbm", {"input": x[:1]}, model_version="2"))
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                time.sleep(0.1)
    assert answered is not None and answered.model_version == "2"
    assert gateway.runner_pids_of("greenroom-runner-go") not in ([], victim)
