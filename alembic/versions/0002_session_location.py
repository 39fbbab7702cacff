"""Where a clinic session is held, as the HIS describes it (printed on the referral slip, R11).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("clinic_sessions", sa.Column("location", sa.String(length=100), nullable=True))


def downgrade() -> None:
    op.drop_column("clinic_sessions", "location")
