"""The plain request and answer, straight between raw bytes and arrays.

The general answer path (``runners.server.InferenceServicer``) checks a request against
the signature, decodes it, and after the model has answered casts the answer to the
signature and encodes it into a response message: each step a handful of Python calls
that a small model's answer pays on every request, at a few microseconds apiece in a loop
and at two to three times that in a server sharing its cores. Most requests are the plain
case: every input in raw contents with the signature's datatype and a shape it allows,
all outputs wanted. For those, ``PlainPath.arrays`` reads the raw bytes as arrays, and
``PlainPath.response`` writes an answer whose outputs already have the signature's
datatypes as the response's bytes. The shapes callers send repeat, so what a shape needs
(its byte length, an output's encoded tensor entry) is worked out once per shape.

Both steps answer or decline, never fail: anything else returns None and the caller takes
the general step, which gives the authoritative answer or error. What they give is the
general path's, array for array and byte for byte (tests/test_plain.py compares them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greenroom_client.signature import shape_matches
from greenroom_client.tensors import DTYPES, TensorSpec
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.model import Arrays
from runners.protowire import length_delimited

# Raw BOOL and BYTES need the general path's element checks.
PLAIN_DATATYPES = frozenset(DTYPES) - {"BOOL", "BYTES"}
# Shapes remembered per tensor at most (then it starts over), as SignatureCheck does.
MAX_SHAPES = 256
_ID, _OUTPUTS, _RAW_OUTPUTS = 3, 5, 6  # ModelInferResponse's field numbers


@dataclass(slots=True)
class PlainInput:
    """One input of the signature, as the plain case takes it."""

    datatype: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: dict[tuple[int, ...], int] = field(default_factory=dict)  # by accepted shape

    def length(self, shape: tuple[int, ...]) -> int | None:
        """The raw length ``shape`` needs, or None if the signature refuses the shape."""
        known = self.nbytes.get(shape)
        if known is not None:
            return known
        if not shape_matches(shape, self.shape) or min(shape, default=0) < 0:
            return None
        if len(self.nbytes) >= MAX_SHAPES:
            self.nbytes.clear()
        length = self.nbytes[shape] = math.prod(shape) * self.dtype.itemsize
        return length


@dataclass(slots=True)
class PlainOutput:
    """One output of the signature, and its encoded tensor entries by shape."""

    name: str
    datatype: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    parameters: dict[str, str] = field(default_factory=dict)  # string parameters, as given
    encoded: dict[tuple[int, ...], bytes] = field(default_factory=dict)  # by answered shape

    def header(self, shape: tuple[int, ...]) -> bytes | None:
        """The response's encoded tensor entry for ``shape``; None if the signature
        refuses it (a model bug the general path reports)."""
        known = self.encoded.get(shape)
        if known is not None:
            return known
        if not shape_matches(shape, self.shape):
            return None
        tensor = pb.ModelInferResponse.InferOutputTensor(
            name=self.name, datatype=self.datatype, shape=shape
        )
        for key, text in self.parameters.items():
            tensor.parameters[key].string_param = text
        if len(self.encoded) >= MAX_SHAPES:
            self.encoded.clear()
        header = self.encoded[shape] = length_delimited(_OUTPUTS, tensor.SerializeToString())
        return header


class PlainPath:
    """The plain case of one model version's signature, for a runner's answer path."""

    def __init__(
        self, name: str, version: str, inputs: dict[str, PlainInput], outputs: list[PlainOutput]
    ) -> None:
        self._inputs = inputs
        self.outputs = outputs
        self.names = [out.name for out in outputs]
        # model_name and model_version, a response's first two fields
        self._head = pb.ModelInferResponse(
            model_name=name, model_version=version
        ).SerializeToString()

    @classmethod
    def of(
        cls,
        name: str,
        version: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        parameters: Mapping[str, Mapping[str, str]],
    ) -> PlainPath | None:
        """None when no request can be plain: an input the general path checks element by
        element, or a BYTES output. ``parameters``: string parameters by output name."""
        if any(spec.datatype not in PLAIN_DATATYPES for spec in inputs):
            return None
        if any(spec.datatype == "BYTES" for spec in outputs):
            return None
        plain_inputs = {
            spec.name: PlainInput(spec.datatype, DTYPES[spec.datatype], spec.shape)
            for spec in inputs
        }
        plain_outputs = [
            PlainOutput(
                spec.name,
                spec.datatype,
                DTYPES[spec.datatype],
                spec.shape,
                dict(parameters.get(spec.name, {})),
            )
            for spec in outputs
        ]
        return cls(name, version, plain_inputs, plain_outputs)

    def arrays(self, request: pb.ModelInferRequest) -> Arrays | None:
        """The request's inputs as the general path decodes them, or None if it is not
        plain (requested outputs are the caller's to check)."""
        raws, tensors = request.raw_input_contents, request.inputs
        # No raw contents at all (a model without inputs): the general path answers typed.
        if not raws or len(raws) != len(self._inputs) or len(tensors) != len(raws):
            return None
        arrays: Arrays = {}
        for tensor, raw in zip(tensors, raws, strict=True):
            spec = self._inputs.get(tensor.name)
            if spec is None or tensor.datatype != spec.datatype or tensor.HasField("contents"):
                return None
            shape = tuple(tensor.shape[:])  # [:] first: twice as fast from upb
            if spec.length(shape) != len(raw):
                return None
            try:  # [0, 2**62] holds no element, and numpy cannot make it
                arrays[tensor.name] = np.frombuffer(raw, dtype=spec.dtype).reshape(shape)
            except ValueError:
                return None
        if len(arrays) != len(self._inputs):  # a name sent twice
            return None
        return arrays

    def response(self, request_id: str, answer: Arrays) -> bytes | None:
        """The serialized response with every output, or None to encode it the general way
        (a missing output, not an array, a shape the signature refuses, no cast)."""
        try:
            arrays = [answer[name] for name in self.names]
        except KeyError:
            return None
        return self.encode(request_id, arrays)

    def encode(self, request_id: str, arrays: Sequence[Any]) -> bytes | None:
        """``response`` for the outputs' arrays in signature order."""
        parts = [self._head]
        if request_id:
            parts.append(length_delimited(_ID, request_id.encode()))
        raws = []
        for out, given in zip(self.outputs, arrays, strict=True):
            if not isinstance(given, np.ndarray):
                return None
            # A subclass as the general path takes it: a masked array's data, unfilled.
            array = np.asarray(given)
            header = out.header(array.shape)
            if header is None:
                return None
            parts.append(header)
            try:  # cast as the general path casts (a no-op for the right datatype)
                raws.append(array.astype(out.dtype, copy=False).tobytes())
            except (TypeError, ValueError):
                return None
        parts.extend(length_delimited(_RAW_OUTPUTS, raw) for raw in raws)
        return b"".join(parts)
