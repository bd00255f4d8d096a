"""The cached signature check the gateway and runners share (greenroom_client.signature)."""

from __future__ import annotations

import pytest

from greenroom_client.errors import InvalidArgument, InvalidInput
from greenroom_client.signature import MAX_LAYOUTS, SignatureCheck
from greenroom_client.tensors import TensorSpec

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
