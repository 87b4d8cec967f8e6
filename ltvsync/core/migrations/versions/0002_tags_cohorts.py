"""Tags and cohorts: tag membership and its history, daily tag counts, cohort snapshots, annotations.

Self-contained like 0001 (plain SQLAlchemy types, no ltvsync imports).  JSON columns are TEXT.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tag_membership",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"]),
        sa.PrimaryKeyConstraint("customer_id", "tag"),
    )
    op.create_table(
        "tag_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("values", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tag_history_customer_at", "tag_history", ["customer_id", "at"], unique=False)
    op.create_table(
        "tag_count_snapshot",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "tag"),
    )
    op.create_table(
        "cohort_snapshot",
        sa.Column("snapshot_date", sa.Date(), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("ltv_simple_avg", sa.Float(), nullable=True),
        sa.Column("ltv_predicted_avg", sa.Float(), nullable=True),
        sa.Column("retention", sa.Text(), nullable=True),
        sa.Column("revenue_per_customer", sa.Text(), nullable=True),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_date", "period", "period_start"),
    )
    op.create_table(
        "annotation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("annotation")
    op.drop_table("cohort_snapshot")
    op.drop_table("tag_count_snapshot")
    op.drop_index("ix_tag_history_customer_at", table_name="tag_history")
    op.drop_table("tag_history")
    op.drop_table("tag_membership")
