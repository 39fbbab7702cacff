"""A wrongly pushed session can be removed; stored booking answers can be purged.

``clinic_sessions.status`` gains ``removed``: the hospital or its commission took the
session out as pushed in error. A removed session keeps its row (its cancelled referrals
and the audit trail point at it) but frees its HIS session ID, so the unique constraint on
(hospital_id, external_id) becomes a unique index over sessions not removed. Idempotency
rows get an index on ``created_at`` for the purge after their 24-hour window. See
docs/input-bounds.md.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Not expand-only (docs/operations.md): older builds know no `removed` session and would show one,
# and they look sessions up by a HIS id that is no longer unique once a session is removed.
EXPAND_ONLY = False


def upgrade() -> None:
    op.drop_constraint(op.f("ck_clinic_sessions_status"), "clinic_sessions", type_="check")
    op.create_check_constraint(
        op.f("ck_clinic_sessions_status"), "clinic_sessions", "status IN ('active', 'withdrawn', 'removed')"
    )
    op.drop_constraint(op.f("uq_clinic_sessions_hospital_id_external_id"), "clinic_sessions", type_="unique")
    op.create_index(
        op.f("uq_clinic_sessions_hospital_id_external_id"),
        "clinic_sessions",
        ["hospital_id", "external_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'removed'"),
    )
    op.create_index(op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    # Removed sessions cannot go back to a schema that has no such state; they become withdrawn.
    op.execute("UPDATE clinic_sessions SET status = 'withdrawn' WHERE status = 'removed'")
    op.drop_index("uq_clinic_sessions_hospital_id_external_id", table_name="clinic_sessions")
    op.create_unique_constraint(
        op.f("uq_clinic_sessions_hospital_id_external_id"), "clinic_sessions", ["hospital_id", "external_id"]
    )
    op.drop_constraint(op.f("ck_clinic_sessions_status"), "clinic_sessions", type_="check")
    op.create_check_constraint(
        op.f("ck_clinic_sessions_status"), "clinic_sessions", "status IN ('active', 'withdrawn')"
    )
