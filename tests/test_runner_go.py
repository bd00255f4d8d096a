"""The Go runner (runners/go, `greenroom-runner-go`) serving a LightGBM model.txt over V2.

`make -C runners/go build` builds it (Go must be installed: the test fails without it).
LightGBM models trained here are saved with `booster_.save_model` and served by the binary
started directly, exactly as the gateway starts a runner; its answers must equal
LightGBM's own predict / predict_proba, and its errors must say what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2
from lightgbm import LGBMClassifier, LGBMRegressor

from greenroom_proto.inference import grpc_service_pb2 as pb
from tests.runner_fixtures import (
    Runner,
    infer_request,
    outputs_of,
    read_listening,
    rpc_error,
    version_dir,
    wait_serving,
)

ROOT = Path(__file__).resolve().parent.parent
GO_RUNNER_DIR = ROOT / "runners" / "go"
GO_RUNNER = GO_RUNNER_DIR / "bin" / "greenroom-runner-go"
N_FEATURES = 5
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def go_runner() -> Path:
    """The built binary (built once per module)."""
    if shutil.which("go") is None:
        pytest.fail("Go is not installed: the Go runner cannot be built", pytrace=False)
    built = subprocess.run(
        ["make", "-s", "-C", str(GO_RUNNER_DIR), "build", f"PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return GO_RUNNER


def spawn_go(
    binary: Path,
    model_dir: Path,
    name: str,
    version: str = "1",
    *,
    address: str = "127.0.0.1:0",
    extra: Sequence[str] = (),
) -> Runner:
    log_path = model_dir.parent / f"go-runner-{version}-{time.monotonic_ns()}.log"
    command = [
        str(binary), "--model-dir", str(model_dir), "--name", name, "--version", version,
        "--address", address, *extra,
    ]  # fmt: skip
    log_file = log_path.open("w")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True)
    log_file.close()
    return Runner(proc, log_path)


@contextlib.contextmanager
def running_go(
    binary: Path, model_dir: Path, name: str, version: str = "1", **kwargs: Any
) -> Iterator[Runner]:
    """A started Go runner, SERVING, always killed afterwards."""
    runner = spawn_go(binary, model_dir, name, version, **kwargs)
    try:
        read_listening(runner)
        wait_serving(runner, name)
        yield runner
    finally:
        runner.kill()


def data(n_classes: int, seed: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    score = x[:, 0] + 0.5 * x[:, 1] - 0.8 * x[:, 2] + 0.3 * rng.normal(size=300)
    edges = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
    return x, np.digitize(score, edges)


def save_booster(model: Any, model_dir: Path) -> Path:
    model.booster_.save_model(str(model_dir / "model.txt"))
    return model_dir


@pytest.fixture(scope="module", params=[3, 2], ids=["multiclass", "binary"])
def classifier(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LGBMClassifier, Path]:
    x, y = data(request.param)
    clf = LGBMClassifier(n_estimators=30, num_leaves=15, random_state=0, verbose=-1).fit(x, y)
    path = version_dir(tmp_path_factory.mktemp("go-runner"), "lgbm", "1")
    return clf, save_booster(clf, path)


@pytest.fixture(scope="module")
def served(go_runner: Path, classifier: tuple[LGBMClassifier, Path]) -> Iterator[Runner]:
    with running_go(go_runner, classifier[1], "lgbm") as runner:
        yield runner


def test_health_and_metadata(served: Runner, classifier: tuple[LGBMClassifier, Path]) -> None:
    clf = classifier[0]
    n_classes = len(clf.classes_)
    assert served.health("") == health_pb2.HealthCheckResponse.SERVING
    assert served.health("lgbm") == health_pb2.HealthCheckResponse.SERVING
    stub = served.stub()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="lgbm", version="1"), timeout=5).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5).name == "greenroom-runner-go"
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="lgbm"), timeout=5)
    assert (meta.name, list(meta.versions), meta.platform) == ("lgbm", ["1"], "lightgbm-go")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, N_FEATURES])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP64", [-1, n_classes]),
    ]
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    assert [(m.name, m.version, m.state) for m in index.models] == [("lgbm", "1", "READY")]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_infer_equals_lightgbm(
    served: Runner, classifier: tuple[LGBMClassifier, Path], raw: bool
) -> None:
    clf = classifier[0]
    x = np.random.default_rng(7).normal(size=(40, N_FEATURES)).astype(np.float32)
    request = infer_request("lgbm", {"input": x}, raw, request_id="go-1")
    response = served.stub().ModelInfer(request, timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("lgbm", "1", "go-1")
    assert len(response.raw_output_contents) == (2 if raw else 0)
    out = outputs_of(response)
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"], clf.predict(x))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(x), atol=ATOL, rtol=RTOL)
    probabilities = next(t for t in response.outputs if t.name == "probabilities")
    classes = json.loads(probabilities.parameters["classes"].string_param)
    assert classes == [str(c) for c in clf.classes_]


def test_requested_outputs_only(served: Runner, classifier: tuple[LGBMClassifier, Path]) -> None:
    x = np.zeros((3, N_FEATURES), dtype=np.float32)
    request = infer_request("lgbm", {"input": x}, True, outputs=["label"])
    response = served.stub().ModelInfer(request, timeout=10)
    assert [t.name for t in response.outputs] == ["label"]
    np.testing.assert_array_equal(outputs_of(response)["label"], classifier[0].predict(x))


def test_errors(served: Runner) -> None:
    stub = served.stub()
    x = np.zeros((2, N_FEATURES), dtype=np.float32)

    err = rpc_error(stub.ModelInfer, infer_request("other", {"input": x}, True), timeout=5)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "model 'other' is not in the repository"
    err = rpc_error(
        stub.ModelInfer, infer_request("lgbm", {"input": x}, True, version="9"), timeout=5
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "model 'lgbm' has no version '9' (versions: 1)"

    cases: list[tuple[pb.ModelInferRequest, str]] = [
        (
            infer_request("lgbm", {"features": x}, True),
            "input 'features': is not an input of this model; "
            f"its inputs are: input (FP32 [-1, {N_FEATURES}])",
        ),
        (
            infer_request("lgbm", {"input": x.astype(np.float64)}, False),
            "input 'input': datatype FP64 does not match the model's FP32",
        ),
        (
            infer_request("lgbm", {"input": np.zeros((2, 3), dtype=np.float32)}, True),
            f"input 'input': shape [2, 3] does not match the model's [-1, {N_FEATURES}]",
        ),
        (
            infer_request("lgbm", {"input": x}, True, outputs=["nope"]),
            "output 'nope' is not an output of this model; its outputs are: label, probabilities",
        ),
    ]
    short = infer_request("lgbm", {"input": x}, True)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    cases.append(
        (
            short,
            f"input 'input': raw contents are 36 bytes; shape [2, {N_FEATURES}] x FP32 needs 40",
        )
    )
    few = infer_request("lgbm", {"input": x}, False)
    del few.inputs[0].contents.fp32_contents[-1]
    cases.append(
        (
            few,
            f"input 'input': shape [2, {N_FEATURES}] needs 10 values in "
            "contents.fp32_contents, got 9",
        )
    )
    for request, message in cases:
        err = rpc_error(stub.ModelInfer, request, timeout=5)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert err.details() == message


def test_regression_and_unix_socket(go_runner: Path, tmp_path: Path) -> None:
    x, y = data(2, seed=3)
    target = x[:, 0] * 2.0 - x[:, 3] + y
    reg = LGBMRegressor(n_estimators=25, random_state=0, verbose=-1).fit(x, target)
    model_dir = save_booster(reg, version_dir(tmp_path, "reg", "2"))
    path = tmp_path / "reg.sock"
    with socket.socket(socket.AF_UNIX) as stale:  # a killed runner's socket file
        stale.bind(str(path))
    address = f"unix:{path}"
    with running_go(go_runner, model_dir, "reg", "2", address=address) as runner:
        assert runner.address == address
        meta = runner.stub().ModelMetadata(pb.ModelMetadataRequest(name="reg"), timeout=5)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("prediction", "FP64", [-1])
        ]
        response = runner.stub().ModelInfer(infer_request("reg", {"input": x}, False), timeout=10)
        np.testing.assert_allclose(
            outputs_of(response)["prediction"], reg.predict(x), atol=ATOL, rtol=RTOL
        )


def test_sigterm_exits_zero(go_runner: Path, classifier: tuple[LGBMClassifier, Path]) -> None:
    runner = spawn_go(go_runner, classifier[1], "lgbm")
    try:
        read_listening(runner)
        wait_serving(runner, "lgbm")
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.wait_exit() == 0, runner.log()
        assert "stopping" in runner.log()
    finally:
        runner.kill()


def test_load_failure_exits_3(go_runner: Path, tmp_path: Path) -> None:
    model_dir = version_dir(tmp_path, "broken", "1")
    (model_dir / "model.txt").write_text("not a model\n")
    runner = spawn_go(go_runner, model_dir, "broken")
    try:
        read_listening(runner)
        assert runner.wait_exit() == 3
        assert "model failed to load" in runner.log()
    finally:
        runner.kill()


def test_parent_death_stops_runner(
    go_runner: Path, classifier: tuple[LGBMClassifier, Path]
) -> None:
    parent = subprocess.Popen(["sleep", "60"])
    runner = spawn_go(go_runner, classifier[1], "lgbm", extra=["--parent-pid", str(parent.pid)])
    try:
        read_listening(runner)
        wait_serving(runner, "lgbm")
        parent.kill()
        parent.wait(timeout=5)
        assert runner.wait_exit(timeout=10) == 0, runner.log()
        assert "parent process is gone" in runner.log()
    finally:
        runner.kill()
        if parent.poll() is None:
            parent.kill()


def test_stream_infer(served: Runner, classifier: tuple[LGBMClassifier, Path]) -> None:
    x = np.random.default_rng(11).normal(size=(4, N_FEATURES)).astype(np.float32)
    requests = [
        infer_request("lgbm", {"input": x}, True, request_id="s-1"),
        infer_request("other", {"input": x}, True, request_id="s-2"),
    ]
    answers = list(served.stub().ModelStreamInfer(iter(requests), timeout=10))
    assert answers[0].infer_response.id == "s-1"
    labels = outputs_of(answers[0].infer_response)["label"]
    np.testing.assert_array_equal(labels, classifier[0].predict(x))
    assert answers[1].error_message == "model 'other' is not in the repository"
