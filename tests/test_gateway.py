"""The gateway end to end: real gateway and runner processes, models trained by the tests."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from greenroom_client import tensors
from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.models import churn_data, iris


def request(
    model: str,
    arrays: dict[str, np.ndarray],
    raw: bool = True,
    model_version: str = "",
    id: str = "",
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, model_version=model_version, id=id)
    tensors.encode(message.inputs, message.raw_input_contents, arrays, raw=raw)
    return message


def outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return tensors.decode(reply.outputs, reply.raw_output_contents)


def test_joblib_answers_equal_the_model(stub: pb_grpc.GRPCInferenceServiceStub, repo: Path) -> None:
    x, _ = iris()
    model = joblib.load(repo / "iris" / "1" / "model.joblib")
    reply = stub.ModelInfer(request("iris", {"input": x}))
    out = outputs(reply)
    assert reply.model_name == "iris" and reply.model_version == "1"
    np.testing.assert_array_equal(out["label"], model.predict(x))
    np.testing.assert_array_equal(out["probabilities"], model.predict_proba(x))
    assert len(reply.raw_output_contents) == len(reply.outputs)


def test_onnx_answers_equal_onnxruntime(stub: pb_grpc.GRPCInferenceServiceStub, repo: Path) -> None:
    x, _ = iris()
    session = ort.InferenceSession(str(repo / "iris-onnx" / "1" / "model.onnx"))
    label, proba = session.run(["label", "probabilities"], {"input": x})
    out = outputs(stub.ModelInfer(request("iris-onnx", {"input": x})))
    np.testing.assert_array_equal(out["label"], label)
    np.testing.assert_array_equal(out["probabilities"], proba)


def test_typed_request_gets_typed_answer_equal_to_raw(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    x, _ = iris()
    raw_reply = stub.ModelInfer(request("iris", {"input": x[:7]}))
    typed_reply = stub.ModelInfer(request("iris", {"input": x[:7]}, raw=False))
    assert not typed_reply.raw_output_contents
    assert typed_reply.outputs[0].contents.int64_contents
    for name, array in outputs(raw_reply).items():
        np.testing.assert_array_equal(outputs(typed_reply)[name], array)


def test_bytes_and_fp16_both_ways(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    arrays = {
        "text": np.array([b"hello", b"", "gr\u00fcn".encode()], dtype=object),
        "half": np.array([[1.5, -2.0], [0.25, 3.0], [0.0, 65504 / 2]], dtype=np.float16),
    }
    out = outputs(stub.ModelInfer(request("text", arrays)))
    np.testing.assert_array_equal(out["length"], [5, 0, 5])
    assert list(out["upper"]) == [b"HELLO", b"", "GR\u00fcN".encode()]
    assert out["doubled"].dtype == np.float16
    np.testing.assert_array_equal(out["doubled"], arrays["half"] * 2)
    # FP16 has no typed form in the protocol: a typed request cannot carry it.
    typed = request("text", {"text": arrays["text"]}, raw=False)
    half = typed.inputs.add(name="half", datatype="FP16", shape=[3, 2])
    half.contents.fp32_contents.extend(arrays["half"].ravel().tolist())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(typed)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'half'" in info.value.details() and "raw" in info.value.details()


def test_named_version_and_primary(stub: pb_grpc.GRPCInferenceServiceStub, repo: Path) -> None:
    x, _ = churn_data()
    for version in ("1", "2"):
        model = joblib.load(repo / "churn" / version / "model.joblib")
        reply = stub.ModelInfer(request("churn", {"input": x}, model_version=version))
        assert reply.model_version == version
        np.testing.assert_array_equal(outputs(reply)["probabilities"], model.predict_proba(x))
    # model.yaml names version 1 the primary, although 2 is higher.
    assert stub.ModelInfer(request("churn", {"input": x[:1]})).model_version == "1"


def test_request_id_echoed_or_made(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x, _ = iris()
    assert stub.ModelInfer(request("iris", {"input": x[:1]}, id="abc-42")).id == "abc-42"
    made = {stub.ModelInfer(request("iris", {"input": x[:1]})).id for _ in range(3)}
    assert len(made) == 3
    assert all(uuid.UUID(value) for value in made)


def test_requested_outputs_only(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x, _ = iris()
    message = request("iris", {"input": x[:2]})
    message.outputs.add(name="label")
    reply = stub.ModelInfer(message)
    assert [o.name for o in reply.outputs] == ["label"]


def test_metadata_ready_and_index(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "greenroom" and server.version
    assert "model_repository" in server.extensions
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="churn"))
    assert list(meta.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 8])
    ]
    assert {t.name: t.datatype for t in meta.outputs} == {"label": "INT64", "probabilities": "FP64"}
    onnx_meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="iris-onnx", version="1"))
    assert [(t.name, list(t.shape)) for t in onnx_meta.inputs] == [("input", [-1, 4])]
    assert stub.ModelReady(pb.ModelReadyRequest(name="churn", version="2")).ready
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    listed = {(m.name, m.version, m.state) for m in index.models}
    assert {("iris", "1", "READY"), ("churn", "1", "READY"), ("churn", "2", "READY")} <= listed
    assert {m.name for m in index.models} == {"iris", "iris-onnx", "churn", "text", "slow"}


def test_stream_infer(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x, _ = iris()
    good = [request("iris", {"input": x[i : i + 2]}, id=f"s{i}") for i in range(5)]
    bad = request("nope", {"input": x[:1]}, id="bad")
    replies = list(stub.ModelStreamInfer(iter([*good[:2], bad, *good[2:]])))
    assert [r.infer_response.id for r in replies] == ["s0", "s1", "bad", "s2", "s3", "s4"]
    assert replies[2].error_message == "model 'nope' is not in the repository"
    assert all(not r.error_message for i, r in enumerate(replies) if i != 2)


def test_health_and_reflection(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_200_concurrent_requests_across_two_models(
    stub: pb_grpc.GRPCInferenceServiceStub, repo: Path
) -> None:
    ix, _ = iris()
    cx, _ = churn_data()
    iris_model = joblib.load(repo / "iris" / "1" / "model.joblib")
    churn_model = joblib.load(repo / "churn" / "1" / "model.joblib")
    rng = np.random.default_rng(0)

    def call(i: int) -> tuple[int, pb.ModelInferResponse, np.ndarray, object]:
        if i % 2:
            rows = ix[rng.integers(0, len(ix), size=1 + i % 5)]
            return (
                i,
                stub.ModelInfer(request("iris", {"input": rows}, id=f"r{i}")),
                rows,
                iris_model,
            )
        rows = cx[rng.integers(0, len(cx), size=1 + i % 7)]
        return i, stub.ModelInfer(request("churn", {"input": rows}, id=f"r{i}")), rows, churn_model

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(200)))
    assert len(results) == 200
    for i, reply, rows, model in results:
        assert reply.id == f"r{i}"
        np.testing.assert_array_equal(outputs(reply)["label"], model.predict(rows))  # type: ignore[attr-defined]


def test_answers_with_only_some_outputs_are_not_errors(
    gateway: GatewayProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """A client that asks only for probabilities got its answer: the report must not
    count it as a failure (the error rate is a promotion guardrail)."""
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    with ControlClient(gateway.target) as control:

        def iris() -> dict[str, Any]:
            report = control.report("iris")
            [primary] = report["versions"]
            return {**primary, "recorded": report["ledger"]["recorded_answers"]}

        before = iris()
        message = request("iris", {"input": x}, id="only-probabilities")
        message.outputs.add(name="probabilities")
        reply = stub.ModelInfer(message)
        assert [o.name for o in reply.outputs] == ["probabilities"]
        deadline = time.monotonic() + 30
        while (after := iris())["recorded"] <= before["recorded"]:  # recorded in batches
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert after["errors"] == before["errors"]
    assert after["predictions"] == before["predictions"]  # nothing to score
