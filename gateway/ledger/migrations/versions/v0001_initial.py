"""Create the ledger: answers, feedback, deployments and their history.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full rather than imported from ``schema.py``: a released revision must
keep creating the same tables even after the current schema moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "answers",
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
        sa.PrimaryKeyConstraint("id", name="pk_answers"),
    )
    op.create_index("ix_answers_model_request_id", "answers", ["model", "request_id"])
    op.create_index("ix_answers_model_created_at", "answers", ["model", "created_at"])
    op.create_table(
        "feedback",
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("truth", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("revisions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("model", "request_id", "row", name="pk_feedback"),
    )
    op.create_table(
        "deployments",
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("model", name="pk_deployments"),
    )
    op.create_table(
        "deployment_history",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployment_history"),
    )
    op.create_index("ix_deployment_history_model_id", "deployment_history", ["model", "id"])


def downgrade() -> None:
    op.drop_table("deployment_history")
    op.drop_table("deployments")
    op.drop_table("feedback")
    op.drop_table("answers")
