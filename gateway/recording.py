"""Answers as ledger records: which output is the label, the value, the probabilities.

By default a classifier's ``label`` output is the predicted class, ``probabilities`` its
scores (columns in the order of model.yaml's ``classes``, or of the ``classes``
parameter a runner puts on that output) and a regressor's ``prediction`` its value.

The event loop only queues the serialized reply (``Pending``, O(1)); the ledger's writer
(a process of its own by default, else a thread) turns it into an ``Answer`` with
``to_answer``, so recording a 1,000-row answer costs the answer path nothing but an append.
"""

from __future__ import annotations

import array
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gateway.ledger import Answer, Ledger, Role
from gateway.ledger.records import InputSample, PackedAnswer
from greenroom_client.tensors import DTYPES, TensorSpec, decode
from greenroom_proto.inference import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from gateway.metrics import Metrics

# The status of a request whose client cancelled it before the answer came (not by its
# deadline: that is DEADLINE_EXCEEDED): recorded like a failure, but left out of a
# version's evaluation (gateway.evaluation), since it says nothing about the version.
CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class OutputRoles:
    label: str | None
    value: str | None
    probabilities: str | None
    classes: tuple[str, ...] | None

    @classmethod
    def infer(
        cls, outputs: Sequence[TensorSpec], classes: Sequence[str] | None = None
    ) -> OutputRoles:
        names = {spec.name for spec in outputs}

        def present(name: str) -> str | None:
            return name if name in names else None

        return cls(
            present("label"),
            present("prediction"),
            present("probabilities"),
            None if classes is None else tuple(classes),
        )


