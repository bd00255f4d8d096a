"""The plain ONNX request answered in one step: raw tensors in, ONNX Runtime, raw tensors out.

The general answer path (``runners.server.InferenceServicer``) checks the request against
the signature, decodes it into arrays, lets the model check them, runs the batcher, casts
the answer to the signature and encodes it: each step a handful of Python calls, which the
in-process lane (gateway.inprocess) pays on every request at a few microseconds apiece,
and at two to four times that in a server sharing its cores. Most requests to an ONNX
model are the plain case: every input in raw contents with exactly the graph's datatype,
a shape the signature allows, all outputs wanted. For those this module goes straight from
the raw bytes to ONNX Runtime's feed and from its results to the response's bytes. The
shapes a caller sends repeat, so what a shape needs (its byte length, an output tensor's
encoded header) is worked out once per shape.

It answers or declines, never fails: anything outside the plain case (typed contents, a
cast, a name it does not know, a length that does not fit, an error from ONNX Runtime, a
result unlike the signature) returns None, and the caller takes the general path, which
gives the authoritative answer or error. Its answer is the general path's, byte for byte
(tests/test_onnx_fused.py compares them).

Only the inline lane uses it, where calls never overlap: it bypasses the batcher, which
has nothing to merge there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.wire import length_delimited
from greenroom_client.signature import shape_matches
from greenroom_client.tensors import DTYPES
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.model import Model

if TYPE_CHECKING:  # onnxruntime is loaded by the first ONNX model, not by the gateway
    from runners.onnx_model import OnnxModel

# Raw BOOL and BYTES need the general path's element checks.
_PLAIN = frozenset(DTYPES) - {"BOOL", "BYTES"}
# Shapes remembered per tensor at most (then it starts over), as SignatureCheck does.
MAX_SHAPES = 256
_OUTPUTS, _RAW_OUTPUTS = 5, 6  # ModelInferResponse's field numbers


@dataclass(slots=True)
class _Input:
    native: str  # the graph's name for it
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
class _Output:
    name: str
    datatype: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
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
        if len(self.encoded) >= MAX_SHAPES:
            self.encoded.clear()
        header = self.encoded[shape] = length_delimited(_OUTPUTS, tensor.SerializeToString())
        return header


class FusedOnnx:
    """The plain case of one ONNX model version (see the module docstring)."""

    def __init__(self, model: OnnxModel, inputs: dict[str, _Input], outputs: list[_Output]):
        self.name, self.version = model.name, model.version
        self._run = model.session.run
        self._inputs = inputs
        self._outputs = outputs
        self._fetches = [model.fetches[out.name] for out in outputs]
        # model_name and model_version, the response's first two fields
        self._head = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version
        ).SerializeToString()

    @classmethod
    def of(cls, model: Model) -> FusedOnnx | None:
        """The fused path for ``model``, or None when its requests never fit it: not
        ONNX, a check of its own, output parameters, or a tensor that needs a cast or a
        datatype the general path checks element by element."""
        from runners.onnx_model import OnnxModel  # noqa: PLC0415 (see the import above)

        if not isinstance(model, OnnxModel) or type(model).check is not Model.check:
            return None
        if model.output_parameters:
            return None
        inputs: dict[str, _Input] = {}
        for spec in model.inputs:
            native, dtype = model.feeds[spec.name]
            if spec.datatype not in _PLAIN or dtype != DTYPES[spec.datatype]:
                return None
            inputs[spec.name] = _Input(native, spec.datatype, DTYPES[spec.datatype], spec.shape)
        outputs = []
        for spec in model.outputs:
            if spec.datatype == "BYTES":
                return None
            outputs.append(_Output(spec.name, spec.datatype, DTYPES[spec.datatype], spec.shape))
        return cls(model, inputs, outputs)

    def answer(self, request: pb.ModelInferRequest) -> bytes | None:
        """The serialized response, or None to take the general path."""
        if request.outputs or request.model_name != self.name:
            return None
        if request.model_version not in ("", self.version):
            return None
        try:
            feed = self._feed(request)
            if feed is None:
                return None
            results = self._run(self._fetches, feed)
        except Exception:  # ONNX Runtime's or numpy's: the general path reports it
            return None
        parts = [self._head]
        if request.id:
            parts.append(length_delimited(3, request.id.encode()))
        for out, array in zip(self._outputs, results, strict=True):
            header = out.header(array.shape) if array.dtype == out.dtype else None
            if header is None:
                return None
            parts.append(header)
        parts.extend(length_delimited(_RAW_OUTPUTS, array.tobytes()) for array in results)
        return b"".join(parts)

    def _feed(self, request: pb.ModelInferRequest) -> dict[str, Any] | None:
        raws, tensors = request.raw_input_contents, request.inputs
        # No raw contents at all (a model without inputs): the general path answers typed.
        if not raws or len(raws) != len(self._inputs) or len(tensors) != len(raws):
            return None
        feed: dict[str, Any] = {}
        for tensor, raw in zip(tensors, raws, strict=True):
            spec = self._inputs.get(tensor.name)
            if spec is None or tensor.datatype != spec.datatype or tensor.HasField("contents"):
                return None
            shape = tuple(tensor.shape[:])  # [:] first: twice as fast from upb
            if spec.length(shape) != len(raw):
                return None
            feed[spec.native] = np.frombuffer(raw, dtype=spec.dtype).reshape(shape)
        if len(feed) != len(self._inputs):  # a name sent twice
            return None
        return feed
