"""Governance: sampled inputs, the version registry, drift references and the journal.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The journal starts with every deployment change already saved, so that ``greenroom
history`` of an upgraded ledger still tells the whole story.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inputs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inputs"),
    )
    op.create_index("ix_inputs_model_created_at", "inputs", ["model", "created_at"])
    op.create_index("ix_inputs_model_request_id", "inputs", ["model", "request_id"])
    op.create_table(
        "versions",
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
    op.create_table(
        "reference_samples",
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("columns", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("model", "version", name="pk_reference_samples"),
    )
    op.create_table(
        "journal",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("version", sa.String(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_journal"),
    )
    op.create_index("ix_journal_model_id", "journal", ["model", "id"])
    op.execute(
        "INSERT INTO journal (model, at, kind, version, reason, actor, details) "
        "SELECT model, at, 'deployment', NULL, reason, actor, spec "
        "FROM deployment_history ORDER BY id"
    )


def downgrade() -> None:
    op.drop_table("journal")
    op.drop_table("reference_samples")
    op.drop_table("versions")
    op.drop_table("inputs")
