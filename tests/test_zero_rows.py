"""Requests of zero rows (input shape [0, n]): every model answers OK with empty outputs of
the datatypes and columns it answers one row with, and the ledger records each such
answer as an answer of 0 rows (not as a failure).

scikit-learn itself refuses zero samples ("Found array with 0 sample(s)"), so the
scikit-learn paths (``runners.estimator_model``, whether its methods are scikit-learn's,
``runners.sklearn_fast``'s kernels or ``runners.sklearn_lean``'s numpy) answer them
without asking the estimator; ONNX Runtime answers them itself.
"""

from __future__ import annotations

import sqlite3
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge

from gateway.ledger.records import Answer
from gateway.ledger.store import answer_params
from gateway.recording import OutputRoles, Pending, convert, to_answer
from greenroom_client import tensors
from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from runners.config import ModelConfig, TensorDecl
from runners.sklearn_model import SklearnModel
from tests.conftest import GatewayProcess
from tests.models import build_repository, churn_data, iris

# model, version, features, what each path answers zero rows with: {output: (datatype,
# shape)}. Every one is also asked one row, and must answer it with the same datatypes
# and columns.
CASES: list[tuple[str, str, int, dict[str, tuple[str, list[int]]]]] = [
    # scikit-learn in the runner: a RandomForestClassifier
    ("churn", "2", 8, {"label": ("INT64", [0]), "probabilities": ("FP64", [0, 2])}),
    # numpy kernels (runners.sklearn_lean): LogisticRegression, bare and in a pipeline
    ("churn", "1", 8, {"label": ("INT64", [0]), "probabilities": ("FP64", [0, 2])}),
    ("iris", "1", 4, {"label": ("INT64", [0]), "probabilities": ("FP64", [0, 3])}),
    # scikit-learn with runners.sklearn_fast's kernels (runner.lean: false)
    ("churn-sk", "1", 8, {"label": ("INT64", [0]), "probabilities": ("FP64", [0, 2])}),
    # regressors: a forest (scikit-learn) and a two-target Ridge (numpy kernels)
    ("forest-reg", "1", 8, {"prediction": ("FP64", [0])}),
    ("ridge-2d", "1", 8, {"prediction": ("FP64", [0, 2])}),
    # string classes: BYTES labels
    ("words", "1", 4, {"label": ("BYTES", [0]), "probabilities": ("FP64", [0, 3])}),
    # outputs declared in model.yaml, the probabilities' columns left open (-1) and FP32
    ("forest-open", "1", 4, {"label": ("INT64", [0]), "probabilities": ("FP32", [0, 3])}),
    # ONNX Runtime
    ("iris-onnx", "1", 4, {"label": ("INT64", [0]), "probabilities": ("FP32", [0, 3])}),
]


def _model(repo: Path, name: str, estimator: Any, yaml: str = "") -> None:
    (repo / name / "1").mkdir(parents=True)
    joblib.dump(estimator, repo / name / "1" / "model.joblib")
    if yaml:
        (repo / name / "model.yaml").write_text(textwrap.dedent(yaml))


def build_zero_rows_repository(repo: Path) -> None:
    """tests.models.build_repository, plus one model for each scikit-learn path."""
    build_repository(repo)
    cx, cy = churn_data()
    x, y = iris()
    _model(
        repo, "churn-sk", LogisticRegression(max_iter=500).fit(cx, cy), "runner: {lean: false}\n"
    )
    _model(
        repo, "forest-reg", RandomForestRegressor(n_estimators=5, random_state=0).fit(cx, cx[:, 0])
    )
    _model(repo, "ridge-2d", Ridge().fit(cx, np.c_[cx[:, 0], cx[:, 1]]))
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    _model(repo, "words", RandomForestClassifier(n_estimators=5, random_state=0).fit(x, names))
    _model(
        repo,
        "forest-open",
        RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y),
        """
        outputs:
          - {name: label, datatype: INT64, shape: [-1]}
          - {name: probabilities, datatype: FP32, shape: [-1, -1]}
        """,
    )


