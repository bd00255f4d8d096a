"""Runner processes, end to end: real models trained here, real `python -m runners` processes
on port 0, spoken to over gRPC. Answers must equal the model's own (estimator methods, an
ONNX Runtime session), and every error is asserted by status code and message.
"""

from __future__ import annotations

import signal
import socket as sockets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sklearn.datasets import load_iris
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from greenroom_client.tensors import TensorSpec
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.config import ConfigError, ModelConfig, load_model_config
from runners.model import load_model
from runners.sklearn_model import SklearnModel
from tests.runner_fixtures import (
    Runner,
    float_rows,
    infer_request,
    outputs_of,
    read_listening,
    rpc_error,
    running,
    save_custom,
    save_joblib,
    save_onnx,
    spawn_runner,
    wait_serving,
    write_model_yaml,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

X, Y = load_iris(return_X_y=True)
X32 = X.astype(np.float32)
SAMPLE = X32[::25]  # 6 rows across the three classes

CUSTOM_MODEL = """
import numpy as np
from pathlib import Path
from greenroom_client.errors import InvalidInput
from helper import double  # a module kept beside model.py


class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    outputs = [
        {"name": "total", "datatype": "FP64", "shape": [-1]},
        {"name": "scaled", "datatype": "FP32", "shape": [-1, 3]},
    ]

    def load(self, path: Path) -> None:
        self.weights = np.load(path / "weights.npy")

    def predict(self, inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise InvalidInput("x", "values must not be negative")
        if (x > 1000).any():
            return {"total": x.sum(), "scaled": x}  # a bug: total is not one per row
        return {"total": double(x.sum(axis=1)), "scaled": x * self.weights}
"""

SLOW_MODEL = """
import time

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

    def load(self, path):
        time.sleep(float((path / "load_s").read_text()))

    def predict(self, inputs):
        time.sleep(float(inputs["x"][0]))
        return {"y": inputs["x"] + 1}
"""


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def iris_clf() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(X, Y)


@pytest.fixture(scope="module")
def iris(models_root: Path, iris_clf: LogisticRegression) -> Iterator[Runner]:
    """One logistic-regression runner shared by the tests that only ask it questions."""
    with running(save_joblib(models_root, "iris", "1", iris_clf), "iris") as runner:
        yield runner


def _code_and_message(err: grpc.RpcError) -> tuple[Any, str]:
    return err.code(), err.details()


# --- health, readiness, metadata ------------------------------------------------------------


def test_health_and_readiness_once_loaded(iris: Runner) -> None:
    assert iris.health("") == SERVING
    assert iris.health("iris") == SERVING
    stub = iris.stub()
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="iris", version="2")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="other")).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "greenroom-runner"
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert [(m.name, m.version, m.state) for m in index.models] == [("iris", "1", "READY")]


def test_reflection_lists_the_services(iris: Runner) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(iris.channel())
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def _signature(specs: Any) -> list[tuple[str, str, list[int]]]:
    return [(s.name, s.datatype, list(s.shape)) for s in specs]


def test_sklearn_classifier_metadata(iris: Runner) -> None:
    meta = iris.stub().ModelMetadata(pb.ModelMetadataRequest(name="iris"))
    assert (meta.name, list(meta.versions), meta.platform) == ("iris", ["1"], "sklearn")
    assert _signature(meta.inputs) == [("input", "FP32", [-1, 4])]
    assert _signature(meta.outputs) == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP64", [-1, 3]),
    ]


# --- inference ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [True, False])
def test_sklearn_classifier_answers_equal_the_estimator(
    iris: Runner, iris_clf: LogisticRegression, raw: bool
) -> None:
    response = iris.stub().ModelInfer(infer_request("iris", {"input": SAMPLE}, raw=raw))
    assert (response.model_name, response.model_version) == ("iris", "1")
    assert bool(response.raw_output_contents) is raw  # answered in the form it was asked
    out = outputs_of(response)
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"], iris_clf.predict(SAMPLE))
    np.testing.assert_array_equal(out["probabilities"], iris_clf.predict_proba(SAMPLE))


