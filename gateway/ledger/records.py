"""The ledger's value types: what the gateway records and what evaluation reads back.

Plain frozen dataclasses so that the gateway, the evaluator and the tests share one
vocabulary without importing the database layer (or gRPC: this package never does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["primary", "canary", "shadow"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One row of one answered (or failed) request, as the gateway saw it."""

    request_id: str
    row: int
    model: str
    version: str
    role: Role
    label: str | None
    value: float | None
    probabilities: tuple[float, ...] | None
    classes: tuple[str, ...] | None
    latency_ms: float
    status: str
    created_at: float


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """A prediction row joined with its ground truth (``None`` until feedback arrives)."""

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


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """Counters for ``report``: what was written, is waiting, or was lost and why.

    ``recorded`` rows are in the database; ``queued`` wait in memory (including the batch
    being written); ``dropped`` were refused because the queue was full (or the ledger
    stopped); ``failed`` were lost to database errors after retries.
    """

    recorded: int
    queued: int
    dropped: int
    failed: int
    batches: int
    last_error: str | None
