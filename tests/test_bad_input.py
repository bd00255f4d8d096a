"""Bad requests get INVALID_ARGUMENT or NOT_FOUND with a message naming what is wrong,
before any runner sees them; malformed bytes never crash or wedge the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenroom_client.control import ControlClient
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.test_gateway import request

ROW = np.zeros((1, 4), dtype=np.float32)


def fails(stub: pb_grpc.GRPCInferenceServiceStub, message: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(message)
    return info.value


def raw_request(shape: list[int], raw: bytes, datatype: str = "FP32") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="iris")
    message.inputs.add(name="input", datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return message


def both_set() -> pb.ModelInferRequest:
    message = request("iris", {"input": ROW}, raw=True)
    message.inputs[0].contents.fp32_contents.extend([0.0] * 4)
    return message


def extra_input() -> pb.ModelInferRequest:
    return request("iris", {"input": ROW, "bonus": ROW})


CASES = [
    # (case, request, status, words the message must contain)
    ("unknown model", request("nope", {"input": ROW}), "NOT_FOUND", ["model 'nope'"]),
    (
        "unknown version",
        request("iris", {"input": ROW}, model_version="9"),
        "NOT_FOUND",
        ["model 'iris' has no version '9'", "versions: 1"],
    ),
    (
        "missing input",
        pb.ModelInferRequest(model_name="iris"),
        "INVALID_ARGUMENT",
        ["input 'input'", "missing"],
    ),
    (
        "misnamed input",
        request("iris", {"features": ROW}),
        "INVALID_ARGUMENT",
        ["input 'features'", "not an input"],
    ),
    ("extra input", extra_input(), "INVALID_ARGUMENT", ["input 'bonus'", "not an input"]),
    (
        "wrong datatype",
        request("iris", {"input": ROW.astype(np.float64)}),
        "INVALID_ARGUMENT",
        ["input 'input'", "FP64", "FP32"],
    ),
    (
        "shape contradicts metadata",
        request("iris", {"input": np.zeros((2, 3), np.float32)}),
        "INVALID_ARGUMENT",
        ["input 'input'", "[2, 3]", "[-1, 4]"],
    ),
    (
        "rank contradicts metadata",
        request("iris", {"input": np.zeros(4, np.float32)}),
        "INVALID_ARGUMENT",
        ["input 'input'", "[4]"],
    ),
    (
        "raw size mismatch",
        raw_request([1, 4], b"\0" * 15),
        "INVALID_ARGUMENT",
        ["input 'input'", "15 bytes", "needs 16"],
    ),
    (
        "typed count mismatch",
        pb.ModelInferRequest(
            model_name="iris",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=[1, 4],
                    contents=pb.InferTensorContents(fp32_contents=[1.0, 2.0]),
                )
            ],
        ),
        "INVALID_ARGUMENT",
        ["input 'input'", "needs 4 values", "got 2"],
    ),
    ("typed and raw both set", both_set(), "INVALID_ARGUMENT", ["input 'input'", "raw"]),
    (
        "unknown datatype",
        raw_request([1, 4], b"\0" * 16, "FP128"),
        "INVALID_ARGUMENT",
        ["input 'input'", "unknown datatype 'FP128'"],
    ),
    (
        "negative dimension",
        raw_request([-1, 4], b""),
        "INVALID_ARGUMENT",
        ["input 'input'", "negative"],
    ),
    (
        "raw count mismatch",
        request("iris", {"input": ROW}).__class__(
            model_name="iris",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 4])
            ],
            raw_input_contents=[b"\0" * 16, b"\0" * 16],
        ),
        "INVALID_ARGUMENT",
        ["2 entries for 1 tensors"],
    ),
    ("empty model name", request("", {"input": ROW}), "INVALID_ARGUMENT", ["model name is empty"]),
    (
        "unknown output",
        pb.ModelInferRequest(
            model_name="iris",
            inputs=request("iris", {"input": ROW}).inputs,
            raw_input_contents=request("iris", {"input": ROW}).raw_input_contents,
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
        ),
        "INVALID_ARGUMENT",
        ["output 'logits'", "label"],
    ),
]


@pytest.mark.parametrize(("case", "message", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    stub: pb_grpc.GRPCInferenceServiceStub,
    case: str,
    message: pb.ModelInferRequest,
    status: str,
    words: list[str],
) -> None:
    error = fails(stub, message)
    assert error.code() == grpc.StatusCode[status], case
    for word in words:
        assert word in error.details(), (case, error.details())


def test_nan_to_a_scaler_before_a_linear_model(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """iris is StandardScaler + LogisticRegression (joblib): the scaler would pass NaN on
    to a model that cannot take it. (ONNX graphs get NaN as sent: some take it.)"""
    message = request("iris", {"input": np.array([[1.0, np.nan, 1.0, 1.0]], dtype=np.float32)})
    error = fails(stub, message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input': contains NaN or infinity" in (error.details() or "")


def test_message_over_the_size_limit(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    limit = 1 << 16
    gateway = GatewayProcess(
        repo,
        tmp_path_factory.mktemp("data"),
        "--max-message-bytes",
        str(limit),
    )
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            big = np.zeros(((limit // 16) + 10, 4), dtype=np.float32)
            error = fails(stub, request("iris", {"input": big}))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (
                "input 'input'" in error.details()
                and f"over the {limit}-byte limit" in error.details()
            )
            assert stub.ModelInfer(request("iris", {"input": ROW})).outputs
            # A request under the limit whose answer is over it (labels and FP64
            # probabilities: 32 bytes a row against 16 in): refused, recorded as refused.
            rows = limit // 16 - 256
            wide = np.ones((rows, 4), dtype=np.float32)
            error = fails(stub, request("iris", {"input": wide}))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "the answer is" in error.details() and "send fewer rows" in error.details()
        with ControlClient(gateway.target) as control:
            [iris] = control.report("iris")["versions"]
            assert (iris["predictions"], iris["errors"]) == (1, rows), iris  # errors: rows
    finally:
        gateway.stop()


def test_garbage_bytes(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelInferRequest" in info.value.details()


datatypes = st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "UINT8", "", "X"])
tensors_st = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(["input", "", "x", "input\u00e9"]),
    datatype=datatypes,
    shape=st.lists(st.integers(-3, 6), max_size=3),
)
requests_st = st.builds(
    pb.ModelInferRequest,
    model_name=st.sampled_from(["iris", "churn", "text", "", "nope"]),
    model_version=st.sampled_from(["", "1", "2", "x"]),
    inputs=st.lists(tensors_st, max_size=3),
    raw_input_contents=st.lists(st.binary(max_size=40), max_size=3),
)


@pytest.fixture(scope="module")
def raw_call(gateway: GatewayProcess) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=requests_st, junk=st.binary(max_size=64))
def test_malformed_requests_never_crash_or_wedge(
    stub: pb_grpc.GRPCInferenceServiceStub,
    raw_call: grpc.UnaryUnaryMultiCallable,
    message: pb.ModelInferRequest,
    junk: bytes,
) -> None:
    for payload in (message.SerializeToString(), junk):
        try:
            raw_call(payload, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, (
                error.code(),
                error.details(),
            )
            assert error.details()
    # The gateway still answers a good request after every malformed one.
    assert stub.ModelInfer(request("iris", {"input": ROW}), timeout=10).outputs


# Every RPC that takes a model, with an empty name and every other field filled in, so
# that only the name is wrong. (ModelStreamInfer shares ModelInfer's check.)
EMPTY_NAME: dict[str, Message] = {
    "ModelReady": pb.ModelReadyRequest(name="", version="1"),
    "ModelMetadata": pb.ModelMetadataRequest(name=""),
    "ModelInfer": request("", {"input": ROW}),
    "GetDeployment": cpb.GetDeploymentRequest(model=""),
    "SetDeployment": cpb.SetDeploymentRequest(
        deployment=cpb.Deployment(model="", primary="1"), reason="a reason"
    ),
    "GetHistory": cpb.GetHistoryRequest(model=""),
    "Promote": cpb.PromoteRequest(model="", version="2", reason="a reason"),
    "SendFeedback": cpb.FeedbackBatch(
        model="", items=[cpb.FeedbackItem(request_id="r", label="1")]
    ),
    "StreamFeedback": cpb.FeedbackBatch(
        model="", items=[cpb.FeedbackItem(request_id="r", label="1")]
    ),
    "Report": cpb.ReportRequest(model=""),
    "Decide": cpb.DecideRequest(model="", candidate="2"),
    "Register": cpb.RegisterRequest(model="", artifact_name="model.joblib", artifact=b"x"),
    "ListVersions": cpb.ListVersionsRequest(model=""),
    "Drift": cpb.DriftRequest(model="", version="1"),
    "FreezeReference": cpb.FreezeReferenceRequest(model="", version="1"),
    "ReportOverTime": cpb.ReportOverTimeRequest(model="", by="day"),
    "Validate": cpb.ValidateRequest(model="", version="1"),
    "Retrain": cpb.RetrainRequest(model="", reason="a reason"),
    "Backtest": cpb.BacktestRequest(model="", versions=["1"]),
}
SERVICES = [
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    *cpb.DESCRIPTOR.services_by_name.values(),
]


def _takes_a_model(method: MethodDescriptor) -> bool:
    fields = method.input_type.fields_by_name
    return bool({"model", "name", "model_name", "deployment"} & set(fields))


def _call(channel: grpc.Channel, method: MethodDescriptor, message: Message) -> grpc.RpcError:
    """``method`` called with ``message`` (a stream of one when it takes a stream); only
    its error is read, so its answer is left as bytes."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = type(message).SerializeToString
    with pytest.raises(grpc.RpcError) as info:
        if method.client_streaming:
            channel.stream_unary(path, serialize)(iter([message]), timeout=10)
        else:
            channel.unary_unary(path, serialize)(message, timeout=10)
    return info.value


def test_an_empty_model_name_is_invalid_on_every_rpc(gateway: GatewayProcess) -> None:
    """An empty name is a request with a field left out (INVALID_ARGUMENT), not a model
    that is not served (NOT_FOUND): the same answer from every RPC that takes one. The
    list is checked against the protos, so a new RPC that takes a model must join it."""
    methods = {
        m.name: m
        for s in SERVICES
        for m in s.methods
        if _takes_a_model(m) and not m.server_streaming
    }
    assert set(methods) == set(EMPTY_NAME), "an RPC that takes a model is missing here"
    with grpc.insecure_channel(gateway.target) as channel:
        for name, message in EMPTY_NAME.items():
            error = _call(channel, methods[name], message)
            words = "model name is empty: name the model"
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
            assert error.details() == words, (name, error.details())
