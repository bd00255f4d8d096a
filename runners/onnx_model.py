"""ONNX models (``model.onnx``) run with ONNX Runtime on the CPU.

Any ONNX file works, whatever exported it (PyTorch, skl2onnx, LightGBM, XGBoost, R,
Java...): names, datatypes and shapes come from the graph itself (``tensor(float)`` is
FP32 and so on; symbolic or unknown dimensions are -1). Outputs that are not tensors,
such as the ``seq(map(...))`` that skl2onnx's ZipMap produces, cannot travel in V2 and are
left out with a warning; export classifiers with ``options={id(clf): {"zipmap": False}}``
to get a probabilities tensor instead.

model.yaml ``inputs``/``outputs`` rename graph tensors in order (``runners.model.bind``).
An input declared with another datatype than the graph's (FP64 for a float graph, say)
is cast to the graph's type before the run, so clients may send what they have.
``runner.threads`` sets ONNX Runtime's intra-op threads; inter-op is 1 (one graph per
call; up to ``runner.threads`` calls run in parallel). A graph is taken to be row-wise:
when every input and output has -1 as its first dimension, concurrent requests are
batched (runners.batching; model.yaml ``runner.max_batch_size: 0`` if it is not).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog

from greenroom_client.tensors import DTYPES, TensorSpec
from runners.config import ConfigError, ModelConfig
from runners.model import Arrays, Binding, Model, bind

log = structlog.get_logger(__name__)

# ONNX Runtime type string -> V2 datatype.
_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _shape(dims: Sequence[Any]) -> tuple[int, ...]:
    return tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in dims)


def _spec(node: Any) -> TensorSpec | None:
    """A graph input/output as a TensorSpec; None when V2 cannot carry its type."""
    datatype = _DATATYPES.get(node.type)
    return None if datatype is None else TensorSpec(node.name, datatype, _shape(node.shape))


def _graph_inputs(session: Any, where: str) -> list[TensorSpec]:
    specs = []
    for node in session.get_inputs():
        spec = _spec(node)
        if spec is None:
            raise ConfigError(f"{where}: input '{node.name}' has type {node.type}, not a tensor")
        specs.append(spec)
    return specs


def _graph_outputs(session: Any, where: str) -> list[TensorSpec]:
    specs = []
    for node in session.get_outputs():
        spec = _spec(node)
        if spec is None:
            log.warning(
                "onnx output left out: V2 carries only tensors",
                artifact=where,
                output=node.name,
                type=node.type,
                hint="export classifiers with zipmap disabled",
            )
            continue
        specs.append(spec)
    if not specs:
        raise ConfigError(f"{where}: the graph has no tensor outputs")
    return specs


def _as_strings(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """BYTES arrive as bytes objects; ONNX Runtime wants str for tensor(string)."""
    flat = [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)


class OnnxModel(Model):
    """An ONNX Runtime session; requested outputs only are computed."""

    platform = "onnxruntime"
    row_wise = True

    def __init__(
        self, name: str, version: str, inputs: list[Binding], outputs: list[Binding], session: Any
    ):
        super().__init__(name, version, inputs, outputs)
        self.session = session  # read by gateway.onnx_fused, as are feeds and fetches
        graph_types = {node.name: node.type for node in session.get_inputs()}
        # served input name -> (graph name, numpy dtype the graph wants; None for strings)
        self.feeds = {b.spec.name: (b.native, _numpy_dtype(graph_types[b.native])) for b in inputs}
        self.fetches = {b.spec.name: b.native for b in outputs}

    @classmethod
    def load(cls, artifact: Path, name: str, version: str, config: ModelConfig) -> OnnxModel:
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.runner.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            str(artifact), sess_options=options, providers=["CPUExecutionProvider"]
        )
        where = str(artifact)
        yaml = str(artifact.parent.parent / "model.yaml")
        inputs = bind(_graph_inputs(session, where), config.inputs, "inputs", yaml)
        outputs = bind(_graph_outputs(session, where), config.outputs, "outputs", yaml)
        return cls(name, version, inputs, outputs, session)

    def predict(self, inputs: Arrays, outputs: Sequence[str] | None = None) -> Arrays:
        feed = {}
        for name, array in inputs.items():
            native, dtype = self.feeds[name]
            feed[native] = _as_strings(array) if dtype is None else array.astype(dtype, copy=False)
        names = list(self.fetches) if outputs is None else list(outputs)
        results = self.session.run([self.fetches[name] for name in names], feed)
        return dict(zip(names, results, strict=True))


def _numpy_dtype(onnx_type: str) -> np.dtype[Any] | None:
    datatype = _DATATYPES[onnx_type]
    return None if datatype == "BYTES" else DTYPES[datatype]
