"""Tiny models trained by the tests themselves into a temporary repository."""

from __future__ import annotations

import textwrap
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from gateway.demo import onnx_bytes

TEXT_MODEL = '''
import time
import numpy as np

class Model:
    """BYTES and FP16 in and out: lengths and upper-cased text, doubled halves."""
    inputs = [
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
        {"name": "half", "datatype": "FP16", "shape": [-1, 2]},
    ]
    outputs = [
        {"name": "length", "datatype": "INT64", "shape": [-1]},
        {"name": "upper", "datatype": "BYTES", "shape": [-1]},
        {"name": "doubled", "datatype": "FP16", "shape": [-1, 2]},
    ]

    def predict(self, inputs):
        text = inputs["text"]
        return {
            "length": np.array([len(t) for t in text], dtype=np.int64),
            "upper": np.array([t.upper() for t in text], dtype=object),
            "doubled": (inputs["half"] * 2).astype(np.float16),
        }
'''

SLOW_MODEL = '''
import time
import numpy as np

class Model:
    """Sleeps for the number of seconds it is given, then answers it back."""
    inputs = [{"name": "seconds", "datatype": "FP64", "shape": [-1]}]
    outputs = [{"name": "slept", "datatype": "FP64", "shape": [-1]}]

    def predict(self, inputs):
        time.sleep(float(inputs["seconds"].max()))
        return {"slept": inputs["seconds"]}
'''


def iris() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    return data.data.astype(np.float32), data.target


def churn_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(n_samples=400, n_features=8, n_informative=5, random_state=7)
    return x.astype(np.float32), y


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def export_onnx(pipeline: Pipeline, n_features: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_bytes(pipeline, n_features, n_classes=3))


def build_repository(repo: Path) -> None:
    """iris (joblib), iris-onnx, churn v1/v2 (primary 1), text (BYTES/FP16), slow."""
    x, y = iris()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    (repo / "iris" / "1").mkdir(parents=True)
    joblib.dump(clf, repo / "iris" / "1" / "model.joblib")
    onnx_clf = make_pipeline(LogisticRegression(max_iter=500)).fit(x, y)
    export_onnx(onnx_clf, 4, repo / "iris-onnx" / "1" / "model.onnx")

    cx, cy = churn_data()
    for version, estimator in (
        ("1", LogisticRegression(max_iter=500)),
        ("2", RandomForestClassifier(n_estimators=20, random_state=0)),
    ):
        (repo / "churn" / version).mkdir(parents=True)
        joblib.dump(estimator.fit(cx, cy), repo / "churn" / version / "model.joblib")
    _write(repo / "churn" / "model.yaml", 'task: classification\nprimary: "1"\n')
    _write(repo / "text" / "1" / "model.py", TEXT_MODEL)
    _write(repo / "slow" / "1" / "model.py", SLOW_MODEL)