def test_requested_outputs_only_and_id_echo(iris: Runner, iris_clf: LogisticRegression) -> None:
    request = infer_request(
        "iris", {"input": SAMPLE}, raw=True, version="1", outputs=["probabilities"],
        request_id="req-42",
    )  # fmt: skip
    response = iris.stub().ModelInfer(request)
    assert response.id == "req-42"
    assert [o.name for o in response.outputs] == ["probabilities"]
    assert list(response.outputs[0].shape) == [len(SAMPLE), 3]
    np.testing.assert_array_equal(
        outputs_of(response)["probabilities"], iris_clf.predict_proba(SAMPLE)
    )


def test_stream_infer_answers_each_request_in_order(iris: Runner) -> None:
    requests = [
        infer_request("iris", {"input": SAMPLE}, raw=True, request_id="a"),
        infer_request("iris", {"input": SAMPLE[:, :3]}, raw=True, request_id="b"),
        infer_request("iris", {"input": SAMPLE}, raw=False, request_id="c"),
    ]
    answers = list(iris.stub().ModelStreamInfer(iter(requests), timeout=10))
    assert [a.error_message for a in answers] == [
        "",
        "input 'input': shape [6, 3] does not match the model's [-1, 4]",
        "",
    ]
    assert [answers[0].infer_response.id, answers[2].infer_response.id] == ["a", "c"]


# --- errors ---------------------------------------------------------------------------------


def test_wrong_model_or_version_is_not_found(iris: Runner) -> None:
    stub = iris.stub()
    err = rpc_error(stub.ModelInfer, infer_request("wine", {"input": SAMPLE}, raw=True))
    assert _code_and_message(err) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'wine' is not in the repository",
    )
    err = rpc_error(
        stub.ModelInfer, infer_request("iris", {"input": SAMPLE}, raw=True, version="7")
    )
    assert _code_and_message(err) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'iris' has no version '7' (versions: 1)",
    )
    err = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="iris", version="7"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"input": SAMPLE.astype(np.float64)},
            "input 'input': datatype FP64 does not match the model's FP32",
        ),
        (
            {"input": SAMPLE[:, :3]},
            "input 'input': shape [6, 3] does not match the model's [-1, 4]",
        ),
        (
            {"input": SAMPLE[0]},
            "input 'input': shape [4] does not match the model's [-1, 4]",
        ),
        (
            {"features": SAMPLE},
            "input 'features': is not an input of this model; its inputs are: input (FP32 [-1, 4])",
        ),
        (
            {"input": SAMPLE, "extra": SAMPLE},
            "input 'extra': is not an input of this model; its inputs are: input (FP32 [-1, 4])",
        ),
    ],
)
def test_bad_inputs_are_invalid_argument(
    iris: Runner, arrays: dict[str, Any], message: str
) -> None:
    err = rpc_error(iris.stub().ModelInfer, infer_request("iris", arrays, raw=True))
    assert _code_and_message(err) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_missing_input_bad_raw_size_and_unknown_output(iris: Runner) -> None:
    stub = iris.stub()
    err = rpc_error(stub.ModelInfer, pb.ModelInferRequest(model_name="iris"))
    assert _code_and_message(err) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'input': is missing; the model takes: input (FP32 [-1, 4])",
    )
    request = infer_request("iris", {"input": SAMPLE}, raw=True)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    err = rpc_error(stub.ModelInfer, request)
    assert _code_and_message(err) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'input': raw contents are 92 bytes; shape [6, 4] x FP32 needs 96",
    )
    err = rpc_error(
        stub.ModelInfer, infer_request("iris", {"input": SAMPLE}, raw=True, outputs=["proba"])
    )
    assert _code_and_message(err) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output 'proba' is not an output of this model; its outputs are: label, probabilities",
    )


