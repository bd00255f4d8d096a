"""Triton's own Python client, unchanged, against the gateway (in its own process)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import GatewayProcess
from tests.models import churn_data, iris

HERE = Path(__file__).parent
DEFAULT_PYTHON = HERE.parent / ".venv-tritonclient" / "bin" / "python"


def triton_python() -> str:
    python = os.environ.get("GREENROOM_TRITON_PYTHON") or str(DEFAULT_PYTHON)
    if not Path(python).exists():
        pytest.fail(f"tritonclient's virtualenv is missing ({python}): run `make tritonclient`")
    return python


def test_tritonclient_gets_the_models_answers(
    gateway: GatewayProcess, repo: Path, tmp_path: Path
) -> None:
    x, _ = iris()
    cx, _ = churn_data()
    inputs = tmp_path / "inputs.npz"
    arrays: dict[str, np.ndarray] = {"iris": x[:10], "iris-onnx": x[10:20], "churn": cx[:10]}
    np.savez(inputs, **arrays)  # type: ignore[arg-type]
    out = subprocess.run(
        [triton_python(), str(HERE / "triton_client_program.py"), gateway.target, str(inputs),
         "iris", "iris-onnx:1", "churn:2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["live"] and report["ready"]
    assert report["server"]["name"] == "greenroom"
    indexed = {(m["name"], m.get("version"), m.get("state")) for m in report["index"]["models"]}
    assert ("churn", "2", "READY") in indexed and ("iris-onnx", "1", "READY") in indexed

    sk = joblib.load(repo / "iris" / "1" / "model.joblib")
    got = report["models"]["iris"]
    assert got["ready"] and got["id"] == "triton-iris" and got["version"] == "1"
    np.testing.assert_array_equal(got["outputs"]["label"], sk.predict(x[:10]))
    np.testing.assert_array_equal(got["outputs"]["probabilities"], sk.predict_proba(x[:10]))
    assert got["metadata"]["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}
    ]

    session = ort.InferenceSession(str(repo / "iris-onnx" / "1" / "model.onnx"))
    label, proba = session.run(None, {"input": x[10:20]})
    got = report["models"]["iris-onnx:1"]
    np.testing.assert_array_equal(got["outputs"]["label"], label)
    np.testing.assert_array_equal(np.float32(got["outputs"]["probabilities"]), proba)

    churn2 = joblib.load(repo / "churn" / "2" / "model.joblib")
    got = report["models"]["churn:2"]
    assert got["version"] == "2"
    np.testing.assert_array_equal(got["outputs"]["probabilities"], churn2.predict_proba(cx[:10]))
