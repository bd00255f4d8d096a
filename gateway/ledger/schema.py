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

# Inputs sampled from live traffic (model.yaml ``monitoring.input_sample_rate``): one row
# per sampled request. ``data`` is a JSON list of rows, each a list of feature values in
# the order of ``columns`` (a JSON list of names). Drift, retraining and backtests read it.
inputs = sa.Table(
    "inputs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("rows", sa.Integer(), nullable=False),
    sa.Column("columns", sa.Text(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Index("ix_inputs_model_created_at", "model", "created_at"),
    sa.Index("ix_inputs_model_request_id", "model", "request_id"),
)

# The registry: one row per registered version, never updated (provenance is history).
versions = sa.Table(
    "versions",
    metadata,
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("version", sa.String(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("artifact", sa.String(), nullable=False),
    sa.Column("framework", sa.String(), nullable=True),
    sa.Column("framework_version", sa.String(), nullable=True),
    sa.Column("runner", sa.String(), nullable=False),
    sa.Column("data", sa.Text(), nullable=True),
    sa.Column("code_ref", sa.Text(), nullable=True),
    sa.Column("parameters", sa.Text(), nullable=True),
    sa.Column("metrics", sa.Text(), nullable=True),
    sa.Column("parent", sa.String(), nullable=True),
    sa.Column("author", sa.String(), nullable=True),
    sa.Column("notes", sa.Text(), nullable=True),
    sa.Column("registered_at", sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint("model", "version", name="pk_versions"),
)

# Drift's reference sample per version: a JSON list of rows, as in ``inputs``.
reference_samples = sa.Table(
    "reference_samples",
    metadata,
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("version", sa.String(), nullable=False),
    sa.Column("columns", sa.Text(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("source", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint("model", "version", name="pk_reference_samples"),
)

# Append-only journal of everything that happened to a model: registrations, deployment
# changes, promotions, retraining runs, validations. ``details`` is JSON.
journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("at", sa.Double(), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("version", sa.String(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("details", sa.Text(), nullable=False),
    sa.Index("ix_journal_model_id", "model", "id"),
)