# --- other scikit-learn models --------------------------------------------------------------


def _infer(runner: Runner, name: str, arrays: dict[str, Any], raw: bool = True) -> Any:
    return outputs_of(runner.stub().ModelInfer(infer_request(name, arrays, raw=raw)))


def test_string_labels_pipelines_and_regressors(tmp_path: Path) -> None:
    names = np.array(load_iris().target_names)[Y]
    tree = DecisionTreeClassifier(random_state=0).fit(X, names)
    svc = make_pipeline(StandardScaler(), SVC()).fit(X, Y)  # no predict_proba
    ridge = Ridge().fit(X[:, :3], X[:, 2:])  # two targets
    linear = LinearRegression().fit(X[:, :3], X[:, 3])
    models = {"tree": tree, "svc": svc, "ridge": ridge, "linear": linear}
    dirs = {name: save_joblib(tmp_path, name, "1", model) for name, model in models.items()}
    with (
        running(dirs["tree"], "tree") as tree_r,
        running(dirs["svc"], "svc") as svc_r,
        running(dirs["ridge"], "ridge") as ridge_r,
        running(dirs["linear"], "linear") as linear_r,
    ):
        meta = tree_r.stub().ModelMetadata(pb.ModelMetadataRequest(name="tree"))
        assert _signature(meta.outputs)[0] == ("label", "BYTES", [-1])
        labels = _infer(tree_r, "tree", {"input": SAMPLE}, raw=False)["label"]
        assert list(labels) == [s.encode() for s in tree.predict(SAMPLE)]

        meta = svc_r.stub().ModelMetadata(pb.ModelMetadataRequest(name="svc"))
        assert _signature(meta.outputs) == [("label", "INT64", [-1])]
        got = _infer(svc_r, "svc", {"input": SAMPLE})["label"]
        np.testing.assert_array_equal(got, svc.predict(SAMPLE))

        meta = ridge_r.stub().ModelMetadata(pb.ModelMetadataRequest(name="ridge"))
        assert _signature(meta.outputs) == [("prediction", "FP64", [-1, 2])]
        got = _infer(ridge_r, "ridge", {"input": SAMPLE[:, :3]})["prediction"]
        np.testing.assert_array_equal(got, ridge.predict(SAMPLE[:, :3]))

        meta = linear_r.stub().ModelMetadata(pb.ModelMetadataRequest(name="linear"))
        assert _signature(meta.outputs) == [("prediction", "FP64", [-1])]
        got = _infer(linear_r, "linear", {"input": SAMPLE[:, :3]}, raw=False)["prediction"]
        np.testing.assert_array_equal(got, linear.predict(SAMPLE[:, :3]))


def test_model_yaml_overrides_names_datatypes_and_shapes(
    tmp_path: Path, iris_clf: LogisticRegression
) -> None:
    write_model_yaml(
        tmp_path,
        "flowers",
        "inputs: [{name: measurements, datatype: FP64, shape: [-1, 4]}]\n"
        "outputs: [{name: species, datatype: INT32, shape: [-1]}]\n"
        "runner: {threads: 2}\n",
    )
    model_dir = save_joblib(tmp_path, "flowers", "3", iris_clf)
    with running(model_dir, "flowers", "3") as runner:
        meta = runner.stub().ModelMetadata(pb.ModelMetadataRequest(name="flowers"))
        assert _signature(meta.inputs) == [("measurements", "FP64", [-1, 4])]
        assert _signature(meta.outputs) == [("species", "INT32", [-1])]
        out = _infer(runner, "flowers", {"measurements": X[::25]})
        assert out["species"].dtype == np.int32
        np.testing.assert_array_equal(out["species"], iris_clf.predict(X[::25]))
        assert '"threads": 2' in runner.log()