@dataclass(slots=True)
class Pending:
    """What the answer path hands the ledger: the reply as it came, and its context.
    Nothing changes it after it is queued; it is not frozen because the event loop makes
    one per answer, and a frozen dataclass's ``__init__`` pays an ``object.__setattr__``
    call per field (1.2 against 0.3 µs for these eleven)."""

    model: str
    version: str
    role: Role
    request_id: str
    latency_ms: float
    roles: OutputRoles
    created_at: float
    reply: bytes | None = None  # None: the call failed
    status: str = "OK"
    request_rows: int = 1  # for a failed call, the rows the request had
    # For a reply that answered several requests merged (shadow copies): this one's rows.
    row_slice: tuple[int, int] | None = None

    def __reduce__(self) -> tuple[type[Pending], tuple[Any, ...]]:
        """Pickled as a plain tuple: the ledger's writer process gets thousands a second,
        and a slots dataclass's default pickling costs ten times more."""
        return Pending, (
            self.model, self.version, self.role, self.request_id, self.latency_ms, self.roles,
            self.created_at, self.reply, self.status, self.request_rows, self.row_slice,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PendingInputs:
    """A request sampled for the ledger's inputs (drift, retraining, backtests)."""

    request: pb.ModelInferRequest
    request_id: str
    features: tuple[str, ...] | None  # model.yaml ``features``: the columns' names
    created_at: float


def input_rows(
    request: pb.ModelInferRequest, features: Sequence[str] | None
) -> tuple[tuple[str, ...], list[list[Any]]]:
    """A request's inputs as rows of plain values, columns side by side in tensor order.

    Named by ``features`` when it names every column; otherwise ``input`` for a
    one-column tensor and ``input[i]`` for the columns of a wider one.
    """
    arrays = decode(request.inputs, request.raw_input_contents)
    names: list[str] = []
    blocks: list[npt.NDArray[Any]] = []
    rows = None
    for tensor in request.inputs:
        array = arrays[tensor.name]
        rows = rows if rows is not None else (array.shape[0] if array.ndim else 1)
        block = array.reshape(rows, -1)
        if block.dtype.kind in "SO":
            block = np.vectorize(_text, otypes=[object])(block)
        wide = block.shape[1] > 1
        names.extend(f"{tensor.name}[{i}]" if wide else tensor.name for i in range(block.shape[1]))
        blocks.append(block.astype(object))
    if features is not None and len(features) == len(names):
        names = list(features)
    table = np.hstack(blocks) if blocks else np.empty((0, 0), dtype=object)
    return tuple(names), table.tolist()


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def to_input_sample(item: PendingInputs) -> InputSample:
    """The writer: a sampled request's rows."""
    columns, rows = input_rows(item.request, item.features)
    return InputSample(item.request.model_name, item.request_id, columns, rows, item.created_at)


def convert(item: Pending | PendingInputs) -> Answer | PackedAnswer | InputSample:
    """What the ledger's writer calls for every queued item: the common reply goes the
    fast way (``to_packed``), anything else through ``to_answer``."""
    if isinstance(item, PendingInputs):
        return to_input_sample(item)
    return to_packed(item) or to_answer(item)


def _by_rows(array: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
    """``array`` as ``rows`` rows of its other values: ``reshape(rows, -1)``, except that
    numpy cannot infer the columns of zero rows, which come from the array's own shape
    (one for ``[0]``) when it holds nothing. A size that does not fit raises ValueError."""
    if rows == 0 and array.size == 0 and array.ndim >= 1:
        return array.reshape(0, math.prod(array.shape[1:]))
    return array.reshape(rows, -1)


def _texts(array: npt.NDArray[Any]) -> tuple[str, ...]:
    flat = _by_rows(array, array.shape[0])[:, 0] if array.ndim > 1 else array
    if flat.dtype == object:
        return tuple(x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in flat)
    if flat.dtype.kind == "f" and np.all(np.mod(flat, 1) == 0):
        flat = flat.astype(np.int64)
    if flat.dtype.kind in "iub":
        return tuple(map(str, flat.tolist()))
    return tuple(flat.astype(str).tolist())


@functools.lru_cache(maxsize=256)
def _parsed_classes(text: str) -> tuple[str, ...]:
    """A runner sends the same classes on every answer: parse each text once."""
    return tuple(json.loads(text))


# One output the ledger keeps: its index in the reply, name, datatype and shape.
_Picked = tuple[int, str, str, list[int]]


@dataclass(slots=True)  # not frozen: made for every answer, and frozen costs a setattr a field
class _Scan:
    picked: list[_Picked]  # the outputs the ledger keeps, in reply order
    first_shape: list[int]  # the first output's: the answer's rows
    classes: tuple[str, ...] | None  # model.yaml's, else those a runner put on the scores


def _scan(response: pb.ModelInferResponse, roles: OutputRoles) -> _Scan:
    """One pass over a reply's outputs, reading each field once: every protobuf field
    access builds a wrapper (``tuple()`` of a repeated field costs a microsecond, its
    ``[:]`` a tenth of that), and the writer does this thousands of times a second. Only
    the outputs the ledger keeps are picked: a model may answer much more (embeddings)."""
    wanted = {roles.label, roles.value, roles.probabilities}
    picked: list[_Picked] = []
    first: list[int] = []
    classes = roles.classes
    for i, tensor in enumerate(response.outputs):
        shape = tensor.shape[:]
        if i == 0:
            first = shape
        name = tensor.name
        if name not in wanted:
            continue
        picked.append((i, name, tensor.datatype, shape))
        if name == roles.probabilities and roles.classes is None:
            parameters = tensor.parameters
            if "classes" in parameters:
                classes = _parsed_classes(parameters["classes"].string_param)
    return _Scan(picked, first, classes)


def _arrays(response: pb.ModelInferResponse, picked: list[_Picked]) -> dict[str, npt.NDArray[Any]]:
    """The picked outputs as arrays. Raw numeric outputs are read straight from their
    bytes (a size that does not fit the shape raises ValueError, and the answer counts as
    failed); anything else goes through ``decode``."""
    raws = response.raw_output_contents
    if raws and all(datatype in DTYPES and datatype != "BYTES" for _, _, datatype, _ in picked):
        return {
            name: np.frombuffer(raws[i], dtype=DTYPES[datatype]).reshape(shape)
            for i, name, datatype, shape in picked
        }
    tensors = [response.outputs[i] for i, *_ in picked]
    return decode(tensors, [raws[i] for i, *_ in picked] if raws else [])


def to_answer(item: Pending) -> Answer:
    """Runs in the ledger's writer, never on the event loop."""
    if item.reply is None:
        return Answer(
            request_id=item.request_id, model=item.model, version=item.version, role=item.role,
            rows=item.request_rows, labels=None, values=None, probabilities=None, classes=None,
            latency_ms=item.latency_ms, status=item.status, created_at=item.created_at,
        )  # fmt: skip
    response = pb.ModelInferResponse.FromString(item.reply)
    roles = item.roles
    raws = response.raw_output_contents
    if raws and len(raws) != len(response.outputs):
        raise ValueError(f"reply has {len(raws)} raw contents for {len(response.outputs)} outputs")
    scan = _scan(response, roles)
    arrays = _arrays(response, scan.picked)
    first = scan.first_shape
    rows = int(first[0]) if first else 1
    request_id = response.id or item.request_id
    if item.row_slice is not None:
        start, stop = item.row_slice
        if stop > rows:
            raise ValueError(f"reply has {rows} rows; this request's are {start}..{stop}")
        arrays = {name: array[start:stop] for name, array in arrays.items()}
        rows, request_id = stop - start, item.request_id
    label = arrays.get(roles.label) if roles.label else None
    value = arrays.get(roles.value) if roles.value else None
    proba = arrays.get(roles.probabilities) if roles.probabilities else None
    return Answer(
        request_id=request_id,
        model=item.model,
        version=item.version,
        role=item.role,
        rows=rows,
        labels=None if label is None else _texts(label),
        values=None if value is None else tuple(_by_rows(np.asarray(value, float), rows)[:, 0]),
        probabilities=None if proba is None else _by_rows(np.asarray(proba, np.float64), rows),
        classes=scan.classes,
        latency_ms=item.latency_ms,
        status="OK",
        created_at=item.created_at,
    )


class Recorder:
    """Queues answers for the ledger; the conversion happens in the ledger's thread."""

    def __init__(
        self,
        ledger: Ledger,
        roles: Callable[[str, str], OutputRoles],
        enabled: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.ledger = ledger
        self.roles = roles
        self.enabled = enabled
        self.metrics = metrics  # every answer is counted there, recorded or not

    def answered(
        self,
        reply: bytes,
        model: str,
        version: str,
        role: Role,
        latency_ms: float,
        *,
        request_id: str = "",
        rows: tuple[int, int] | None = None,
        total_rows: int = 1,
    ) -> None:
        """Queue one answer. ``rows``: this request's rows of a reply that answered
        several merged requests (``request_id``'s; the queue's byte bound counts this
        request's share of the reply)."""
        if self.metrics is not None:
            self.metrics.answered(model, version, role, "OK", latency_ms)
        if not self.enabled:
            return
        roles = self.roles(model, version)
        pending = Pending(
            model, version, role, request_id, latency_ms, roles, time.time(), reply,
            row_slice=rows,
        )  # fmt: skip
        share = len(reply) if rows is None else len(reply) * (rows[1] - rows[0]) // total_rows
        self.ledger.record(pending, weight=share)

    def inputs(
        self,
        request: pb.ModelInferRequest,
        request_id: str,
        features: Sequence[str] | None,
        size: int,
    ) -> None:
        """Queue a sampled request's inputs (``size``: its serialized bytes)."""
        if not self.enabled:
            return
        names = None if features is None else tuple(features)
        self.ledger.record(PendingInputs(request, request_id, names, time.time()), weight=size)

    def failed(
        self,
        request: pb.ModelInferRequest,
        *,
        request_id: str,
        version: str,
        role: Role,
        latency_ms: float,
        status: str,
    ) -> None:
        if self.metrics is not None:
            self.metrics.answered(request.model_name, version, role, status, latency_ms)
        if not self.enabled:
            return
        shape = request.inputs[0].shape if request.inputs else []
        rows = int(shape[0]) if shape and shape[0] > 0 else 1
        roles = self.roles(request.model_name, version)
        pending = Pending(
            request.model_name, version, role, request_id, latency_ms, roles, time.time(),
            status=status, request_rows=rows,
        )  # fmt: skip
        self.ledger.record(pending)


# The fast path's datatypes: the integer labels it reads as they are (array typecode,
# bytes per item), and the scores it stores as float64.
_INT_FORMATS = {"INT64": ("q", 8), "INT32": ("i", 4)}
_FLOATS: dict[str, np.dtype[Any]] = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}
_Output = tuple[str, list[int], bytes]  # datatype, shape, raw contents


def to_packed(item: Pending) -> PackedAnswer | None:
    """The common reply straight into its stored form, without numpy arrays for 1-row
    answers: raw contents, integer labels of shape [rows] or [rows, 1], float scores of
    shape [rows, k] and values of shape [rows] or [rows, 1], each as many bytes as its
    shape says. None for anything else (and for a reply that does not add up), which
    ``to_answer`` then converts, or rejects with its reasons. Stores exactly what
    ``to_answer`` would (``tests/test_recording.py`` checks it on generated replies)."""
    if item.reply is None or sys.byteorder != "little":
        return None
    response = pb.ModelInferResponse.FromString(item.reply)
    outputs, raws = response.outputs, response.raw_output_contents
    if not raws or len(raws) != len(outputs):
        return None
    roles = item.roles
    scan = _scan(response, roles)
    found = {name: (datatype, shape, raws[i]) for i, name, datatype, shape in scan.picked}
    first = scan.first_shape
    rows = int(first[0]) if first else 1
    start, stop = item.row_slice or (0, rows)
    if not 0 <= start < stop <= rows:  # no rows (rare): to_answer's
        return None
    try:
        labels = _packed_labels(found.get(roles.label or ""), rows, start, stop)
        values = _packed_floats(found.get(roles.value or ""), rows, 1, start, stop)
        k = _columns(found.get(roles.probabilities or ""), rows)
        proba = _packed_floats(found.get(roles.probabilities or ""), rows, k, start, stop)
    except _NotFast:
        return None
    return PackedAnswer(
        request_id=item.request_id if item.row_slice else (response.id or item.request_id),
        model=item.model, version=item.version, role=item.role, rows=stop - start,
        labels=labels, values=values, probabilities=proba, k=k if proba is not None else 0,
        classes=scan.classes, latency_ms=item.latency_ms, created_at=item.created_at,
    )  # fmt: skip


class _NotFast(Exception):
    """This output is not one the fast path reads."""


class _LabelTexts(dict[int, str]):
    """``str`` of an integer label, remembered for the first ``LIMIT`` labels seen: a
    classifier's labels are few, and formatting each of a 1,000-row answer's labels was
    most of the writer's work for it. Beyond the limit (labels that are really values)
    each is formatted as before."""

    LIMIT = 4096

    def __missing__(self, label: int) -> str:
        text = str(label)
        if len(self) < self.LIMIT:
            self[label] = text
        return text


_LABEL_TEXTS = _LabelTexts()


def _packed_labels(output: _Output | None, rows: int, start: int, stop: int) -> str | None:
    if output is None:
        return None
    datatype, shape, raw = output
    fmt, size = _INT_FORMATS.get(datatype, ("", 0))
    if not fmt or shape not in ([rows], [rows, 1]) or len(raw) != rows * size:
        raise _NotFast
    values = array.array(fmt, raw)[start:stop].tolist()
    # What json.dumps([str(v) for v in values]) writes (digits need no escaping), cheaper:
    # each label's text looked up, not formatted (1,000 labels: 38 against 110 µs).
    return '["' + '", "'.join(map(_LABEL_TEXTS.__getitem__, values)) + '"]' if values else "[]"


def _columns(output: _Output | None, rows: int) -> int:
    if output is None:
        return 0
    shape = output[1]
    if len(shape) != 2 or shape[0] != rows or shape[1] < 1:
        raise _NotFast
    return shape[1]


def _packed_floats(
    output: _Output | None, rows: int, k: int, start: int, stop: int
) -> bytes | None:
    """Little-endian float64 bytes of rows start..stop, ``k`` columns (1: shape [rows] or
    [rows, 1])."""
    if output is None:
        return None
    datatype, shape, raw = output
    dtype = _FLOATS.get(datatype)
    fits = shape == [rows, k] or (k == 1 and shape == [rows])
    if dtype is None or not fits or len(raw) != rows * k * dtype.itemsize:
        raise _NotFast
    part = raw[start * k * dtype.itemsize : stop * k * dtype.itemsize]
    if dtype.itemsize == 8:
        return part
    return bytes(np.frombuffer(part, dtype=dtype).astype("<f8").tobytes())
