"""Memory with four models loaded: the gateway's RSS and each runner's above its model.

One ``greenroom serve`` on a repository of four models of different kinds (scikit-learn
LogisticRegression and a 100-tree RandomForest as joblib, the LogisticRegression exported
to ONNX, and a custom ``model.py``), each sent 200 requests first so that every buffer
and cache a request touches is allocated. Then, per process: RSS, and USS (the memory
only this process holds: the shared libraries' pages that every Python runner maps, such
as numpy's and scipy's, are counted once for the machine, not once per runner). A
runner's figure "above its model" subtracts the size of its artifact file, and whether it
maps scikit-learn is noted: the LogisticRegression's runner serves it with numpy kernels
without importing scikit-learn (runners.sklearn_lean), the forest's imports it. The ledger's
writer process (a child of the gateway, ``ledger_writer: process``) is reported beside
the gateway.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from gateway.demo import onnx_bytes
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc

import procs
from payloads import N_FEATURES, _dataset

MB = 1024 * 1024
REQUESTS = 200
CUSTOM = '''
import numpy as np

class Model:
    """Sums each row: the smallest model a team might write by hand."""
    inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    outputs = [{"name": "total", "datatype": "FP64", "shape": [-1]}]

    def predict(self, inputs):
        return {"total": inputs["input"].sum(axis=1, dtype=np.float64)}
'''


def build_repository(repo: Path) -> dict[str, Path]:
    """The four models; returns each one's artifact file."""
    features, labels = _dataset()
    artifacts = {
        "mem-logreg": repo / "mem-logreg" / "1" / "model.joblib",
        "mem-forest": repo / "mem-forest" / "1" / "model.joblib",
        "mem-onnx": repo / "mem-onnx" / "1" / "model.onnx",
        "mem-custom": repo / "mem-custom" / "1" / "model.py",
    }
    for path in artifacts.values():
        path.parent.mkdir(parents=True)
    logreg = LogisticRegression(max_iter=500).fit(features, labels)
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(features, labels)
    import joblib  # noqa: PLC0415 - only the repository needs it

    joblib.dump(logreg, artifacts["mem-logreg"])
    joblib.dump(forest, artifacts["mem-forest"])
    onnx = onnx_bytes(make_pipeline(logreg), N_FEATURES, n_classes=2)
    artifacts["mem-onnx"].write_bytes(onnx)
    artifacts["mem-custom"].write_text(textwrap.dedent(CUSTOM))
    return artifacts


def _load(address: str, models: list[str]) -> None:
    rows = np.random.default_rng(0).standard_normal((1, N_FEATURES), dtype=np.float32)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for model in models:
            request = pb.ModelInferRequest(model_name=model)
            request.inputs.add(name="input", datatype="FP32", shape=[1, N_FEATURES])
            request.raw_input_contents.append(rows.tobytes())
            for _ in range(REQUESTS):
                stub.ModelInfer(request, timeout=10)


def _memory(process: psutil.Process) -> dict[str, float]:
    info = process.memory_full_info()
    return {"rss_mb": round(info.rss / MB, 1), "uss_mb": round(info.uss / MB, 1)}


def _maps_scikit_learn(process: psutil.Process) -> bool:
    """Whether the runner imported scikit-learn (a linear model's runner does not:
    runners.sklearn_lean), read from the shared objects it maps."""
    return any("/sklearn/" in region.path for region in process.memory_maps())


def _runner_name(process: psutil.Process) -> str | None:
    cmd = process.cmdline()
    return cmd[cmd.index("--name") + 1] if "--name" in cmd else None


def measure(python: str, work: Path, log_dir: Path) -> dict[str, Any]:
    """Start the gateway on the four models, load them, and read every process's memory."""
    artifacts = build_repository(work / "models-memory")
    argv = [
        str(Path(python).parent / "greenroom"), "serve", "--repo", str(work / "models-memory"),
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        "--data-dir", str(work / "data-memory"),
    ]  # fmt: skip
    server = procs.start("gateway-4-models", argv, log_dir, timeout_s=120)
    try:
        _load(server.address, sorted(artifacts))
        gateway = psutil.Process(server.pid)
        runners: dict[str, dict[str, float]] = {}
        writer: dict[str, float] = {}
        for child in gateway.children(recursive=True):
            if child.cmdline()[-3:-1] == ["gateway.ledger", "writer"]:
                writer = _memory(child)
            name = _runner_name(child)
            if name not in artifacts:
                continue
            size_mb = artifacts[name].stat().st_size / MB
            usage = _memory(child)
            runners[name] = {
                **usage,
                "scikit_learn_loaded": _maps_scikit_learn(child),
                "model_mb": round(size_mb, 2),
                "rss_above_model_mb": round(usage["rss_mb"] - size_mb, 1),
                "uss_above_model_mb": round(usage["uss_mb"] - size_mb, 1),
            }
        return {
            "gateway": _memory(gateway), "ledger_writer": writer, "runners": runners,
            "requests_per_model": REQUESTS,
        }  # fmt: skip
    finally:
        procs.stop(server)
