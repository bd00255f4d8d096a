"""The benchmark's model (trained here, into a temporary repository) and its requests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from greenroom_proto.inference import grpc_service_pb2 as pb

MODEL_NAME = "bench-logreg"
# The same data as LightGBM, served by the Python runner (joblib) and the Go runner
# (model.txt): the foreign runner measured against the Python one on one model.
LGBM_NAME = "bench-lgbm"
# A 100-tree random forest on the same data, served by three Python runners that run
# scikit-learn's own predict (``runner.lean: false``): dynamic batching as configured by
# default (merging what queued while the model ran), with a queue delay as Triton's
# dynamic batcher is usually set up (requests wait up to FOREST_QUEUE_DELAY_US for
# batch-mates), and off (``max_batch_size: 0``); and by a fourth with the default
# settings, which serves it without scikit-learn (runners.tree_kernels).
FOREST_NAME = "bench-rf"
FOREST_TREES = 100
FOREST_QUEUE_DELAY_US = 2000
MODEL_VERSION = "1"
N_FEATURES = 8
INPUT_NAME = "input"


@dataclass(frozen=True)
class Payload:
    """One serialized ModelInferRequest, written to a file for ``ghz --binary-file``."""

    name: str
    rows: int
    path: Path
    size_bytes: int


def _dataset() -> tuple[np.ndarray, np.ndarray]:
    """The synthetic classification data every benchmark model is trained on."""
    features, labels = make_classification(
        n_samples=2000, n_features=N_FEATURES, n_informative=5, random_state=7
    )
    return features.astype(np.float32), labels


def train_model(repo: Path) -> Path:
    """A LogisticRegression on a synthetic dataset, saved as repo/<name>/<version>/."""
    features, labels = _dataset()
    model = LogisticRegression(max_iter=500).fit(features, labels)
    version_dir = repo / MODEL_NAME / MODEL_VERSION
    version_dir.mkdir(parents=True)
    joblib.dump(model, version_dir / "model.joblib")
    return version_dir


def train_inprocess(repo: Path) -> None:
    """The same LogisticRegression exported to ONNX, served in the gateway's process
    (model.yaml ``runner: inprocess``), under the same name so the payloads fit."""
    from gateway.demo import onnx_bytes  # noqa: PLC0415 - skl2onnx is slow to import

    features, labels = _dataset()
    pipeline = make_pipeline(LogisticRegression(max_iter=500)).fit(features, labels)
    version_dir = repo / MODEL_NAME / MODEL_VERSION
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(onnx_bytes(pipeline, N_FEATURES, n_classes=2))
    (repo / MODEL_NAME / "model.yaml").write_text("runner: inprocess\n")


def train_lightgbm(python_repo: Path, go_repo: Path) -> None:
    """One LGBMClassifier: joblib for the Python runner, LightGBM text for the Go runner."""
    from lightgbm import LGBMClassifier  # noqa: PLC0415 - only this function needs it

    features, labels = _dataset()
    model = LGBMClassifier(n_estimators=50, num_leaves=15, random_state=0, verbose=-1)
    model.fit(features, labels)
    for repo in (python_repo, go_repo):
        (repo / LGBM_NAME / MODEL_VERSION).mkdir(parents=True)
    joblib.dump(model, python_repo / LGBM_NAME / MODEL_VERSION / "model.joblib")
    model.booster_.save_model(str(go_repo / LGBM_NAME / MODEL_VERSION / "model.txt"))


def train_forest(
    batched_repo: Path, queued_repo: Path, unbatched_repo: Path, lean_repo: Path
) -> None:
    """One RandomForestClassifier in four repositories: scikit-learn with batching by
    default, with a queue delay, and off; and the default settings (numpy kernels)."""
    features, labels = _dataset()
    model = RandomForestClassifier(n_estimators=FOREST_TREES, random_state=0)
    model.fit(features, labels)
    for repo in (batched_repo, queued_repo, unbatched_repo, lean_repo):
        (repo / FOREST_NAME / MODEL_VERSION).mkdir(parents=True)
        joblib.dump(model, repo / FOREST_NAME / MODEL_VERSION / "model.joblib")
    yaml = {
        batched_repo: "runner: {lean: false}\n",
        queued_repo: "runner: {lean: false, max_batch_size: 256, "
        f"max_queue_delay_us: {FOREST_QUEUE_DELAY_US}}}\n",
        unbatched_repo: "runner: {lean: false, max_batch_size: 0}\n",
    }
    for repo, text in yaml.items():
        (repo / FOREST_NAME / "model.yaml").write_text(text)


def infer_request(rows: int, seed: int = 0, model: str = MODEL_NAME) -> pb.ModelInferRequest:
    """A raw FP32 request of ``rows`` rows; model_version empty (the deployment decides)."""
    data = np.random.default_rng(seed).standard_normal((rows, N_FEATURES), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=INPUT_NAME, datatype="FP32", shape=[rows, N_FEATURES])
    request.raw_input_contents.append(data.astype("<f4").tobytes())
    return request


def write_payload(directory: Path, name: str, rows: int, model: str = MODEL_NAME) -> Payload:
    data = infer_request(rows, model=model).SerializeToString()
    path = directory / f"{model}-{name}.bin"
    path.write_bytes(data)
    return Payload(name=name, rows=rows, path=path, size_bytes=len(data))
