"""ONNX files from several exporters, served by a real gateway, answer like their source.

Each model is trained here on a few hundred rows, exported to ONNX by the tool its users
would use (skl2onnx for scikit-learn, onnxmltools for LightGBM and XGBoost, onnx.helper
for a graph written by hand), and put into a model repository as
``<name>/1/model.onnx``. One gateway serves them all; every answer is compared with the
source framework's own prediction, from a raw request and from a typed one.

ONNX Runtime computes in float32 while scikit-learn, LightGBM and XGBoost compute
probabilities and values in float64: those are compared to float32 precision (rtol 1e-5,
atol 1e-6); labels must be equal.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from lightgbm import LGBMClassifier
from onnx import TensorProto, helper, numpy_helper
from onnxmltools import convert_lightgbm, convert_xgboost  # type: ignore[import-untyped]
from onnxmltools.convert.common.data_types import (  # type: ignore[import-untyped]
    FloatTensorType,
)
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier, XGBRegressor

from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.test_gateway import outputs, request

Array = npt.NDArray[Any]

N_FEATURES = 6
N_CLASSES = 3
# The converters' highest opsets here: onnxmltools 1.16 refuses more than 15.
SKL2ONNX_OPSET = {"": 17, "ai.onnx.ml": 3}
ONNXMLTOOLS_OPSET = 15
HELPER_OPSET = 17


@dataclass(frozen=True)
class Zoo:
    """The trained models, their data and the repository that serves their ONNX files."""

    repo: Path
    x: Array  # classification features, float32
    xr: Array  # regression features, float32
    pipeline: Any  # scikit-learn Pipeline(StandardScaler, LogisticRegression)
    forest: Any  # scikit-learn RandomForestClassifier
    lgbm: LGBMClassifier
    xgb_classifier: XGBClassifier
    xgb_regressor: XGBRegressor
    weights: Array  # the hand-built graph's W (3 x 2) and B (2)
    bias: Array
    hx: Array  # the hand-built graph's input


def close_to_float32(actual: Array, expected: npt.ArrayLike) -> None:
    """Float32 answers against float64 ones: equal to a few float32 ulps."""
    np.testing.assert_allclose(actual, np.asarray(expected), rtol=1e-5, atol=1e-6)


def _save(repo: Path, name: str, model: onnx.ModelProto, model_yaml: str | None = None) -> None:
    onnx.checker.check_model(model)
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    if model_yaml is not None:
        (repo / name / "model.yaml").write_text(textwrap.dedent(model_yaml))


def _float_input() -> list[tuple[str, Any]]:
    return [("input", FloatTensorType([None, N_FEATURES]))]


def _hand_built_graph(weights: Array, bias: Array) -> onnx.ModelProto:
    """logit = Gemm(x, W, B); score = Sigmoid(logit); label = ArgMax(logit, axis 1).
    The batch dimension is symbolic ("batch"), the feature dimension fixed."""
    n_in, n_out = weights.shape
    nodes = [
        helper.make_node("Gemm", ["x", "W", "B"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
        helper.make_node("ArgMax", ["logit"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm_sigmoid",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        outputs=[
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", n_out]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", n_out]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(bias, "B"),
        ],
    )
    opsets = [helper.make_opsetid("", HELPER_OPSET)]
    return helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="greenroom-tests",
    )


def _build(repo: Path) -> Zoo:
    x, y = make_classification(
        n_samples=300,
        n_features=N_FEATURES,
        n_informative=4,
        n_classes=N_CLASSES,
        random_state=3,
    )
    x = x.astype(np.float32)
    xr, yr = make_regression(n_samples=300, n_features=N_FEATURES, noise=5.0, random_state=4)
    xr = xr.astype(np.float32)

    # skl2onnx, classifier in a pipeline. zipmap=False: probabilities as a float tensor
    # [N, 3] rather than ZipMap's seq(map(int64, float)), which V2 cannot carry.
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    exported = to_onnx(
        pipeline,
        x[:1],
        options={id(pipeline): {"zipmap": False}},
        target_opset=SKL2ONNX_OPSET,
    )
    _save(repo, "skl-pipeline", exported)

    # skl2onnx with its defaults: the probabilities come out as a ZipMap, which the
    # runner leaves out (with a warning in its log); the label is still served.
    forest = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
    _save(repo, "skl-forest-zipmap", to_onnx(forest, x[:1], target_opset=SKL2ONNX_OPSET))

    # onnxmltools from LightGBM. zipmap=False as for skl2onnx. The converter declares the
    # label output with the static shape [1] (not [None]) although it answers one label
    # per row, so the runner would refuse every answer of more than one row as a model
    # bug; model.yaml declares the outputs' real shapes, as the runner's message advises.
    lgbm = LGBMClassifier(n_estimators=15, num_leaves=7, random_state=0, verbose=-1).fit(x, y)
    exported = convert_lightgbm(
        lgbm, initial_types=_float_input(), zipmap=False, target_opset=ONNXMLTOOLS_OPSET
    )
    _save(
        repo,
        "lgbm-classifier",
        exported,
        """\
        task: classification
        outputs:
          - {name: label, datatype: INT64, shape: [-1]}
          - {name: probabilities, datatype: FP32, shape: [-1, 3]}
        """,
    )

    # onnxmltools from XGBoost: the classifier's probabilities are a tensor already
    # (label [N], probabilities [N, 3]); the regressor answers "variable" [N, 1].
    xgb_classifier = XGBClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x, y)
    exported = convert_xgboost(
        xgb_classifier, initial_types=_float_input(), target_opset=ONNXMLTOOLS_OPSET
    )
    _save(repo, "xgb-classifier", exported)
    xgb_regressor = XGBRegressor(n_estimators=15, max_depth=3, random_state=0).fit(xr, yr)
    exported = convert_xgboost(
        xgb_regressor, initial_types=_float_input(), target_opset=ONNXMLTOOLS_OPSET
    )
    _save(repo, "xgb-regressor", exported)

    # onnx.helper. Weights, bias and inputs are small multiples of powers of two, so that
    # the Gemm is exact in float32 whatever order ONNX Runtime sums in: logits must be
    # *equal* to numpy's.
    rng = np.random.default_rng(5)
    weights = (rng.integers(-8, 9, size=(3, 2)) / 4).astype(np.float32)
    bias = (rng.integers(-4, 5, size=2) / 2).astype(np.float32)
    hx = (rng.integers(-32, 33, size=(40, 3)) / 8).astype(np.float32)
    _save(repo, "hand-built", _hand_built_graph(weights, bias))

    return Zoo(
        repo=repo,
        x=x,
        xr=xr,
        pipeline=pipeline,
        forest=forest,
        lgbm=lgbm,
        xgb_classifier=xgb_classifier,
        xgb_regressor=xgb_regressor,
        weights=weights,
        bias=bias,
        hx=hx,
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return _build(tmp_path_factory.mktemp("onnx-exporters"))


@pytest.fixture(scope="module")
def onnx_stub(
    zoo: Zoo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    gateway = GatewayProcess(zoo.repo, tmp_path_factory.mktemp("onnx-exporters-data"))
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        gateway.stop()


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, arrays: dict[str, Array]
) -> dict[str, Array]:
    """The model's answer to a raw request, checked equal to its answer to a typed one."""
    raw_reply = stub.ModelInfer(request(model, arrays, raw=True))
    typed_reply = stub.ModelInfer(request(model, arrays, raw=False))
    assert raw_reply.model_name == model and raw_reply.model_version == "1"
    assert len(raw_reply.raw_output_contents) == len(raw_reply.outputs)
    assert not typed_reply.raw_output_contents
    raw, typed = outputs(raw_reply), outputs(typed_reply)
    assert list(typed) == list(raw)
    for name, array in raw.items():
        assert typed[name].dtype == array.dtype, name
        np.testing.assert_array_equal(typed[name], array, err_msg=name)
    return raw


