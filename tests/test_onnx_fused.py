"""The in-process lane's fused ONNX path (gateway.onnx_fused) against the general one.

Every request either gets the general path's answer byte for byte or is declined (None),
so that the general path answers it, errors included. Real ONNX files: the iris
classifier as skl2onnx exports it, and small hand-built graphs with two inputs, FP64,
INT32 and fixed dimensions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from gateway.onnx_fused import FusedOnnx
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.config import RunnerOptions, load_model_config
from runners.model import Model, load_model
from runners.server import InferenceServicer, batcher_for
from tests import request_edits
from tests.models import export_onnx, iris
from tests.request_edits import Edit
from tests.request_edits import request as _request


def _graph(path: Path) -> None:
    """a, b: FP64 [-1, 3] -> total = a + b (FP64), rounded = int32(a * b) (INT32);
    c: INT64 [2, -1] -> c_twice = c + c (INT64)."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["total"]),
        helper.make_node("Mul", ["a", "b"], ["product"]),
        helper.make_node("Cast", ["product"], ["rounded"], to=TensorProto.INT32),
        helper.make_node("Add", ["c", "c"], ["c_twice"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fused-test",
        [
            helper.make_tensor_value_info("a", TensorProto.DOUBLE, [None, 3]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, [None, 3]),
            helper.make_tensor_value_info("c", TensorProto.INT64, [2, None]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.DOUBLE, [None, 3]),
            helper.make_tensor_value_info("rounded", TensorProto.INT32, [None, 3]),
            helper.make_tensor_value_info("c_twice", TensorProto.INT64, [2, None]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _load(repo: Path, name: str, yaml: str = "") -> Model:
    if yaml:
        (repo / name / "model.yaml").write_text(yaml)
    return load_model(repo / name / "1", name, "1", load_model_config(repo / name))


def _small_graph(
    path: Path, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto]
) -> None:
    """One FP32 output ``y`` of any shape."""
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "small", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fused")
    x, y = iris()
    export_onnx(
        make_pipeline(LogisticRegression(max_iter=500)).fit(x, y),
        4,
        root / "iris" / "1" / "model.onnx",
    )
    for name in ("graph", "renamed", "cast"):
        _graph(root / name / "1" / "model.onnx")
    constant = helper.make_tensor("c", TensorProto.FLOAT, [1, 2], [1.5, 2.5])
    _small_graph(
        root / "constant" / "1" / "model.onnx",
        [helper.make_node("Constant", [], ["y"], value=constant)],
        [],
    )
    _small_graph(
        root / "identity" / "1" / "model.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
    )
    return root


def _general(model: Model) -> Callable[[pb.ModelInferRequest], bytes]:
    servicer = InferenceServicer(model.name, model.version)
    servicer.set_model(model, batcher_for(model, RunnerOptions()))
    return lambda request: servicer.answer(request).SerializeToString()


def _graph_inputs(rows: int, width: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {
        "a": rng.standard_normal((rows, 3)) * 10,
        "b": rng.standard_normal((rows, 3)),
        "c": rng.integers(-1000, 1000, (2, width), dtype=np.int64),
    }


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
@pytest.mark.parametrize("rid", ["", "an-id"])
def test_answers_equal_the_general_path_byte_for_byte(repo: Path, rows: int, rid: str) -> None:
    x, _ = iris()
    cases = [
        (_load(repo, "iris"), {"input": np.resize(x, (rows, 4)).astype(np.float32)}),
        (_load(repo, "graph"), _graph_inputs(rows)),
    ]
    for model, arrays in cases:
        fused = FusedOnnx.of(model)
        assert fused is not None, model.name
        request = _request(model.name, arrays, rid=rid)
        answer = fused.answer(request)
        assert answer is not None, (model.name, rows)
        assert answer == _general(model)(request), (model.name, rows)


def test_renamed_tensors_and_a_fixed_dimension(repo: Path) -> None:
    yaml = (
        "inputs:\n"
        "  - {name: left, datatype: FP64, shape: [-1, 3]}\n"
        "  - {name: right, datatype: FP64, shape: [-1, 3]}\n"
        "  - {name: pair, datatype: INT64, shape: [2, 4]}\n"
        "outputs:\n"
        "  - {name: sum, datatype: FP64, shape: [-1, 3]}\n"
    )
    model = _load(repo, "renamed", yaml)
    fused = FusedOnnx.of(model)
    assert fused is not None
    arrays = _graph_inputs(3, width=4)
    request = _request("renamed", {"left": arrays["a"], "right": arrays["b"], "pair": arrays["c"]})
    answer = fused.answer(request)
    assert answer is not None and answer == _general(model)(request)
    wrong_width = _request(
        "renamed", {"left": arrays["a"], "right": arrays["b"], "pair": _graph_inputs(3)["c"]}
    )
    assert fused.answer(wrong_width) is None  # [2, 5] against the declared [2, 4]


def _declined_cases() -> dict[str, Edit]:
    def typed(r: pb.ModelInferRequest) -> None:
        r.ClearField("raw_input_contents")
        r.inputs[0].contents.fp64_contents.extend([1.0] * 6)
        r.inputs[1].contents.fp64_contents.extend([1.0] * 6)
        r.inputs[2].contents.int64_contents.extend([1] * 10)

    def rows_disagree(r: pb.ModelInferRequest) -> None:  # ONNX Runtime refuses a + b
        r.inputs[1].shape[:] = [3, 3]
        r.raw_input_contents[1] += r.raw_input_contents[1][:24]

    def outputs(r: pb.ModelInferRequest) -> None:
        r.outputs.add(name="total")

    own = (typed, rows_disagree, outputs)
    return {**request_edits.common(), **{f.__name__: f for f in own}}


@pytest.mark.parametrize("case", sorted(_declined_cases()))
def test_anything_else_is_declined_and_the_general_path_decides(repo: Path, case: str) -> None:
    model = _load(repo, "graph")
    fused = FusedOnnx.of(model)
    assert fused is not None
    request = _request("graph", _graph_inputs(2))
    _declined_cases()[case](request)
    assert fused.answer(request) is None


def test_models_it_never_serves(repo: Path) -> None:
    """A declared datatype that needs a cast before the run (FP32 sent to a double
    graph): every request takes the general path."""
    cast = _load(
        repo,
        "cast",
        "inputs:\n"
        "  - {name: a, datatype: FP32, shape: [-1, 3]}\n"
        "  - {name: b, datatype: FP64, shape: [-1, 3]}\n"
        "  - {name: c, datatype: INT64, shape: [2, -1]}\n",
    )
    assert FusedOnnx.of(cast) is None


def test_a_model_without_inputs_is_answered_by_the_general_path(repo: Path) -> None:
    """An empty request has no raw contents, so the general path answers in typed form;
    the fused path, which writes raw, must leave it alone."""
    model = _load(repo, "constant")
    fused = FusedOnnx.of(model)
    assert fused is not None
    request = pb.ModelInferRequest(model_name="constant")
    assert fused.answer(request) is None
    assert pb.ModelInferResponse.FromString(_general(model)(request)).outputs[0].shape == [1, 2]


def test_a_shape_numpy_cannot_hold_is_declined_not_raised(repo: Path) -> None:
    """[0, 2**62] holds no element, so it needs 0 bytes and passes the checks; numpy
    cannot make the array. The general path answers INTERNAL (and the gateway records
    it); the fused path must decline rather than raise past the gateway's recording."""
    model = _load(repo, "identity")
    fused = FusedOnnx.of(model)
    assert fused is not None
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="x", datatype="FP32", shape=[0, 2**62])
    request.raw_input_contents.append(b"")
    assert fused.answer(request) is None
    fine = _request("identity", {"x": np.ones((2, 3), dtype=np.float32)})
    assert fused.answer(fine) == _general(model)(fine)


def test_another_models_request_is_declined(repo: Path) -> None:
    model = _load(repo, "graph")
    fused = FusedOnnx.of(model)
    assert fused is not None
    assert fused.answer(_request("iris", _graph_inputs(2))) is None
