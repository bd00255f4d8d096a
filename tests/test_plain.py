"""The runner's plain path (runners.plain) against its general path.

A runner answers the gateway's framed socket with ``_infer_bytes``, which reads plain
requests' raw bytes as arrays and writes plain answers straight into the response's
bytes; gRPC ModelInfer answers with ``_infer``, which checks, decodes, casts and encodes
through protobuf messages. Every request must get the same bytes, or the same error, both
ways; and the plain path must actually be taken where it applies. Real models: a
scikit-learn LogisticRegression served by numpy kernels (its FP32 scores cast to the
declared FP64, its classes as an output parameter) and custom models written here.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from greenroom_client.errors import GreenroomError
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.config import load_model_config
from runners.model import load_model
from runners.server import InferenceServicer, batcher_for
from tests import request_edits
from tests.models import iris
from tests.request_edits import Edit
from tests.request_edits import request as _request

CUSTOM = """
import numpy as np

class Model:
    inputs = [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "k", "datatype": "INT32", "shape": [-1]},
    ]
    outputs = [
        {"name": "total", "datatype": "FP64", "shape": [-1]},
        {"name": "doubled", "datatype": "INT64", "shape": [-1]},
    ]

    def predict(self, inputs):
        x, k = inputs["x"], inputs["k"]
        mode = int(k[0]) if k.size else 0
        if mode == 7:  # a list, not an array: the general path makes it one
            return {"total": x.sum(axis=1).tolist(), "doubled": (k * 2).tolist()}
        if mode == 8:  # a column where the signature has none: a model bug
            return {"total": np.zeros((len(x), 1)), "doubled": k * 2}
        if mode == 9:  # an output missing
            return {"total": x.sum(axis=1)}
        if mode == 10:  # strings that cannot be cast to FP64
            return {"total": np.array(["a"] * len(x)), "doubled": k * 2}
        return {"total": x.sum(axis=1), "doubled": k * 2}
"""

FLAGS = """
import numpy as np

class Model:
    inputs = [{"name": "on", "datatype": "BOOL", "shape": [-1]}]
    outputs = [{"name": "count", "datatype": "INT64", "shape": [-1]}]

    def predict(self, inputs):
        return {"count": inputs["on"].astype(np.int64)}
