"""What the tests of the example programs in other languages share: an iris classifier
served by a real gateway, a V2 REST-style request file, and the check of the printed
V2 REST-style answer against the model's own predict/predict_proba."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.conftest import GatewayProcess
from tests.models import iris


def iris_classifier() -> LogisticRegression:
    x, y = iris()
    return LogisticRegression(max_iter=500).fit(x, y)


def serve_iris(
    model: LogisticRegression, tmp_path_factory: pytest.TempPathFactory, prefix: str
) -> Iterator[GatewayProcess]:
    """A gateway serving ``model`` as iris version 1, stopped when the generator closes."""
    repo = tmp_path_factory.mktemp(f"{prefix}-models")
    (repo / "iris" / "1").mkdir(parents=True)
    joblib.dump(model, repo / "iris" / "1" / "model.joblib")
    process = GatewayProcess(repo, tmp_path_factory.mktemp(f"{prefix}-data"))
    try:
        yield process
    finally:
        process.stop()


def rows() -> np.ndarray:
    """The request's rows: one of each class, and a row-major check over several rows."""
    x, _ = iris()
    return x[[0, 60, 120, 149]]


def write_request(path: Path, request_id: str) -> None:
    x = rows()
    request = {
        "id": request_id,
        # Nested data, as V2 REST allows; float32 values written exactly.
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "data": [[float(v) for v in row] for row in x]}],
    }  # fmt: skip
    path.write_text(json.dumps(request))


def check_answer(answer: dict[str, Any], model: LogisticRegression, request_id: str) -> None:
    x = rows()
    assert answer["model_name"] == "iris"
    assert answer["model_version"] == "1"
    assert answer["id"] == request_id
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"label", "probabilities"}
    label, proba = outputs["label"], outputs["probabilities"]
    assert (label["datatype"], label["shape"]) == ("INT64", [len(x)])
    assert label["data"] == model.predict(x).tolist()
    assert (proba["datatype"], proba["shape"]) == ("FP64", [len(x), 3])
    # FP64 exact: flat, row-major, and printed in a form that reads back bit for bit.
    assert proba["data"] == model.predict_proba(x).astype(np.float64).ravel().tolist()