def test_text_pipeline_takes_bytes_declared_in_model_yaml(tmp_path: Path) -> None:
    texts = ["good film", "bad film", "great plot", "awful plot", "good plot", "bad acting"]
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 0] * 3)
    write_model_yaml(
        tmp_path, "sentiment", "inputs: [{name: text, datatype: BYTES, shape: [-1]}]\n"
    )
    model_dir = save_joblib(tmp_path, "sentiment", "1", pipeline)
    model = load_model(model_dir, "sentiment", "1", load_model_config(model_dir.parent))
    assert model.inputs == [TensorSpec("text", "BYTES", (-1,))]
    given = np.array([b"good acting", b"awful film"], dtype=object)
    out = model.predict({"text": given})
    np.testing.assert_array_equal(out["label"], pipeline.predict(["good acting", "awful film"]))
    np.testing.assert_array_equal(
        out["probabilities"], pipeline.predict_proba(["good acting", "awful film"])
    )


def test_load_model_refuses_a_directory_without_exactly_one_artifact(tmp_path: Path) -> None:
    empty = tmp_path / "m" / "1"
    empty.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no model artifact \(expected one of model.onnx"):
        load_model(empty, "m", "1", ModelConfig())
    (empty / "runner.yaml").write_text("address: localhost:9000\n")
    with pytest.raises(ConfigError, match=r"it has runner\.yaml, an external server"):
        load_model(empty, "m", "1", ModelConfig())
    (empty / "model.onnx").write_bytes(b"")
    (empty / "model.py").write_text("")
    with pytest.raises(ConfigError, match=r"several model artifacts \(model.onnx, model.py\)"):
        load_model(empty, "m", "1", ModelConfig())


# --- ONNX -----------------------------------------------------------------------------------


def test_onnx_classifier_without_zipmap(tmp_path: Path, iris_clf: LogisticRegression) -> None:
    model_dir = save_onnx(tmp_path, "iris-onnx", "1", iris_clf, n_features=4, zipmap=False)
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    want_label, want_proba = session.run(["label", "probabilities"], {"input": SAMPLE})
    with running(model_dir, "iris-onnx") as runner:
        meta = runner.stub().ModelMetadata(pb.ModelMetadataRequest(name="iris-onnx"))
        assert meta.platform == "onnxruntime"
        assert _signature(meta.inputs) == [("input", "FP32", [-1, 4])]
        assert _signature(meta.outputs) == [
            ("label", "INT64", [-1]),
            ("probabilities", "FP32", [-1, 3]),
        ]
        for raw in (True, False):
            out = _infer(runner, "iris-onnx", {"input": SAMPLE}, raw=raw)
            np.testing.assert_array_equal(out["label"], want_label)
            np.testing.assert_array_equal(out["probabilities"], want_proba)
        np.testing.assert_array_equal(out["label"], iris_clf.predict(SAMPLE))
        np.testing.assert_allclose(out["probabilities"], iris_clf.predict_proba(SAMPLE), atol=1e-5)


def test_onnx_zipmap_output_is_left_out_with_a_warning(
    tmp_path: Path, iris_clf: LogisticRegression
) -> None:
    model_dir = save_onnx(tmp_path, "zipped", "1", iris_clf, n_features=4, zipmap=True)
    with running(model_dir, "zipped") as runner:
        meta = runner.stub().ModelMetadata(pb.ModelMetadataRequest(name="zipped"))
        assert _signature(meta.outputs) == [("output_label", "INT64", [-1])]
        out = _infer(runner, "zipped", {"input": SAMPLE})
        np.testing.assert_array_equal(out["output_label"], iris_clf.predict(SAMPLE))
        log = runner.log()
        assert "onnx output left out" in log
        assert '"output": "output_probability"' in log


# --- custom Python models -------------------------------------------------------------------


def _custom_dir(tmp_path: Path) -> Path:
    model_dir = save_custom(tmp_path, "custom", "1", CUSTOM_MODEL)
    (model_dir / "helper.py").write_text("def double(a):\n    return a * 2\n")
    np.save(model_dir / "weights.npy", np.array([1.0, 10.0, 100.0], dtype=np.float32))
    return model_dir


def test_custom_model_signature_answers_and_errors(tmp_path: Path) -> None:
    rows = float_rows([[1, 2, 3], [4, 5, 6]])
    with running(_custom_dir(tmp_path), "custom") as runner:
        meta = runner.stub().ModelMetadata(pb.ModelMetadataRequest(name="custom"))
        assert meta.platform == "python"
        assert _signature(meta.inputs) == [("x", "FP32", [-1, 3])]
        assert _signature(meta.outputs) == [("total", "FP64", [-1]), ("scaled", "FP32", [-1, 3])]
        out = _infer(runner, "custom", {"x": rows}, raw=False)
        np.testing.assert_array_equal(out["total"], [12.0, 30.0])
        np.testing.assert_array_equal(
            out["scaled"], rows * np.array([1, 10, 100], dtype=np.float32)
        )

        err = rpc_error(runner.stub().ModelInfer, infer_request("custom", {"x": -rows}, raw=True))
        assert _code_and_message(err) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'x': values must not be negative",
        )
        err = rpc_error(
            runner.stub().ModelInfer,
            infer_request("custom", {"x": rows * 1000}, raw=True, request_id="bug-1"),
        )
        assert _code_and_message(err) == (
            grpc.StatusCode.INTERNAL,
            "internal error; see the runner log",
        )
        log = runner.log()
        assert "output 'total' has shape []; the signature says [-1]" in log
        assert '"request_id": "bug-1"' in log and "Traceback" in log


