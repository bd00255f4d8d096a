"""What the ledger's writer makes of a reply (gateway.recording.to_answer): the same
answer from raw and typed outputs, string labels, a reply that does not add up, and the
fast path (to_packed) storing exactly what to_answer stores."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import recording
from gateway.ledger.records import PackedAnswer
from gateway.ledger.store import answer_params
from gateway.recording import OutputRoles, Pending, convert, to_answer, to_packed
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


# -- the fast path (to_packed) stores exactly what to_answer would ------------------------

NUMPY_OF = {"INT64": np.int64, "INT32": np.int32, "FP64": np.float64, "FP32": np.float32}


def stored(convert: Any, item: Pending) -> dict[str, Any] | str:
    """The row the ledger would store, or "failed" (the writer counts any exception raised
    in converting or packing as a failed answer)."""
    try:
        (_, params), _ = answer_params(convert(item))
    except Exception:
        return "failed"
    return params


@st.composite
def replies(draw: st.DrawFn) -> Pending:
    """Replies of every shape the fast path reads and many it must leave to to_answer.
    Half are *tidy* (what the fast path is for, so that it is exercised); the others may
    have other datatypes and shapes, typed contents, an output cut short, a merged reply's
    slice beyond its rows, or an extra first output (which sets the rows)."""
    tidy = draw(st.booleans())

    def pick(good: list[Any], bad: list[Any]) -> Any:
        return draw(st.sampled_from(good if tidy else good + bad))

    rows = draw(st.integers(1 if tidy else 0, 4))
    k = draw(st.integers(1, 3))
    outputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    if draw(st.booleans()):
        embedding_rows = pick([rows], [rows + 1])
        outputs["embedding"] = np.ones((embedding_rows, 3), np.float32)
        datatypes["embedding"] = "FP32"
    label_type = pick(["INT64", "INT32", None], ["FP64"])
    if label_type:
        shape = pick([(rows,), (rows, 1)], [(rows, 2)])
        labels = np.arange(int(np.prod(shape))).reshape(shape)
        outputs["label"] = labels.astype(NUMPY_OF[label_type])
        datatypes["label"] = label_type
    proba_type = pick(["FP64", "FP32", None], ["INT64"])
    if proba_type:
        shape = pick([(rows, k)], [(rows,)])
        values = np.linspace(0, 1, int(np.prod(shape)) or 1)[: int(np.prod(shape))]
        outputs["probabilities"] = values.reshape(shape).astype(NUMPY_OF[proba_type])
        datatypes["probabilities"] = proba_type
    value_type = pick(["FP64", "FP32", None], [])
    if value_type:
        shape = pick([(rows,), (rows, 1)], [(rows, 2)])
        outputs["prediction"] = np.full(shape, 2.5).astype(NUMPY_OF[value_type])
        datatypes["prediction"] = value_type
    raw = pick([True], [False]) or not outputs
    reply_id = draw(st.sampled_from(["", "r1"]))
    response = pb.ModelInferResponse(model_name="m", model_version="1", id=reply_id)
    encode(response.outputs, response.raw_output_contents, outputs, raw, datatypes)
    if "probabilities" in outputs and draw(st.booleans()):
        index = list(outputs).index("probabilities")
        response.outputs[index].parameters["classes"].string_param = json.dumps(
            [f"c{i}" for i in range(k)]
        )
    if not tidy and raw and len(outputs) > 0 and draw(st.booleans()):  # one output cut short
        index = draw(st.integers(0, len(outputs) - 1))
        response.raw_output_contents[index] = response.raw_output_contents[index][:-1]
    classes = draw(st.sampled_from([None, tuple(f"m{i}" for i in range(k))]))
    roles = OutputRoles("label", "prediction", "probabilities", classes)
    row_slice = pick([None, (0, rows), (rows // 2, rows)], [(0, rows + 1), (0, 0)])
    return Pending(
        "m", "1", "shadow", "mine", 1.5, roles, 12.0, response.SerializeToString(),
        row_slice=row_slice,
    )  # fmt: skip


@given(replies())
@settings(max_examples=400, deadline=None)
def test_the_fast_path_stores_what_to_answer_stores(item: Pending) -> None:
    slow = stored(to_answer, item)
    packed = to_packed(item)
    if packed is not None:  # when the fast path takes a reply, its row is the same
        assert stored(lambda _: packed, item) == slow
    assert stored(convert, item) == slow


def test_the_common_reply_takes_the_fast_path() -> None:
    for rows in (1, 1000):
        labels = np.arange(rows, dtype=np.int64) % 2
        proba = np.tile([0.25, 0.75], (rows, 1))
        item = pending(reply(labels, proba, True))
        packed = to_packed(item)
        assert isinstance(packed, PackedAnswer)
        assert stored(lambda _, p=packed: p, item) == stored(to_answer, item)
        assert packed.labels == json.dumps([str(v) for v in labels])
    assert to_packed(pending(reply(labels, proba, False))) is None  # typed: to_answer's


def test_labels_beyond_the_remembered_ones_are_stored_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path remembers the text of the first labels it sees; labels past that
    limit (an integer output that is really a value), negative or huge, store the same."""
    monkeypatch.setattr(recording, "_LABEL_TEXTS", recording._LabelTexts())
    monkeypatch.setattr(recording._LabelTexts, "LIMIT", 10)
    for labels in (np.arange(-5, 25), np.array([2**62, -(2**62), 7, 7])):
        proba = np.tile([0.25, 0.75], (len(labels), 1))
        item = pending(reply(labels.astype(np.int64), proba, True))
        packed = to_packed(item)
        assert isinstance(packed, PackedAnswer)
        assert packed.labels == json.dumps([str(v) for v in labels])
        assert stored(lambda _, p=packed: p, item) == stored(to_answer, item)
    assert len(recording._LABEL_TEXTS) == 10
