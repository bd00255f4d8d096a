"""What the ledger's writer makes of a reply (gateway.recording.to_answer): the same
answer from raw and typed outputs, string labels, and a reply that does not add up."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gateway.recording import OutputRoles, Pending, to_answer
from greenroom_client.tensors import encode
from greenroom_proto.inference import grpc_service_pb2 as pb

ROLES = OutputRoles("label", None, "probabilities", None)


def reply(labels: np.ndarray, proba: np.ndarray, raw: bool) -> bytes:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r1")
    encode(
        response.outputs,
        response.raw_output_contents,
        {"label": labels, "probabilities": proba},
        raw,
        {"label": "BYTES" if labels.dtype == object else "INT64", "probabilities": "FP64"},
    )
    response.outputs[1].parameters["classes"].string_param = '["no", "yes"]'
    return response.SerializeToString()


def pending(data: bytes) -> Pending:
    return Pending("m", "1", "primary", "", 1.5, ROLES, time.time(), data)


def test_raw_and_typed_replies_give_the_same_answer() -> None:
    labels = np.array([1, 0, 1], dtype=np.int64)
    proba = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    raw, typed = (to_answer(pending(reply(labels, proba, r))) for r in (True, False))
    assert raw.labels == typed.labels == ("1", "0", "1")
    assert raw.classes == typed.classes == ("no", "yes")
    assert raw.rows == typed.rows == 3 and raw.request_id == "r1"
    assert raw.probabilities is not None and typed.probabilities is not None
    np.testing.assert_array_equal(raw.probabilities, typed.probabilities)
    np.testing.assert_array_equal(raw.probabilities, proba)


def test_string_labels() -> None:
    labels = np.array([b"cat", "h\u00fcnd".encode()], dtype=object)
    answer = to_answer(pending(reply(labels, np.array([[0.7, 0.3], [0.1, 0.9]]), True)))
    assert answer.labels == ("cat", "h\u00fcnd")


def test_a_raw_output_that_does_not_fit_its_shape_fails() -> None:
    response = pb.ModelInferResponse.FromString(
        reply(np.array([1, 0], dtype=np.int64), np.array([[0.5, 0.5], [0.5, 0.5]]), True)
    )
    response.raw_output_contents[1] = response.raw_output_contents[1][:-8]  # one value short
    with pytest.raises(ValueError):
        to_answer(pending(response.SerializeToString()))