# --- lifecycle ------------------------------------------------------------------------------


def _slow_dir(tmp_path: Path, load_s: float) -> Path:
    model_dir = save_custom(tmp_path, "slow", "1", SLOW_MODEL)
    (model_dir / "load_s").write_text(str(load_s))
    return model_dir


def test_listens_and_answers_not_serving_while_loading(tmp_path: Path) -> None:
    with running(_slow_dir(tmp_path, 3.0), "slow", serving=False) as runner:
        assert runner.health("") == NOT_SERVING
        assert runner.health("slow") == NOT_SERVING
        stub = runner.stub()
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
        assert [m.state for m in index.models] == ["LOADING"]
        request = infer_request("slow", {"x": np.array([0], dtype=np.float32)}, raw=True)
        err = rpc_error(stub.ModelInfer, request)
        assert _code_and_message(err) == (
            grpc.StatusCode.UNAVAILABLE,
            "model 'slow' version '1' is still loading",
        )
        wait_serving(runner, "slow")
        np.testing.assert_array_equal(outputs_of(stub.ModelInfer(request))["y"], [1.0])


def test_sigterm_lets_in_flight_calls_finish_then_exits_0(tmp_path: Path) -> None:
    with running(_slow_dir(tmp_path, 0), "slow") as runner:
        stub = runner.stub()
        answers: list[Any] = []
        request = infer_request("slow", {"x": np.array([1.5], dtype=np.float32)}, raw=True)
        call = threading.Thread(target=lambda: answers.append(stub.ModelInfer(request)))
        call.start()
        time.sleep(0.5)  # the call is now inside predict
        runner.proc.send_signal(signal.SIGTERM)
        call.join(timeout=10)
        assert runner.wait_exit() == 0
        np.testing.assert_array_equal(outputs_of(answers[0])["y"], [2.5])
        assert "stopping: finishing in-flight calls" in runner.log()


def test_sigterm_exits_0(iris_clf: LogisticRegression, tmp_path: Path) -> None:
    with running(save_joblib(tmp_path, "iris", "1", iris_clf), "iris") as runner:
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.wait_exit() == 0


