"""The plain ONNX request answered in one step: raw tensors in, ONNX Runtime, raw tensors out.

The general answer path (``runners.server.InferenceServicer``) checks the request against
the signature, decodes it into arrays, lets the model check them, runs the batcher, casts
the answer to the signature and encodes it: each step a handful of Python calls, which the
in-process lane (gateway.inprocess) pays on every request at a few microseconds apiece,
and at two to four times that in a server sharing its cores. Most requests to an ONNX
model are the plain case (runners.plain): every input in raw contents with exactly the
graph's datatype, a shape the signature allows, all outputs wanted. For those this module
goes straight from the raw bytes to ONNX Runtime's feed and from its results to the
response's bytes, with ``runners.plain.PlainPath``'s reading and writing.

It answers or declines, never fails: anything outside the plain case (typed contents, a
cast before the run, a name it does not know, a length that does not fit, an error from
ONNX Runtime, a result unlike the signature) returns None, and the caller takes the
general path, which gives the authoritative answer or error. Its answer is the general
path's, byte for byte (tests/test_onnx_fused.py compares them).

Only the inline lane uses it, where calls never overlap: it bypasses the batcher, which
has nothing to merge there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenroom_client.tensors import DTYPES
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.model import Model
from runners.plain import PlainPath

if TYPE_CHECKING:  # onnxruntime is loaded by the first ONNX model, not by the gateway
    from runners.onnx_model import OnnxModel


class FusedOnnx:
    """The plain case of one ONNX model version (see the module docstring)."""

    def __init__(self, model: OnnxModel, plain: PlainPath) -> None:
        self.name, self.version = model.name, model.version
        self._run = model.session.run
        self._plain = plain
        self._natives = {spec.name: model.feeds[spec.name][0] for spec in model.inputs}
        self._fetches = [model.fetches[name] for name in plain.names]

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
        if any(model.feeds[spec.name][1] != DTYPES[spec.datatype] for spec in model.inputs):
            return None
        plain = PlainPath.of(model.name, model.version, model.inputs, model.outputs, {})
        return None if plain is None else cls(model, plain)

    def answer(self, request: pb.ModelInferRequest) -> bytes | None:
        """The serialized response, or None to take the general path."""
        if request.outputs or request.model_name != self.name:
            return None
        if request.model_version not in ("", self.version):
            return None
        try:
            arrays = self._plain.arrays(request)
            if arrays is None:
                return None
            natives = self._natives
            results = self._run(self._fetches, {natives[n]: a for n, a in arrays.items()})
            return self._plain.encode(request.id, results)
        except Exception:  # ONNX Runtime's or numpy's: the general path reports it
            return None
