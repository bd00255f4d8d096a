"""The cached signature check the gateway and runners share (greenroom_client.signature),
and the decoding of typed contents it guards."""

from __future__ import annotations

import re

import pytest

from greenroom_client.errors import InvalidArgument, InvalidInput
from greenroom_client.signature import MAX_LAYOUTS, SignatureCheck
from greenroom_client.tensors import TensorSpec, decode
from greenroom_proto.inference import grpc_service_pb2 as pb

INPUTS = [TensorSpec("x", "FP32", (-1, 4))]
OUTPUTS = [TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP64", (-1, 3))]


def test_a_layout_that_fails_fails_every_time() -> None:
    check = SignatureCheck(INPUTS, OUTPUTS)
    check([TensorSpec("x", "FP32", (2, 4))], [])
    for _ in range(2):
        with pytest.raises(InvalidInput, match="shape \\[2, 5\\] does not match"):
            check([TensorSpec("x", "FP32", (2, 5))], [])
        with pytest.raises(InvalidInput, match="datatype FP64"):
            check([TensorSpec("x", "FP64", (2, 4))], [])
        with pytest.raises(InvalidArgument, match="output 'score'"):
            check([TensorSpec("x", "FP32", (2, 4))], ["score"])
    check([TensorSpec("x", "FP32", (2, 4))], ["label"])


def test_many_layouts_stay_bounded_and_correct() -> None:
    check = SignatureCheck(INPUTS, OUTPUTS)
    for rows in range(1, MAX_LAYOUTS + 10):
        check([TensorSpec("x", "FP32", (rows, 4))], [])
    assert len(check._passed) <= MAX_LAYOUTS
    with pytest.raises(InvalidInput, match="is missing"):
        check([], [])


@pytest.mark.parametrize(
    ("datatype", "field", "values", "words"),
    [
        ("INT8", "int_contents", [1000, 200], "value 1000 is out of range for INT8 (-128..127)"),
        ("INT16", "int_contents", [5, -40000], "value -40000 is out of range for INT16"),
        ("UINT8", "uint_contents", [255, 256], "value 256 is out of range for UINT8 (0..255)"),
        ("UINT16", "uint_contents", [70000, 1], "value 70000 is out of range for UINT16"),
    ],
)
def test_typed_narrow_integers_out_of_range_are_refused_not_wrapped(
    datatype: str, field: str, values: list[int], words: str
) -> None:
    """INT8/16 and UINT8/16 travel in 32-bit fields: 1000 as INT8 would wrap to -24."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend(values)
    with pytest.raises(InvalidInput, match=re.escape(words)):
        decode([tensor], [])
    getattr(tensor.contents, field)[:] = [0, 1]
    assert decode([tensor], [])["x"].tolist() == [0, 1]