@pytest.mark.parametrize(
    ("artifacts", "reason"),
    [
        ({"model.joblib": b"not a pickle"}, "model failed to load"),
        ({"model.joblib": b"", "model.onnx": b""}, "several model artifacts"),
        ({"model.onnx": b"not a graph"}, "model failed to load"),
    ],
)
def test_a_model_that_fails_to_load_exits_3(
    tmp_path: Path, artifacts: dict[str, bytes], reason: str
) -> None:
    model_dir = tmp_path / "broken" / "1"
    model_dir.mkdir(parents=True)
    for file_name, content in artifacts.items():
        (model_dir / file_name).write_bytes(content)
    runner = spawn_runner(model_dir, "broken", "1", tmp_path / "log")
    try:
        read_listening(runner)
        assert runner.wait_exit() == 3
        assert reason in runner.log()
    finally:
        runner.kill()


def test_bad_model_yaml_exits_3(tmp_path: Path, iris_clf: LogisticRegression) -> None:
    write_model_yaml(tmp_path, "iris", "inputs: [{name: a}, {name: b}]\n")
    runner = spawn_runner(save_joblib(tmp_path, "iris", "1", iris_clf), "iris", "1", tmp_path / "l")
    try:
        read_listening(runner)
        assert runner.wait_exit() == 3
        assert "declares 2 inputs; the artifact takes 1 (input)" in runner.log()
    finally:
        runner.kill()


def test_exits_when_the_parent_pid_is_gone(tmp_path: Path, iris_clf: LogisticRegression) -> None:
    parent = subprocess.Popen(["sleep", "60"])
    try:
        model_dir = save_joblib(tmp_path, "iris", "1", iris_clf)
        with running(model_dir, "iris", extra=["--parent-pid", str(parent.pid)]) as runner:
            parent.kill()
            parent.wait()
            assert runner.wait_exit(timeout=10) == 0
            assert "parent process is gone" in runner.log()
    finally:
        parent.kill()
        parent.wait()


def test_unix_socket_address_replaces_a_stale_socket(
    tmp_path: Path, iris_clf: LogisticRegression
) -> None:
    socket = tmp_path / "iris.sock"
    stale = sockets.socket(sockets.AF_UNIX)
    stale.bind(str(socket))  # a socket file left behind by a killed runner
    stale.close()
    model_dir = save_joblib(tmp_path, "iris", "1", iris_clf)
    with running(model_dir, "iris", address=f"unix:{socket}") as runner:
        assert runner.address == f"unix:{socket}"
        out = _infer(runner, "iris", {"input": SAMPLE})
        np.testing.assert_array_equal(out["label"], iris_clf.predict(SAMPLE))


def test_taken_port_exits_4(iris: Runner, tmp_path: Path) -> None:
    model_dir = tmp_path / "iris" / "1"
    model_dir.mkdir(parents=True)
    joblib.dump(LogisticRegression(), model_dir / "model.joblib")
    runner = spawn_runner(model_dir, "iris", "1", tmp_path / "log", address=iris.address)
    try:
        assert runner.wait_exit() == 4
        assert "cannot listen" in runner.log()
    finally:
        runner.kill()


def test_one_probability_pass_gives_exactly_predicts_labels(tmp_path: Path) -> None:
    """Label from predict_proba's argmax (one pass) must still equal predict(), ties too."""
    x = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [-1.0, 3.0]], dtype=np.float32)
    clf = LogisticRegression().fit(x, [0, 1, 1, 0])
    # Decision 1e-18 > 0 says class 1, but its probabilities round to a tie (0.5, 0.5).
    clf.coef_[:] = 0.0
    clf.intercept_[:] = 1e-18
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    joblib.dump(clf, path / "model.joblib")
    model = SklearnModel.load(path / "model.joblib", "m", "1", ModelConfig())
    answer = model.predict({"input": x}, ["label", "probabilities"])
    np.testing.assert_array_equal(answer["label"], clf.predict(x))
    np.testing.assert_array_equal(answer["probabilities"], clf.predict_proba(x))
    assert list(answer["label"]) == [1, 1, 1, 1]