def signature(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str
) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version="1"))
    assert meta.platform == "onnxruntime"
    return (
        [(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
        [(t.name, t.datatype, list(t.shape)) for t in meta.outputs],
    )


def test_skl2onnx_pipeline(onnx_stub: pb_grpc.GRPCInferenceServiceStub, zoo: Zoo) -> None:
    assert signature(onnx_stub, "skl-pipeline") == (
        [("X", "FP32", [-1, N_FEATURES])],
        [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, N_CLASSES])],
    )
    out = infer(onnx_stub, "skl-pipeline", {"X": zoo.x})
    np.testing.assert_array_equal(out["label"], zoo.pipeline.predict(zoo.x))
    close_to_float32(out["probabilities"], zoo.pipeline.predict_proba(zoo.x))


def test_skl2onnx_zipmap_output_is_left_out(
    onnx_stub: pb_grpc.GRPCInferenceServiceStub, zoo: Zoo
) -> None:
    _, served = signature(onnx_stub, "skl-forest-zipmap")
    assert served == [("output_label", "INT64", [-1])]
    out = infer(onnx_stub, "skl-forest-zipmap", {"X": zoo.x})
    assert list(out) == ["output_label"]
    np.testing.assert_array_equal(out["output_label"], zoo.forest.predict(zoo.x))


