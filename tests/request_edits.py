"""Requests for the tests of the plain path (runners.plain) and the in-process lane's
fused path: building one, and edits that take a valid raw request out of the plain case,
each a fault the general path refuses or a request it answers another way (``common``:
the request must have at least two raw inputs, the first of shape [rows, 3])."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from greenroom_client.tensors import encode
from greenroom_proto.inference import grpc_service_pb2 as pb

Edit = Callable[[pb.ModelInferRequest], None]


def request(
    name: str, arrays: dict[str, np.ndarray], *, raw: bool = True, rid: str = ""
) -> pb.ModelInferRequest:
    made = pb.ModelInferRequest(model_name=name, id=rid)
    encode(made.inputs, made.raw_input_contents, arrays, raw)
    return made


def _raw_and_typed(r: pb.ModelInferRequest) -> None:
    r.inputs[0].contents.fp64_contents.extend([1.0] * 6)


def _datatype(r: pb.ModelInferRequest) -> None:
    r.inputs[0].datatype = "INT16"


def _unknown(r: pb.ModelInferRequest) -> None:
    r.inputs[0].name = "z"


def _twice(r: pb.ModelInferRequest) -> None:
    r.inputs[1].name = r.inputs[0].name


def _missing(r: pb.ModelInferRequest) -> None:
    del r.inputs[-1]
    del r.raw_input_contents[-1]


def _short(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[0] = r.raw_input_contents[0][:-4]


def _negative(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[:] = [-2, 3]


def _rank(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[:] = [6]


def _version(r: pb.ModelInferRequest) -> None:
    r.model_version = "2"


def common() -> dict[str, Edit]:
    return {f.__name__.lstrip("_"): f for f in (
        _raw_and_typed, _datatype, _unknown, _twice, _missing, _short, _negative, _rank,
        _version,
    )}  # fmt: skip
