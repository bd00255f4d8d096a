"""Small demo models, trained on the spot, so a fresh checkout has something to serve.

    iris/1/model.joblib          StandardScaler + LogisticRegression on sklearn's iris data
    iris-onnx/1/model.onnx       the same classifier exported with skl2onnx (ONNX runner)
    churn/1/model.joblib         synthetic binary "churn" data: StandardScaler + LogisticRegression
    churn/2/model.joblib         the same data: GradientBoostingClassifier (the better candidate)
    churn/model.yaml             primary "1", so v2 can wait in the green room as a shadow

Every version directory gets a ``training.json`` with its provenance (data, estimator
parameters, library versions, accuracy, time), because a served artifact must say where
it came from. Seeds are fixed, so the models are the same on every machine with the same
library versions. A model directory is built beside the repository's models under a
hidden temporary name and renamed into place, so an interrupted run leaves nothing that a
later run would mistake for a finished model (and a version directory, once there, is
never touched again).

Run ``python -m gateway.demo models`` to fill ``./models``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 7
DEMO_MODELS = ("iris", "iris-onnx", "churn")

# One synthetic population for churn: the first rows train both versions, the rest are
# never seen in training and serve as demo traffic with known ground truth.
CHURN_FEATURES = 8
CHURN_TRAIN_ROWS = 2000
_CHURN_ROWS = 6000
_ONNX_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class _Version:
    """One version to write: its artifact (saved by ``save``) and its provenance."""

    version: str
    filename: str
    save: Callable[[Path], None]
    provenance: dict[str, Any]


@dataclass(frozen=True)
class _DemoModel:
    versions: list[_Version]
    model_yaml: str = "task: classification\n"


# ------------------------------------------------------------------------------ data


def churn_dataset() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The whole synthetic churn population (fixed seed; about 30% positives)."""
    x, y = make_classification(
        n_samples=_CHURN_ROWS,
        n_features=CHURN_FEATURES,
        n_informative=5,
        n_redundant=1,
        n_clusters_per_class=2,
        weights=[0.7],
        flip_y=0.03,
        class_sep=1.0,
        random_state=SEED,
    )
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def churn_traffic() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Rows no churn version was trained on, as FP32 requests plus their ground truth:
    what a demo sends through the gateway and later reports as feedback."""
    x, y = churn_dataset()
    return x[CHURN_TRAIN_ROWS:].astype(np.float32), y[CHURN_TRAIN_ROWS:]


# ------------------------------------------------------------------------ provenance


def _estimator_description(estimator: Any) -> dict[str, Any]:
    """Class and shallow parameters, recursing into pipeline steps (whose objects are
    not JSON)."""
    cls = type(estimator)
    described: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    if isinstance(estimator, Pipeline):
        described["steps"] = [
            {"name": name, **_estimator_description(step)} for name, step in estimator.steps
        ]
    else:
        described["params"] = estimator.get_params(deep=False)
    return described


def _provenance(
    name: str, version: str, estimator: Any, data: dict[str, Any], metrics: dict[str, float]
) -> dict[str, Any]:
    return {
        "model": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": "gateway.demo",
        "data": data,
        "estimator": _estimator_description(estimator),
        "metrics": metrics,
        "libraries": {
            "python": sys.version.split()[0],
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }


def _joblib_saver(estimator: Any) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        joblib.dump(estimator, path)

    return save


# ------------------------------------------------------------------------------ iris


_IRIS_DATA = {
    "source": "sklearn.datasets.load_iris (bundled with scikit-learn)",
    "rows": 150,
    "features": ["sepal length", "sepal width", "petal length", "petal width"],
    "classes": {"0": "setosa", "1": "versicolor", "2": "virginica"},
    "split": "all rows used for training",
}


def _iris_pipeline() -> tuple[Pipeline, float]:
    """The iris classifier and its training accuracy (deterministic: lbfgs, fixed data)."""
    x, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED))
    pipeline.fit(x, y)
    return pipeline, float(pipeline.score(x, y))


def _iris() -> _DemoModel:
    pipeline, accuracy = _iris_pipeline()
    provenance = _provenance("iris", "1", pipeline, _IRIS_DATA, {"train_accuracy": accuracy})
    return _DemoModel([_Version("1", "model.joblib", _joblib_saver(pipeline), provenance)])


def onnx_bytes(pipeline: Pipeline, n_features: int, n_classes: int) -> bytes:
    """Export with the joblib runner's tensor names (``input`` -> ``label``,
    ``probabilities``) so that clients see one signature whichever runner serves iris.
    zipmap off: probabilities as a plain tensor, not a list of dicts."""
    from skl2onnx import convert_sklearn  # noqa: PLC0415 - slow import, only needed here
    from skl2onnx.common.data_types import (  # noqa: PLC0415
        FloatTensorType,
        Int64TensorType,
    )

    onnx_model = convert_sklearn(
        pipeline,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, n_classes])),
        ],
        options={id(pipeline[-1]): {"zipmap": False}},
        target_opset=_ONNX_OPSET,
    )
    return bytes(onnx_model.SerializeToString())


def _iris_onnx() -> _DemoModel:
    import skl2onnx  # noqa: PLC0415

    pipeline, accuracy = _iris_pipeline()
    payload = onnx_bytes(pipeline, n_features=4, n_classes=3)
    provenance = _provenance("iris-onnx", "1", pipeline, _IRIS_DATA, {"train_accuracy": accuracy})
    provenance["export"] = {
        "converter": f"skl2onnx {skl2onnx.__version__}",
        "target_opset": _ONNX_OPSET,
        "zipmap": False,
        "input": "input FP32 [None, 4]",
        "outputs": ["label INT64 [None]", "probabilities FP32 [None, 3]"],
    }

    def save(path: Path) -> None:
        path.write_bytes(payload)

    return _DemoModel([_Version("1", "model.onnx", save, provenance)])


# ----------------------------------------------------------------------------- churn


def _churn_estimators() -> dict[str, Any]:
    """v1: a linear baseline; v2: boosted trees, which capture the clusters it cannot."""
    return {
        "1": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)),
        "2": GradientBoostingClassifier(
            n_estimators=100, max_depth=3, subsample=0.8, random_state=SEED
        ),
    }


def _churn() -> _DemoModel:
    x, y = churn_dataset()
    x_train, y_train = x[:CHURN_TRAIN_ROWS], y[:CHURN_TRAIN_ROWS]
    x_hold, y_hold = x[CHURN_TRAIN_ROWS:], y[CHURN_TRAIN_ROWS:]
    data = {
        "source": "sklearn.datasets.make_classification (synthetic churn-like data)",
        "seed": SEED,
        "rows": _CHURN_ROWS,
        "features": CHURN_FEATURES,
        "informative_features": 5,
        "positive_rate": float(y.mean()),
        "split": f"rows [0, {CHURN_TRAIN_ROWS}) train; the rest held out (demo traffic)",
    }
    versions = []
    for version, estimator in _churn_estimators().items():
        estimator.fit(x_train, y_train)
        metrics = {
            "train_accuracy": float(estimator.score(x_train, y_train)),
            "holdout_accuracy": float(estimator.score(x_hold, y_hold)),
        }
        provenance = _provenance("churn", version, estimator, data, metrics)
        versions.append(_Version(version, "model.joblib", _joblib_saver(estimator), provenance))
    return _DemoModel(versions, model_yaml='task: classification\nprimary: "1"\n')


_BUILDERS: dict[str, Callable[[], _DemoModel]] = {
    "iris": _iris,
    "iris-onnx": _iris_onnx,
    "churn": _churn,
}


# ------------------------------------------------------------------------ writing out


def _write(model_dir: Path, model: _DemoModel) -> None:
    (model_dir / "model.yaml").write_text(model.model_yaml)
    for v in model.versions:
        version_dir = model_dir / v.version
        version_dir.mkdir()
        v.save(version_dir / v.filename)
        text = json.dumps(v.provenance, indent=2, sort_keys=True, default=str)
        (version_dir / "training.json").write_text(text + "\n")


def _install(repo: Path, name: str, model: _DemoModel) -> bool:
    """Write ``model`` to ``repo/name`` atomically; False if someone else got there first."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; runners may run as another user
        _write(staging, model)
        os.rename(staging, repo / name)
    except OSError:
        if (repo / name).exists():
            return False
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def ensure_demo_repository(repo: Path, models: Iterable[str] | None = None) -> list[str]:
    """Train the demo models (all of ``DEMO_MODELS``, or ``models``) that ``repo`` lacks.

    Idempotent: a model whose directory exists is left alone, whatever it holds, since a
    served version must never change. Returns the names created by this call.
    """
    wanted = list(DEMO_MODELS if models is None else models)
    unknown = [name for name in wanted if name not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown demo models {unknown}; choose from {list(DEMO_MODELS)}")
    repo.mkdir(parents=True, exist_ok=True)
    created = []
    for name in wanted:
        if (repo / name).exists():
            continue
        if _install(repo, name, _BUILDERS[name]()):
            created.append(name)
    return created


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    repo = Path(args[0] if args else "models")
    created = ensure_demo_repository(repo)
    print(f"{repo}: created {', '.join(created) if created else 'nothing (all present)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
