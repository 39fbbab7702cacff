"""An index the compliance reports count slots through (R20).

A report joins the clinic sessions of its range to their slots and counts them
by status. On (session_id, status) that is an index-only scan per session
instead of reading every slot row (or hashing the whole table): on the
benchmark's 2.9 million slots it roughly halved the slot-counting step.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 13:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_slots_session_status", "slots", ["session_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_slots_session_status", table_name="slots")
