"""Abuse limits: per-client token buckets and hotline verification attempts.

Both tables are small and keyed by what they limit, so one statement per
request reads and updates a row that every replica shares.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Expand/contract (docs/operations.md): only new tables, so builds at 0013 keep working.
EXPAND_ONLY = True


def upgrade() -> None:
    op.create_table(
        "rate_limit_buckets",
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name=op.f("fk_rate_limit_buckets_client_id_api_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_rate_limit_buckets")),
    )
    op.create_table(
        "hotline_attempts",
        sa.Column("subject", sa.String(length=40), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("failures >= 0", name=op.f("ck_hotline_attempts_failures")),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_hotline_attempts")),
    )


def downgrade() -> None:
    op.drop_table("hotline_attempts")
    op.drop_table("rate_limit_buckets")