def test_onnxmltools_lightgbm_classifier(
    onnx_stub: pb_grpc.GRPCInferenceServiceStub, zoo: Zoo
) -> None:
    assert signature(onnx_stub, "lgbm-classifier") == (
        [("input", "FP32", [-1, N_FEATURES])],
        [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, N_CLASSES])],
    )
    out = infer(onnx_stub, "lgbm-classifier", {"input": zoo.x})
    np.testing.assert_array_equal(out["label"], zoo.lgbm.predict(zoo.x))
    close_to_float32(out["probabilities"], zoo.lgbm.predict_proba(zoo.x))


def test_onnxmltools_xgboost_classifier(
    onnx_stub: pb_grpc.GRPCInferenceServiceStub, zoo: Zoo
) -> None:
    assert signature(onnx_stub, "xgb-classifier") == (
        [("input", "FP32", [-1, N_FEATURES])],
        [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, N_CLASSES])],
    )
    out = infer(onnx_stub, "xgb-classifier", {"input": zoo.x})
    np.testing.assert_array_equal(out["label"], zoo.xgb_classifier.predict(zoo.x))
    close_to_float32(out["probabilities"], zoo.xgb_classifier.predict_proba(zoo.x))


def test_onnxmltools_xgboost_regressor(
    onnx_stub: pb_grpc.GRPCInferenceServiceStub, zoo: Zoo
) -> None:
    assert signature(onnx_stub, "xgb-regressor") == (
        [("input", "FP32", [-1, N_FEATURES])],
        [("variable", "FP32", [-1, 1])],
    )
    out = infer(onnx_stub, "xgb-regressor", {"input": zoo.xr})
    assert out["variable"].shape == (len(zoo.xr), 1)
    close_to_float32(out["variable"][:, 0], zoo.xgb_regressor.predict(zoo.xr))


def test_onnx_helper_graph(onnx_stub: pb_grpc.GRPCInferenceServiceStub, zoo: Zoo) -> None:
    # The symbolic "batch" dimension is reported as -1, the fixed ones as they are.
    assert signature(onnx_stub, "hand-built") == (
        [("x", "FP32", [-1, 3])],
        [("logit", "FP32", [-1, 2]), ("score", "FP32", [-1, 2]), ("label", "INT64", [-1])],
    )
    logit = zoo.hx @ zoo.weights + zoo.bias
    out = infer(onnx_stub, "hand-built", {"x": zoo.hx})
    assert out["logit"].dtype == np.float32
    np.testing.assert_array_equal(out["logit"], logit)
    np.testing.assert_array_equal(out["label"], np.argmax(logit, axis=1))
    # ONNX Runtime's Sigmoid is vectorised: within a few float32 ulps of numpy's formula.
    np.testing.assert_allclose(out["score"], 1 / (1 + np.exp(-logit)), rtol=1e-6, atol=1e-7)
    # Any batch size, one row included.
    one = infer(onnx_stub, "hand-built", {"x": zoo.hx[:1]})
    np.testing.assert_array_equal(one["logit"], logit[:1])
