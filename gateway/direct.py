"""Calling one version with a table of rows, outside live traffic: validation and backtests.

These calls go straight to the version's backend (not through the servicer), so they are
never recorded as answers and never shadowed: a backtest must not count as traffic. The
model must take its features as one input tensor, ``rows x features`` (or ``rows`` for a
single feature), which is what scikit-learn and converted ONNX models take.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.prediction import Predict, Prediction
from gateway.recording import OutputRoles
from gateway.replicas import Backend
from gateway.router import signature_of
from greenroom_client.errors import FailedPrecondition, InvalidArgument
from greenroom_client.tensors import DTYPES, decode, encode
from greenroom_proto.inference import grpc_service_pb2 as pb

# Rows per call: big tables go in slices so no message nears the size limit.
CHUNK_ROWS = 1024


def _request(backend: Backend, rows: npt.NDArray[Any]) -> bytes:
    signature = signature_of(backend)
    if len(signature.inputs) != 1:
        names = [spec.name for spec in signature.inputs]
        raise FailedPrecondition(
            f"{backend.where} takes {len(names)} inputs {names}; "
            "only one-input models can be called with a table of rows"
        )
    spec = signature.inputs[0]
    array = rows if len(spec.shape) > 1 else rows.reshape(len(rows))
    if spec.datatype == "BYTES":
        array = np.vectorize(str, otypes=[object])(array)
    elif spec.datatype in DTYPES:
        try:
            array = np.asarray(array, dtype=DTYPES[spec.datatype])
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"rows do not fit {spec.datatype} input: {exc}") from None
    request = pb.ModelInferRequest(
        model_name=backend.entry.model, model_version=backend.entry.version
    )
    encode(request.inputs, request.raw_input_contents, {spec.name: array}, raw=True,
           datatypes={spec.name: spec.datatype})  # fmt: skip
    return request.SerializeToString()


def _answers(reply: bytes, roles: OutputRoles, rows: int) -> tuple[list[str] | None, Any]:
    response = pb.ModelInferResponse.FromString(reply)
    arrays = decode(response.outputs, response.raw_output_contents)
    labels = values = None
    if roles.label and roles.label in arrays:
        raw = arrays[roles.label].reshape(rows, -1)[:, 0]
        labels = [v.decode() if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    if roles.value and roles.value in arrays:
        values = np.asarray(arrays[roles.value], dtype=np.float64).reshape(rows, -1)[:, 0]
    if labels is None and values is None:
        raise FailedPrecondition("the model answers neither a 'label' nor a 'prediction' output")
    return labels, values


def predictor(backend: Backend, roles: OutputRoles, timeout: float) -> Predict:
    """A ``Predict`` for one version: slices of at most CHUNK_ROWS, answers joined."""

    async def predict(rows: npt.NDArray[Any]) -> Prediction:
        table = rows.reshape(len(rows), -1) if rows.ndim != 2 else rows
        began = time.perf_counter()
        labels: list[str] = []
        values: list[npt.NDArray[np.float64]] = []
        for start in range(0, len(table), CHUNK_ROWS):
            chunk = table[start : start + CHUNK_ROWS]
            reply = await backend.infer(_request(backend, chunk), timeout)
            chunk_labels, chunk_values = _answers(reply, roles, len(chunk))
            labels.extend(chunk_labels or [])
            if chunk_values is not None:
                values.append(chunk_values)
        latency = (time.perf_counter() - began) * 1e3
        return Prediction(
            labels=labels if roles.label and labels else None,
            values=np.concatenate(values) if values else None,
            latency_ms=latency,
        )

    return predict
