"""The TypeScript client (clients/node) against a live gateway, on a model trained here.

``make -C clients/node build`` installs the pinned npm packages, generates the types from
proto/ and compiles; then the example programs run as a user would run them, through
``make example`` and ``make feedback``: ``infer`` prints the V2 REST-style answer, which
must equal the model's own ``predict``/``predict_proba``, and ``feedback`` sends a label
that the report (``greenroom report``) then counts for the primary version. A refused call
exits non-zero with the gRPC status and the gateway's message.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from greenroom_client.control import ControlClient
from tests.conftest import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "clients" / "node"
MODEL = "iris-node"
ROWS = [0, 60, 120, 149]  # one of each class, and a row-major check over several rows


@pytest.fixture(scope="module")
def node_client() -> Path:
    """Builds clients/node once; fails (does not skip) when Node or npm is missing."""
    missing = [tool for tool in ("node", "npm", "make") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the TypeScript client needs Node 20 and npm")
    build = subprocess.run(
        ["make", "--no-print-directory", "-C", str(NODE_DIR), "build"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"make -C clients/node build failed:\n{build.stdout}\n{build.stderr}")
    return NODE_DIR


@pytest.fixture(scope="module")
def classifier() -> tuple[Pipeline, np.ndarray]:
    data = load_iris()
    x = data.data.astype(np.float32)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, data.target), x


@pytest.fixture(scope="module")
def gateway(
    classifier: tuple[Pipeline, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    repo = tmp_path_factory.mktemp("node-models")
    (repo / MODEL / "1").mkdir(parents=True)
    joblib.dump(classifier[0], repo / MODEL / "1" / "model.joblib")
    process = GatewayProcess(repo, tmp_path_factory.mktemp("node-data"))
    try:
        yield process
    finally:
        process.stop()


def run_node(node_dir: Path, make_target: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``make -s -C clients/node <target> ARGS="..."``: the example program, as documented."""
    return subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "-C",
            str(node_dir),
            make_target,
            f"ARGS={shlex.join(args)}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_recorded(control: ControlClient, answers: int, timeout: float = 15.0) -> None:
    """The ledger writes off the hot path: wait until the answers are in it."""
    deadline = time.monotonic() + timeout
    while control.report(MODEL)["ledger"]["recorded_answers"] < answers:
        assert time.monotonic() < deadline, "the gateway did not record the answer in time"
        time.sleep(0.05)


def test_node_infer_and_feedback(
    node_client: Path,
    gateway: GatewayProcess,
    classifier: tuple[Pipeline, np.ndarray],
    tmp_path: Path,
) -> None:
    model, x = classifier
    rows = x[ROWS]
    request_file = tmp_path / "request.json"
    request_file.write_text(
        json.dumps(
            {
                "id": "node-req-1",
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(rows.shape),
                        "datatype": "FP32",
                        "data": rows.ravel().tolist(),
                    }
                ],
            }
        )
    )
    infer = run_node(
        node_client, "example", "--target", gateway.target, "--model", MODEL,
        "--input", str(request_file),
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr
    answer: dict[str, Any] = json.loads(infer.stdout)
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (
        MODEL,
        "1",
        "node-req-1",
    )
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"label", "probabilities"}
    label, proba = outputs["label"], outputs["probabilities"]
    assert (label["datatype"], label["shape"]) == ("INT64", [len(ROWS)])
    assert label["data"] == model.predict(rows).tolist()
    assert (proba["datatype"], proba["shape"]) == ("FP64", [len(ROWS), 3])
    np.testing.assert_allclose(
        np.array(proba["data"]).reshape(len(ROWS), 3), model.predict_proba(rows), rtol=0, atol=1e-12
    )

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["request_id", "row", "label"])
        writer.writerow(["node-req-1", 0, str(load_iris().target[ROWS[0]])])
    with ControlClient(gateway.target) as control:
        wait_recorded(control, 1)
        feedback = run_node(
            node_client, "feedback", "--target", gateway.target, "--model", MODEL,
            "--file", str(labels),
        )  # fmt: skip
        assert feedback.returncode == 0, feedback.stderr
        assert json.loads(feedback.stdout) == {
            "accepted": 1,
            "matched": 1,
            "unmatched": 0,
            "duplicates": 0,
        }
        versions = {v["version"]: v for v in control.report(MODEL)["versions"]}
    assert (versions["1"]["role"], versions["1"]["labelled"]) == ("primary", 1)


def test_node_infer_error_carries_status(
    node_client: Path, gateway: GatewayProcess, tmp_path: Path
) -> None:
    request_file = tmp_path / "request.json"
    request_file.write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ]
            }
        )
    )
    infer = run_node(
        node_client, "example", "--target", gateway.target, "--model", "nope",
        "--input", str(request_file),
    )  # fmt: skip
    assert infer.returncode != 0
    assert infer.stdout == ""
    assert "error: NOT_FOUND: model 'nope' is not in the repository" in infer.stderr