@pytest.fixture(scope="module")
def zero_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repo = tmp_path_factory.mktemp("zero-rows-models")
    build_zero_rows_repository(repo)
    with GatewayProcess(repo, tmp_path_factory.mktemp("zero-rows-data")) as process:
        yield process


@pytest.fixture(scope="module")
def zero_stub(zero_gateway: GatewayProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(zero_gateway.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    version: str,
    x: np.ndarray,
    *,
    raw: bool,
    request_id: str = "",
) -> pb.ModelInferResponse:
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    tensors.encode(message.inputs, message.raw_input_contents, {"input": x}, raw=raw)
    reply: pb.ModelInferResponse = stub.ModelInfer(message, timeout=60)
    return reply


def signature(reply: pb.ModelInferResponse) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (t.datatype, list(t.shape)) for t in reply.outputs}


def ledger_stats(control: ControlClient) -> dict[str, Any]:
    stats: dict[str, Any] = control.report("iris")["ledger"]
    return stats


def wait_recorded(control: ControlClient, answers: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stats = ledger_stats(control)
    while stats["recorded_answers"] + stats["failed"] < answers and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = ledger_stats(control)
    return stats


def test_zero_rows_answer_ok_with_empty_outputs_and_are_recorded(
    zero_gateway: GatewayProcess, zero_stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    with ControlClient(zero_gateway.target) as control:
        before = ledger_stats(control)
        sent = 0
        for model, version, features, expected in CASES:
            one = infer(zero_stub, model, version, np.zeros((1, features), np.float32), raw=True)
            sent += 1
            for raw in (True, False):
                case = f"{model} v{version} ({'raw' if raw else 'typed'})"
                x = np.zeros((0, features), np.float32)
                request_id = f"zero-{model}-{version}-{'raw' if raw else 'typed'}"
                reply = infer(zero_stub, model, version, x, raw=raw, request_id=request_id)
                sent += 1
                assert signature(reply) == expected, case
                assert reply.id == request_id
                # the same datatypes and columns as its answer to one row
                assert {name: (d, s[1:]) for name, (d, s) in signature(one).items()} == {
                    name: (d, s[1:]) for name, (d, s) in expected.items()
                }, case
                if raw:  # answered raw, one empty bytes entry per output
                    assert list(reply.raw_output_contents) == [b""] * len(reply.outputs), case
                else:
                    assert not reply.raw_output_contents, case
                for name, array in tensors.decode(reply.outputs, reply.raw_output_contents).items():
                    assert array.shape == tuple(expected[name][1]), (case, name)
        after = wait_recorded(control, before["recorded_answers"] + before["failed"] + sent)
    assert after["failed"] == before["failed"] == 0, after["last_error"]
    assert after["recorded_answers"] == before["recorded_answers"] + sent
    assert after["last_error"] is None
    con = sqlite3.connect(zero_gateway.data_dir / "ledger.db")
    try:
        rows = con.execute(
            "select request_id, rows, status, labels, k from answers where request_id like 'zero-%'"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 2 * len(CASES)
    for request_id, n, status, labels, k in rows:
        assert (n, status) == (0, "OK"), request_id
        assert labels in (None, "[]"), request_id
        assert k in (0, 2, 3), request_id


def test_zero_rows_among_concurrent_requests(
    zero_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """Zero-row requests beside ordinary ones (the runner batches concurrent requests):
    each gets its own answer, the empty ones empty."""
    cx, _ = churn_data()
    batches = [cx[: i % 3] for i in range(30)]  # 0, 1 and 2 rows

    def call(x: np.ndarray) -> dict[str, np.ndarray]:
        reply = infer(zero_stub, "churn", "2", x, raw=True)
        return tensors.decode(reply.outputs, reply.raw_output_contents)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, batches))
    alone = call(cx[:2])
    for x, answer in zip(batches, answers, strict=True):
        assert answer["label"].shape == (len(x),)
        assert answer["probabilities"].shape == (len(x), 2)
        assert answer["label"].dtype == np.int64
        assert answer["probabilities"].dtype == np.float64
        np.testing.assert_array_equal(answer["label"], alone["label"][: len(x)])


# -- in process: the serving half and the ledger's conversion -------------------------------


def test_estimator_model_answers_zero_rows_without_asking_scikit_learn(tmp_path: Path) -> None:
    x, y = iris()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    model = SklearnModel.from_estimator(
        forest, tmp_path / "1" / "model.joblib", "m", "1", ModelConfig()
    )
    answer = model.predict({"input": x[:0]})
    assert answer["label"].shape == (0,) and answer["label"].dtype == np.int64
    assert answer["probabilities"].shape == (0, 3)
    assert answer["probabilities"].dtype == np.float64
    assert model.predict({"input": x[:0]}, ["probabilities"]).keys() == {"probabilities"}
    # non-empty batches are the estimator's own answers, as before
    ours = model.predict({"input": x[:5]})
    np.testing.assert_array_equal(ours["label"], forest.predict(x[:5]))
    np.testing.assert_array_equal(ours["probabilities"], forest.predict_proba(x[:5]))


def test_open_columns_come_from_a_one_row_answer(tmp_path: Path) -> None:
    x, y = iris()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    config = ModelConfig(
        outputs=[
            TensorDecl(name="label", datatype="INT64", shape=[-1]),
            TensorDecl(name="probabilities", datatype="FP32", shape=[-1, -1]),
        ]
    )
    model = SklearnModel.from_estimator(forest, tmp_path / "1" / "model.joblib", "m", "1", config)
    assert model.predict({"input": x[:0]})["probabilities"].shape == (0, 3)


ROLES = OutputRoles("label", "prediction", "probabilities", None)


def _reply(outputs: dict[str, np.ndarray], datatypes: dict[str, str], raw: bool) -> bytes:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r0")
    tensors.encode(response.outputs, response.raw_output_contents, outputs, raw, datatypes)
    return response.SerializeToString()


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize(
    ("outputs", "datatypes", "k"),
    [
        (
            {"label": np.empty(0, np.int64), "probabilities": np.empty((0, 3), np.float32)},
            {"label": "INT64", "probabilities": "FP32"},
            3,
        ),
        (
            {"label": np.empty((0, 1), object), "probabilities": np.empty((0, 2))},
            {"label": "BYTES", "probabilities": "FP64"},
            2,
        ),
        ({"prediction": np.empty(0)}, {"prediction": "FP64"}, 0),
        ({"prediction": np.empty((0, 1), np.float32)}, {"prediction": "FP32"}, 0),
    ],
)
def test_a_zero_row_reply_is_recorded_as_an_answer_of_no_rows(
    outputs: dict[str, np.ndarray], datatypes: dict[str, str], k: int, raw: bool
) -> None:
    item = Pending("m", "1", "primary", "", 1.5, ROLES, 12.0, _reply(outputs, datatypes, raw))
    answer = to_answer(item)
    assert answer.rows == 0 and answer.status == "OK" and answer.request_id == "r0"
    if "label" in outputs:
        assert answer.labels == ()
        assert answer.probabilities is not None and answer.probabilities.shape == (0, k)
    else:
        assert answer.values == () and answer.probabilities is None
    converted = convert(item)
    assert isinstance(converted, Answer)
    (_, params), rows = answer_params(converted)
    assert rows == 0 and params["rows"] == 0 and params["status"] == "OK"
    assert params["k"] == k


def test_a_merged_reply_records_a_request_that_had_no_rows() -> None:
    """A shadow copy's rows of a merged reply, when it had none: an answer of 0 rows."""
    outputs = {"label": np.arange(4, dtype=np.int64), "probabilities": np.full((4, 2), 0.5)}
    data = _reply(outputs, {"label": "INT64", "probabilities": "FP64"}, True)
    item = Pending("m", "1", "shadow", "mine", 1.5, ROLES, 12.0, data, row_slice=(2, 2))
    converted = convert(item)
    assert isinstance(converted, Answer)
    (_, params), rows = answer_params(converted)
    assert rows == 0 and params["request_id"] == "mine" and params["k"] == 2
    assert params["labels"] == "[]" and params["probabilities"] == b""
