"""The loop end to end: a weak primary, a strong shadow and a twin of the primary as a
second shadow; live traffic through Triton's client; truth through the CLI; report,
decide, promote, history."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import log_loss
from sklearn.tree import DecisionTreeClassifier

from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.test_external_and_cli import greenroom
from tests.test_gateway import request
from tests.test_tritonclient import HERE, triton_python

ROWS = 1500


def build(repo: Path) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    x, y = make_classification(
        n_samples=4000, n_features=8, n_informative=5, flip_y=0.05, random_state=11
    )
    x = x.astype(np.float32)
    weak = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x[:2000], y[:2000])
    strong = GradientBoostingClassifier(random_state=0).fit(x[:2000], y[:2000])
    models = {"1": weak, "2": strong, "3": weak}
    for version, model in models.items():
        (repo / "churn" / version).mkdir(parents=True)
        joblib.dump(model, repo / "churn" / version / "model.joblib")
    # Five busy processes share this 2-core machine here, so a shadow's tail latency is
    # mostly the scheduler's; the latency guardrail is tested in test_decision.py.
    (repo / "churn" / "model.yaml").write_text("promotion: {max_p99_ratio: null}\n")
    return x[2000 : 2000 + ROWS], y[2000 : 2000 + ROWS], models


def cli_json(*args: str) -> Any:
    done = greenroom(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check_journal(target: str) -> None:
    """Registrations at the first start, then the two deployment changes with reasons."""
    journal = cli_json("history", "churn", "--target", target)
    assert [h["kind"] for h in journal] == ["registration"] * 3 + ["deployment", "promotion"]
    history = [h for h in journal if h["deployment"]]
    assert [h["reason"] for h in history] == ["try v2 and a twin of v1", "decide said promote"]
    assert [h["deployment"]["primary"] for h in history] == ["1", "2"]


def test_shadow_feedback_report_decide_promote(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    x, y, models = build(repo)
    # The client below sends as fast as the primary answers, and two shadows triple the work
    # on 2 cores: their copies fall behind. Room for all of them keeps every row paired;
    # dropping copies under saturation is tested in test_control.py.
    gateway = GatewayProcess(repo, tmp_path / "data", env={"GREENROOM_SHADOW_LIMIT": "2000"})
    try:
        target = gateway.target
        cli_json("deploy", "churn", "--primary", "1", "--shadow", "2:1.0", "--shadow", "3:1.0",
                 "--reason", "try v2 and a twin of v1", "--target", target)  # fmt: skip
        rows = tmp_path / "rows.npy"
        np.save(rows, x)
        program = str(HERE / "triton_send_program.py")
        sent = subprocess.run(
            [triton_python(), program, target, "churn", str(rows), "q-"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        answers = json.loads(sent.stdout)
        assert [a[1] for a in answers] == ["1"] * ROWS
        np.testing.assert_array_equal([a[2] for a in answers], models["1"].predict(x))  # type: ignore[attr-defined]

        labels = tmp_path / "labels.csv"
        with labels.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "row", "label"])
            writer.writerows([f"q-{i}", 0, int(label)] for i, label in enumerate(y))
        fed = cli_json("feedback", "churn", "--file", str(labels), "--target", target)
        assert fed == {"accepted": ROWS, "matched": ROWS, "unmatched": 0, "duplicates": 0}

        report = cli_json("report", "churn", "--target", target)
        assert report["ledger"]["shadow_drops"] == {"2": 0, "3": 0}
        by_version = {v["version"]: v for v in report["versions"]}
        for version, model in models.items():
            expected = float(np.mean(model.predict(x) == y))  # type: ignore[attr-defined]
            assert by_version[version]["predictions"] == ROWS
            assert by_version[version]["labelled"] == ROWS
            assert by_version[version]["accuracy"] == pytest.approx(expected, abs=1e-12)
            proba = model.predict_proba(x)  # type: ignore[attr-defined]
            assert by_version[version]["log_loss"] == pytest.approx(log_loss(y, proba), rel=1e-9)
        assert [by_version[v]["role"] for v in "123"] == ["primary", "shadow", "shadow"]

        better = cli_json("decide", "churn", "--candidate", "2", "--target", target)
        assert better["decision"] == "promote", better["reasons"]
        assert better["p_value"] < 0.05 and better["pairs"] == ROWS
        twin = cli_json("decide", "churn", "--candidate", "3", "--target", target)
        assert twin["decision"] == "hold", twin
        assert twin["discordant"] == {"primary_only": 0, "candidate_only": 0}

        promoted = cli_json("promote", "churn", "2", "--reason", "decide said promote",
                            "--target", target)  # fmt: skip
        assert promoted["primary"] == "2"
        assert {"version": "1", "fraction": 1.0} in promoted["shadows"]
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(request("churn", {"input": x[:1]})).model_version == "2"

        check_journal(target)
    finally:
        gateway.stop()
