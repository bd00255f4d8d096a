"""The Python client's ``infer`` example program against a live gateway."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import joblib
import numpy as np

from tests.conftest import GatewayProcess
from tests.models import iris

ROOT = Path(__file__).resolve().parent.parent


def test_python_infer_program_prints_the_models_answers(
    gateway: GatewayProcess, repo: Path, tmp_path: Path
) -> None:
    x, _ = iris()
    request = {
        "id": "py-example-1",
        "inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": x[:3].tolist()}],
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    args = f"--target {gateway.target} --model iris --input {path}"
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "clients" / "python"), "example", f"ARGS={args}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    model = joblib.load(repo / "iris" / "1" / "model.joblib")
    assert (body["model_name"], body["model_version"], body["id"]) == ("iris", "1", "py-example-1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [3]
    assert outputs["label"]["data"] == model.predict(x[:3]).tolist()
    proba = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    np.testing.assert_array_equal(proba, model.predict_proba(x[:3]))
