"""Prediction ledger, feedback store and deployment storage.

Every answer (primary, canary and shadow) is recorded off the hot path as one record
however many rows it has; ground truth arrives later as feedback and is joined by
(model, request id, row) when answers are read back as rows; deployments
and their append-only history live beside them. SQLite (WAL) by default, PostgreSQL by
URL, one schema migrated by Alembic. This package imports neither grpc nor generated code.
"""

from gateway.ledger.ledger import Ledger
from gateway.ledger.records import (
    Answer,
    FeedbackResult,
    HistoryEntry,
    LabelledRow,
    LedgerStats,
    PairedRow,
    Role,
)

__all__ = [
    "Answer",
    "FeedbackResult",
    "HistoryEntry",
    "LabelledRow",
    "Ledger",
    "LedgerStats",
    "PairedRow",
    "Role",
]
