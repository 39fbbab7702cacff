"""Booking limits (R14): per-policy caps that stop scalping before it happens.

Policies gain four nullable limits (NULL: no limit): bookings per family
doctor per rolling hour and per Beijing-time day, an institution's active
referrals at one hospital on one service date as a share of that day's pool,
and a resident's active referrals across hospitals. Existing policy versions
keep NULL: a published version is never edited; a commission adopts limits by
publishing the next version. Referrals gain an index for counting a doctor's
recent bookings.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = {
    "doctor_hourly_limit": "doctor_hourly_limit > 0",
    "doctor_daily_limit": "doctor_daily_limit > 0",
    "institution_share_limit": "institution_share_limit > 0 AND institution_share_limit <= 1",
    "resident_active_limit": "resident_active_limit > 0",
}


def upgrade() -> None:
    op.add_column("policies", sa.Column("doctor_hourly_limit", sa.Integer(), nullable=True))
    op.add_column("policies", sa.Column("doctor_daily_limit", sa.Integer(), nullable=True))
    op.add_column(
        "policies", sa.Column("institution_share_limit", sa.Numeric(precision=5, scale=4), nullable=True)
    )
    op.add_column("policies", sa.Column("resident_active_limit", sa.Integer(), nullable=True))
    for name, check in CHECKS.items():
        op.create_check_constraint(op.f(f"ck_policies_{name}"), "policies", check)
    op.create_index(
        "ix_referrals_doctor_booked_at", "referrals", ["referring_doctor_id", "booked_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_referrals_doctor_booked_at", table_name="referrals")
    for name in reversed(CHECKS):
        op.drop_constraint(op.f(f"ck_policies_{name}"), "policies", type_="check")
    for name in reversed(CHECKS):
        op.drop_column("policies", name)
