"""Prediction ledger, feedback store and deployment storage.

Every prediction row (primary, canary and shadow) is recorded off the hot path; ground
truth arrives later as feedback and is joined by (model, request id, row); deployments
and their append-only history live beside them. SQLite (WAL) by default, PostgreSQL by
URL, one schema migrated by Alembic. This package imports neither grpc nor generated code.
"""

from gateway.ledger.ledger import Ledger
from gateway.ledger.records import (
    FeedbackResult,
    HistoryEntry,
    LabelledRow,
    LedgerStats,
    PairedRow,
    Prediction,
    Role,
)

__all__ = [
    "FeedbackResult",
    "HistoryEntry",
    "LabelledRow",
    "Ledger",
    "LedgerStats",
    "PairedRow",
    "Prediction",
    "Role",
]
