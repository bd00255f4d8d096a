"""Answers as ledger rows: which output is the label, the value, the probabilities.

By default a classifier's ``label`` output is the predicted class, ``probabilities``
its scores (columns in the order of ``classes`` when known) and a regressor's
``prediction`` its value; model.yaml may name other outputs. Conversion runs after the
client has its answer, never on the way to it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from gateway.ledger import Ledger, Prediction
from greenroom_client.tensors import TensorSpec, decode
from greenroom_proto.inference import grpc_service_pb2 as pb

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutputRoles:
    label: str | None
    value: str | None
    probabilities: str | None
    classes: tuple[str, ...] | None

    @classmethod
    def infer(
        cls,
        outputs: Sequence[TensorSpec],
        *,
        label: str | None = None,
        value: str | None = None,
        probabilities: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> OutputRoles:
        names = {spec.name for spec in outputs}

        def pick(explicit: str | None, default: str) -> str | None:
            if explicit is not None:
                return explicit
            return default if default in names else None

        return cls(
            pick(label, "label"),
            pick(value, "prediction"),
            pick(probabilities, "probabilities"),
            None if classes is None else tuple(classes),
        )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _column(arrays: dict[str, npt.NDArray[Any]], name: str | None, rows: int) -> list[Any] | None:
    if name is None or name not in arrays:
        return None
    array = arrays[name]
    if array.ndim == 0 or array.shape[0] != rows:
        return None
    return list(array.reshape(rows, -1)[:, 0]) if array.ndim > 1 else list(array)


def _classes_of(response: pb.ModelInferResponse, roles: OutputRoles) -> tuple[str, ...] | None:
    """model.yaml's classes, else the ``classes`` parameter a runner puts on probabilities."""
    if roles.classes is not None or roles.probabilities is None:
        return roles.classes
    for tensor in response.outputs:
        if tensor.name == roles.probabilities and "classes" in tensor.parameters:
            return tuple(json.loads(tensor.parameters["classes"].string_param))
    return None


def rows_from_reply(
    reply: bytes, *, model: str, version: str, role: str, latency_ms: float, roles: OutputRoles
) -> list[Prediction]:
    """One ledger row per answered row of a serialized ModelInferResponse."""
    response = pb.ModelInferResponse.FromString(reply)
    arrays = decode(response.outputs, response.raw_output_contents)
    first = next(iter(arrays.values()), None)
    rows = int(first.shape[0]) if first is not None and first.ndim > 0 else 1
    labels = _column(arrays, roles.label, rows)
    values = _column(arrays, roles.value, rows)
    proba = arrays.get(roles.probabilities) if roles.probabilities else None
    classes = _classes_of(response, roles)
    now = time.time()
    out = []
    for i in range(rows):
        value = None if values is None else float(values[i])
        out.append(
            Prediction(
                request_id=response.id,
                row=i,
                model=model,
                version=version,
                role=role,  # type: ignore[arg-type]
                label=None if labels is None else _text(labels[i]),
                value=None if value is None or math.isnan(value) else value,
                probabilities=None if proba is None else tuple(np.asarray(proba[i], float).ravel()),
                classes=classes,
                latency_ms=latency_ms,
                status="OK",
                created_at=now,
            )
        )
    return out


def rows_from_failure(
    request: pb.ModelInferRequest,
    *,
    request_id: str,
    role: str,
    latency_ms: float,
    status: str,
    version: str,
) -> list[Prediction]:
    """A failed call still leaves its rows in the ledger: the error rate needs them."""
    shapes = [tuple(t.shape) for t in request.inputs if t.shape]
    rows = int(shapes[0][0]) if shapes and shapes[0] and shapes[0][0] > 0 else 1
    now = time.time()
    return [
        Prediction(
            request_id=request_id,
            row=i,
            model=request.model_name,
            version=version,
            role=role,  # type: ignore[arg-type]
            label=None,
            value=None,
            probabilities=None,
            classes=None,
            latency_ms=latency_ms,
            status=status,
            created_at=now,
        )
        for i in range(min(rows, 100_000))
    ]


class Recorder:
    """Turns answers into ledger rows after the client has its answer.

    Conversions are queued and run in one loop callback per tick, so a burst of answers
    costs one scheduling, and no conversion runs before the answer it records is returned.
    """

    def __init__(self, ledger: Ledger, roles: Callable[[str, str], OutputRoles]) -> None:
        self.ledger = ledger
        self.roles = roles
        self._pending: list[Callable[[], list[Prediction]]] = []
        self.failed_conversions = 0

    def _defer(self, convert: Callable[[], list[Prediction]]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._drain)
        self._pending.append(convert)

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        rows: list[Prediction] = []
        for convert in pending:
            try:
                rows.extend(convert())
            except Exception:  # a malformed answer must not stop the others being recorded
                self.failed_conversions += 1
                log.exception("could not record an answer")
        self.ledger.record(rows)

    def answered(
        self, reply: bytes, model: str, version: str, role: str, latency_ms: float
    ) -> None:
        roles = self.roles(model, version)
        self._defer(
            lambda: rows_from_reply(
                reply, model=model, version=version, role=role, latency_ms=latency_ms, roles=roles
            )
        )

    def failed(
        self,
        request: pb.ModelInferRequest,
        *,
        request_id: str,
        version: str,
        role: str,
        latency_ms: float,
        status: str,
    ) -> None:
        self._defer(
            lambda: rows_from_failure(
                request,
                request_id=request_id,
                role=role,
                latency_ms=latency_ms,
                status=status,
                version=version,
            )
        )