"""


ODD = """
import numpy as np

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 3]},
              {"name": "k", "datatype": "INT32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]

    def predict(self, inputs):
        x, k = inputs["x"], inputs["k"]
        kind = int(k[0]) if k.size else 0
        if kind == 1:
            return {"y": np.ma.masked_less(x, 0.5)}  # tobytes() would fill masked cells
        if kind == 2:
            return {"y": np.asfortranarray(x.astype(">f8"))}
        if kind == 3:
            return {"y": np.repeat(x, 2, axis=1)[:, ::2]}  # not contiguous
        if kind == 4:
            return {"y": np.asmatrix(x) if len(x) else x}
        return {"y": x}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain")
    x, y = iris()
    (root / "logreg" / "1").mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), root / "logreg" / "1" / "model.joblib")
    for name, text in (("custom", CUSTOM), ("flags", FLAGS), ("odd", ODD)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(text)
    return root


def _servicer(repo: Path, name: str) -> InferenceServicer:
    config = load_model_config(repo / name)
    model = load_model(repo / name / "1", name, "1", config)
    servicer = InferenceServicer(name, "1")
    servicer.set_model(model, batcher_for(model, config.runner))
    return servicer


Outcome = tuple[str, bytes]
_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _both(servicer: InferenceServicer, request: pb.ModelInferRequest) -> tuple[Outcome, Outcome]:
    """(status name, body) by the framed socket's path and by gRPC's."""
    code, body = servicer.framed_answer(request.SerializeToString())
    framed = (grpc.StatusCode.OK.name if code == 0 else _NAMES[code], body)
    try:
        general: Outcome = ("OK", servicer.answer(request).SerializeToString())
    except GreenroomError as err:
        general = (err.code, err.message.encode())
    return framed, general


def _plain_taken(servicer: InferenceServicer, request: pb.ModelInferRequest) -> bool:
    serving = servicer.serving
    assert serving is not None and serving.plain is not None
    arrays = serving.plain.arrays(request)
    if arrays is None:
        return False
    answer = serving.batcher.run(arrays, serving.all_outputs, request.id)
    return serving.plain.response(request.id, answer) is not None


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
@pytest.mark.parametrize("rid", ["", "an-id"])
def test_plain_answers_equal_the_general_path_byte_for_byte(
    repo: Path, rows: int, rid: str
) -> None:
    x, _ = iris()
    rng = np.random.default_rng(rows)
    cases: list[tuple[str, dict[str, np.ndarray]]] = [
        ("logreg", {"input": np.resize(x, (rows, 4)).astype(np.float32)}),
        (
            "custom",
            {
                "x": rng.standard_normal((rows, 3)).astype(np.float32),
                "k": rng.integers(11, 100, rows).astype(np.int32),
            },
        ),
    ]
    for name, arrays in cases:
        servicer = _servicer(repo, name)
        request = _request(name, arrays, rid=rid)
        assert _plain_taken(servicer, request), (name, rows)
        framed, general = _both(servicer, request)
        assert framed[0] == "OK" and framed == general, (name, rows)


def test_the_logistic_regression_answer_is_cast_and_carries_its_classes(repo: Path) -> None:
    servicer = _servicer(repo, "logreg")
    x, _ = iris()
    request = _request("logreg", {"input": x[:3].astype(np.float32)}, rid="r")
    code, body = servicer.framed_answer(request.SerializeToString())
    response = pb.ModelInferResponse.FromString(body)
    assert code == 0 and response.id == "r"
    by_name = {t.name: t for t in response.outputs}
    assert by_name["probabilities"].datatype == "FP64"
    assert by_name["probabilities"].parameters["classes"].string_param == '["0", "1", "2"]'
    probabilities = np.frombuffer(response.raw_output_contents[1], dtype=np.float64)
    assert np.allclose(probabilities.reshape(3, 3).sum(axis=1), 1.0)


def _custom_request(mode: int = 1, rows: int = 2) -> pb.ModelInferRequest:
    return _request(
        "custom",
        {"x": np.ones((rows, 3), dtype=np.float32), "k": np.full(rows, mode, dtype=np.int32)},
    )


def _edits() -> dict[str, Edit]:
    def typed(r: pb.ModelInferRequest) -> None:
        r.ClearField("raw_input_contents")
        r.inputs[0].contents.fp32_contents.extend([1.0] * 6)
        r.inputs[1].contents.int_contents.extend([1, 1])

    def requested(r: pb.ModelInferRequest) -> None:
        r.outputs.add(name="doubled")

    def unknown_output(r: pb.ModelInferRequest) -> None:
        r.outputs.add(name="nope")

    def unholdable(r: pb.ModelInferRequest) -> None:  # no element, so 0 bytes; numpy refuses
        r.inputs[0].shape[:] = [0, 2**62]
        r.raw_input_contents[0] = b""

    own = (typed, requested, unknown_output, unholdable)
    return {**request_edits.common(), **{f.__name__: f for f in own}}


# Declined by the servicer before the plain path reads the inputs.
_NOT_INPUTS = {"requested", "unknown_output", "version"}


@pytest.mark.parametrize("case", sorted(_edits()))
def test_other_requests_take_the_general_path_and_get_its_answer(repo: Path, case: str) -> None:
    servicer = _servicer(repo, "custom")
    request = _custom_request()
    _edits()[case](request)
    serving = servicer.serving
    assert serving is not None and serving.plain is not None
    if case not in _NOT_INPUTS:
        assert serving.plain.arrays(request) is None
    framed, general = _both(servicer, request)
    assert framed == general
    assert (framed[0] == "OK") is (case in ("typed", "requested"))


@pytest.mark.parametrize(
    ("mode", "plain"), [(7, False), (8, False), (9, False), (10, False), (1, True)]
)
def test_answers_it_cannot_write_are_encoded_or_refused_as_the_general_path_does(
    repo: Path, mode: int, plain: bool
) -> None:
    """A list, a wrong shape, a missing output, an uncastable output: the plain
    response declines, and the answer (or the model's bug) is the general path's."""
    servicer = _servicer(repo, "custom")
    request = _custom_request(mode)
    assert _plain_taken(servicer, request) is plain
    framed, general = _both(servicer, request)
    assert framed == general
    assert (framed[0] == "OK") is (mode in (1, 7))


def test_a_model_with_bool_inputs_has_no_plain_path(repo: Path) -> None:
    servicer = _servicer(repo, "flags")
    assert servicer.serving is not None and servicer.serving.plain is None
    request = _request("flags", {"on": np.array([True, False, True])})
    framed, general = _both(servicer, request)
    assert framed[0] == "OK" and framed == general


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, on purpose
@pytest.mark.parametrize("kind", [1, 2, 3, 4])
@pytest.mark.parametrize("rows", [0, 1, 4])
def test_odd_arrays_are_written_as_the_general_path_writes_them(
    repo: Path, kind: int, rows: int
) -> None:
    """A masked array (its data, not its fill values), big-endian Fortran order, a strided
    view, an np.matrix."""
    servicer = _servicer(repo, "odd")
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) / 10
    request = _request("odd", {"x": x, "k": np.full(rows, kind, dtype=np.int32)}, rid="r")
    framed, general = _both(servicer, request)
    assert framed[0] == "OK" and framed == general
