"""The sandbox clock: one row that marks a database as a sandbox and holds how far its clock moved.

``sandbox_clock``: written when ``serve --sandbox`` (or ``SLOTPOOL_SANDBOX=true``) first starts
against a database with no organisations in it, and by ``POST /v1/sandbox/clock``. Every process
of the sandbox reads ``offset_us`` (microseconds ahead of the wall clock, never negative, never
smaller than before), so every worker and every loop sees one time. See docs/sandbox.md.

Revision ID: 0020
Revises: 0018
Create Date: 2026-12-20 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A new table that older builds never read.
EXPAND_ONLY = True


def upgrade() -> None:
    op.create_table(
        "sandbox_clock",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("offset_us", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_sandbox_clock_one_row")),
        sa.CheckConstraint("offset_us >= 0", name=op.f("ck_sandbox_clock_offset_forward")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_clock")),
    )


def downgrade() -> None:
    op.drop_table("sandbox_clock")
