"""Which builds the schema still serves: one row read by /readyz during rolling deploys.

``slotpool migrate`` writes the row after every upgrade (service/models/migrations.py): the oldest
build revision that still works on this schema. A replica whose build does not know the
database's revision (the database is ahead) is ready when its own head is at or after that
revision. This revision only adds a table, so older builds keep working on it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Expand/contract (docs/operations.md): True when builds at the previous revision still work.
EXPAND_ONLY = True


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("oldest_build_revision", sa.Text(), nullable=False),
        sa.Column("schema_revision", sa.Text(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_schema_compatibility_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schema_compatibility")),
    )


def downgrade() -> None:
    op.drop_table("schema_compatibility")
