"""Automatic promotion by the model.yaml policy, and the gateway on PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np

from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess, wait_for_predictions
from tests.pg import Cluster
from tests.test_gateway import request
from tests.test_shadow_e2e import build


def send(target: str, x: np.ndarray, prefix: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i, row in enumerate(x):
            stub.ModelInfer(request("churn", {"input": row[None, :]}, id=f"{prefix}{i}"))


def test_policy_promotes_on_evidence_and_says_why(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    x, y, _ = build(repo)
    (repo / "churn" / "model.yaml").write_text(
        "promotion: {auto: true, interval_s: 0.3, min_pairs: 100, max_p99_ratio: null}\n"
    )
    gateway = GatewayProcess(repo, tmp_path / "data", env={"GREENROOM_SHADOW_LIMIT": "2000"})
    try:
        with ControlClient(gateway.target) as control:
            control.deploy("churn", "1", shadows={"3": 1.0, "2": 1.0}, reason="candidates")
            send(gateway.target, x[:400], "p-")
            time.sleep(1.0)  # the twin (v3) has pairs but no evidence: nothing happens
            assert control.deployment("churn")["primary"] == "1"
            control.feedback(
                "churn", [(f"p-{i}", 0, str(label)) for i, label in enumerate(y[:400])]
            )
            deadline = time.monotonic() + 20
            while control.deployment("churn")["primary"] == "1" and time.monotonic() < deadline:
                time.sleep(0.2)
            deployment = control.deployment("churn")
            history = control.history("churn")
        assert deployment["primary"] == "2"
        assert {"version": "1", "fraction": 1.0} in deployment["shadows"]
        last = history[-1]
        assert last["actor"] == "policy"
        assert last["reason"].startswith("automatic promotion: candidate better on")
        assert "mixture" in last["reason"]
    finally:
        gateway.stop()


def test_gateway_on_postgresql(tmp_path: Path, pg_cluster: Cluster, repo: Path) -> None:
    url = pg_cluster.create_database()
    models = tmp_path / "models"
    models.mkdir()
    (models / "churn").symlink_to(repo / "churn")
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    gateway = GatewayProcess(models, tmp_path / "data", "--database-url", url)
    try:
        with ControlClient(gateway.target) as control:
            control.deploy("churn", "1", shadows={"2": 1.0}, reason="on postgres")
            send(gateway.target, x, "pg-")
            wait_for_predictions(control, "churn", "2", 50)
            fed = control.feedback("churn", [(f"pg-{i}", 0, "1") for i in range(50)])
            assert fed == {"accepted": 50, "matched": 50, "unmatched": 0, "duplicates": 0}
            report = control.report("churn")
        assert [(v["version"], v["labelled"]) for v in report["versions"]] == [("1", 50), ("2", 50)]
    finally:
        gateway.stop()
    assert not (tmp_path / "data" / "ledger.db").exists()
    again = GatewayProcess(models, tmp_path / "data2", "--database-url", url)
    try:
        with ControlClient(again.target) as control:
            assert control.deployment("churn")["shadows"] == [{"version": "2", "fraction": 1.0}]
            assert control.report("churn")["versions"][0]["labelled"] == 50
    finally:
        again.stop()
