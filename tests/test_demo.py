"""The demo repository: trained on demand, never overwritten, and its models really work."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_iris

from gateway.demo import CHURN_FEATURES, DEMO_MODELS, churn_traffic, ensure_demo_repository

EXPECTED_FILES = [
    "iris/model.yaml",
    "iris/1/model.joblib",
    "iris/1/training.json",
    "iris-onnx/model.yaml",
    "iris-onnx/1/model.onnx",
    "iris-onnx/1/training.json",
    "churn/model.yaml",
    "churn/1/model.joblib",
    "churn/1/training.json",
    "churn/2/model.joblib",
    "churn/2/training.json",
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    assert ensure_demo_repository(path) == list(DEMO_MODELS)
    return path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_creates_every_model_and_nothing_else(repo: Path) -> None:
    assert _files(repo) == sorted(EXPECTED_FILES)  # no staging directories left behind


def test_churn_model_yaml_names_v1_primary(repo: Path) -> None:
    text = (repo / "churn" / "model.yaml").read_text()
    assert "task: classification" in text
    assert 'primary: "1"' in text


def test_is_idempotent_and_never_touches_existing_models(repo: Path) -> None:
    before = {name: (repo / name).stat().st_mtime_ns for name in EXPECTED_FILES}
    assert ensure_demo_repository(repo) == []
    assert {name: (repo / name).stat().st_mtime_ns for name in EXPECTED_FILES} == before


def test_creates_only_the_missing_model(tmp_path: Path) -> None:
    (tmp_path / "iris").mkdir()  # whatever is there is left alone, even an empty directory
    assert ensure_demo_repository(tmp_path, models=["iris", "iris-onnx"]) == ["iris-onnx"]
    assert not any((tmp_path / "iris").iterdir())


def test_unknown_model_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo models \\['nope'\\]"):
        ensure_demo_repository(tmp_path, models=["nope"])


def test_training_json_records_provenance(repo: Path) -> None:
    for name, version in [("iris", "1"), ("iris-onnx", "1"), ("churn", "1"), ("churn", "2")]:
        record = json.loads((repo / name / version / "training.json").read_text())
        assert record["model"] == name
        assert record["version"] == version
        assert record["libraries"]["scikit-learn"]
        assert record["created_at"]
        assert record["data"]["source"]
        assert "class" in record["estimator"]
        assert 0.5 < record["metrics"]["train_accuracy"] <= 1.0


def test_churn_v2_is_the_better_candidate(repo: Path) -> None:
    """The shadow demo needs v2 to beat v1 on data neither saw."""
    v1, v2 = (
        json.loads((repo / "churn" / v / "training.json").read_text())["metrics"]
        for v in ("1", "2")
    )
    assert v2["holdout_accuracy"] > v1["holdout_accuracy"] + 0.02


def test_joblib_models_predict(repo: Path) -> None:
    x_iris, y_iris = load_iris(return_X_y=True)
    iris = joblib.load(repo / "iris" / "1" / "model.joblib")
    assert (iris.predict(x_iris.astype(np.float32)) == y_iris).mean() > 0.9

    x_churn, y_churn = churn_traffic()
    assert x_churn.shape[1] == CHURN_FEATURES
    for version in ("1", "2"):
        model = joblib.load(repo / "churn" / version / "model.joblib")
        assert (model.predict(x_churn) == y_churn).mean() > 0.8


def test_onnx_model_agrees_with_sklearn(repo: Path) -> None:
    x = load_iris(return_X_y=True)[0].astype(np.float32)
    session = ort.InferenceSession(
        str(repo / "iris-onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("input", "tensor(float)", [None, 4])
    ]
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    labels, probabilities = session.run(None, {"input": x})

    sklearn_model = joblib.load(repo / "iris" / "1" / "model.joblib")
    np.testing.assert_array_equal(labels, sklearn_model.predict(x))
    np.testing.assert_allclose(probabilities, sklearn_model.predict_proba(x), atol=1e-5)
