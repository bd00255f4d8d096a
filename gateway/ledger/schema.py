"""The ledger's tables, in SQLAlchemy Core so that one definition serves SQLite and PostgreSQL.

Migrations (``migrations/versions``) create these tables; this module is what the queries
use. A test compares the two so that they cannot drift apart. JSON values (labels,
classes, deployment specs) are stored as text and float arrays as little-endian bytes:
identical on both databases, and nothing queries inside them.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)

# 64-bit ids on PostgreSQL; SQLite wants exactly INTEGER for its rowid alias.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One row per answer (one version's answer to one request), however many rows it has.
# Per-row columns are packed: ``labels`` a JSON list, ``value_data`` float64 little-endian,
# ``probabilities`` float64 little-endian row-major ``rows`` x ``k`` (columns: ``classes``).
# Failed answers (``status`` not "OK") keep ``rows`` (the request's) and no packed columns.
answers = sa.Table(
    "answers",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("version", sa.String(), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("rows", sa.Integer(), nullable=False),
    sa.Column("labels", sa.Text(), nullable=True),
    sa.Column("value_data", sa.LargeBinary(), nullable=True),
    sa.Column("probabilities", sa.LargeBinary(), nullable=True),
    sa.Column("classes", sa.Text(), nullable=True),
    sa.Column("k", sa.Integer(), nullable=False),
    sa.Column("latency_ms", sa.Double(), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Index("ix_answers_model_request_id", "model", "request_id"),
    sa.Index("ix_answers_model_created_at", "model", "created_at"),
)

# One truth per (model, request id, row): the key is the upsert target, last write wins.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("row", sa.Integer(), nullable=False),
    sa.Column("truth", sa.Text(), nullable=False),
    sa.Column("received_at", sa.Double(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.Column("revisions", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("model", "request_id", "row", name="pk_feedback"),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("spec", sa.Text(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint("model", name="pk_deployments"),
)

# Append-only: rows are inserted, never updated or deleted; ``id`` gives the order.
deployment_history = sa.Table(
    "deployment_history",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("at", sa.Double(), nullable=False),
    sa.Column("spec", sa.Text(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Index("ix_deployment_history_model_id", "model", "id"),
)
