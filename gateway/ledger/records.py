"""The ledger's value types: what the gateway records and what evaluation reads back.

Plain frozen dataclasses so that the gateway, the evaluator and the tests share one
vocabulary without importing the database layer (or gRPC: this package never does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Role = Literal["primary", "canary", "shadow"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One version's answer to one request, however many rows: what the ledger writes.

    Per-row columns are aligned: ``labels`` and ``values`` hold ``rows`` items,
    ``probabilities`` is a ``(rows, k)`` float64 array whose columns are ``classes``.
    A failed call (``status`` a gRPC status name, not ``"OK"``) carries the rows its
    request had and no labels, values or probabilities (any given are not stored).
    """

    request_id: str
    model: str
    version: str
    role: Role
    rows: int
    labels: tuple[str, ...] | None
    values: tuple[float, ...] | None
    probabilities: npt.NDArray[np.float64] | None
    classes: tuple[str, ...] | None
    latency_ms: float
    status: str
    created_at: float


@dataclass(slots=True)
class PackedAnswer:
    """An ``Answer`` already in its stored form: the writer's fast path for the common
    reply (raw integer labels, float scores), built without numpy arrays. ``labels`` is the
    JSON list of the labels as text; ``values`` and ``probabilities`` are little-endian
    float64 bytes, row-major with ``k`` columns. ``store.answer_params`` checks the sizes.
    Not frozen: the writer makes thousands a second, and a frozen dataclass's ``__init__``
    pays a ``object.__setattr__`` call per field."""

    request_id: str
    model: str
    version: str
    role: Role
    rows: int
    labels: str | None
    values: bytes | None
    probabilities: bytes | None
    k: int
    classes: tuple[str, ...] | None
    latency_ms: float
    created_at: float


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """One row of an answer, joined with its ground truth (``None`` until feedback arrives)."""

    request_id: str
    row: int
    version: str
    role: str
    label: str | None
    value: float | None
    probabilities: tuple[float, ...] | None
    classes: tuple[str, ...] | None
    latency_ms: float
    status: str
    created_at: float
    truth: str | None


@dataclass(frozen=True, slots=True)
class PairedRow:
    """The same request row answered OK by two versions, with its known truth."""

    request_id: str
    row: int
    truth: str
    primary_label: str | None
    primary_value: float | None
    candidate_label: str | None
    candidate_value: float | None


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What became of a feedback batch; ``matched + unmatched == accepted``."""

    accepted: int
    matched: int
    unmatched: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One appended deployment change."""

    at: float
    spec: dict[str, Any]
    reason: str
    actor: str


# What the journal holds. Deployment changes carry their new spec in ``details``.
JournalKind = Literal[
    "registration", "deployment", "promotion", "retraining", "validation", "reference"
]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    at: float
    kind: str
    version: str | None
    reason: str
    actor: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InputSample:
    """A sampled request's input rows (``rows`` lists of values in ``columns`` order)."""

    model: str
    request_id: str
    columns: tuple[str, ...]
    rows: list[list[Any]]
    created_at: float


@dataclass(frozen=True, slots=True)
class LabelledInput:
    """One sampled input row joined with its truth: what retraining and backtests read."""

    request_id: str
    row: int
    values: list[Any]
    truth: str
    created_at: float


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A registered version's provenance: what it is, and where it came from."""

    model: str
    version: str
    sha256: str
    artifact: str
    runner: str
    registered_at: float
    framework: str | None = None
    framework_version: str | None = None
    data: dict[str, Any] | None = None  # training data: sha256, rows, columns, time range
    code_ref: str | None = None
    parameters: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    parent: str | None = None
    author: str | None = None
    notes: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Reference:
    """Drift's reference sample for a version, and where it came from."""

    model: str
    version: str
    columns: tuple[str, ...]
    rows: list[list[Any]]
    source: str
    created_at: float


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """Counters for ``report``: what was written, is waiting, or was lost and why.

    ``recorded_answers`` are in the database, holding ``recorded_rows`` rows between them.
    The other counters count recorded items (answers): ``queued`` wait in memory (including
    the batch being written); ``dropped`` were refused because the queue was full, by count
    or by bytes (or the ledger stopped); ``failed`` were lost, to a conversion error or to
    database errors after retries.
    """

    recorded_answers: int
    recorded_rows: int
    queued: int
    dropped: int
    failed: int
    batches: int
    last_error: str | None
