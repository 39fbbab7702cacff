"""Attendance, no-show bars and the hospital's receipt of referrals (R13, R19).

Referrals gain what the HIS reports (attended or no-show, when, a note) and its
acknowledgement (received, its own reference). Bars on pool booking at one
hospital are rows of their own, with the no-shows that triggered them and how
they were lifted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("referrals", sa.Column("attendance", sa.String(length=10), nullable=True))
    op.add_column("referrals", sa.Column("attendance_reported_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("referrals", sa.Column("attendance_note", sa.Text(), nullable=True))
    op.add_column("referrals", sa.Column("received_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("referrals", sa.Column("his_reference", sa.String(length=64), nullable=True))
    op.create_check_constraint(
        op.f("ck_referrals_attendance"), "referrals", "attendance IN ('attended', 'no_show')"
    )
    op.create_check_constraint(
        op.f("ck_referrals_attendance_reported_at"),
        "referrals",
        "(attendance IS NULL) = (attendance_reported_at IS NULL)",
    )
    op.create_check_constraint(
        op.f("ck_referrals_his_reference_received"),
        "referrals",
        "his_reference IS NULL OR received_at IS NOT NULL",
    )
    op.create_index(
        "ix_referrals_unreported",
        "referrals",
        ["hospital_id", "service_date"],
        unique=False,
        postgresql_where=sa.text("status = 'booked' AND attendance IS NULL"),
    )
    op.create_index(
        "ix_referrals_no_shows",
        "referrals",
        ["resident_id", "hospital_id", "service_date"],
        unique=False,
        postgresql_where=sa.text("attendance = 'no_show'"),
    )
    op.create_table(
        "no_show_bars",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("policy_id", sa.BigInteger(), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=False),
        sa.Column("ends_on", sa.Date(), nullable=False),
        sa.Column("trigger_referral_ids", sa.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lifted_by_client_id", sa.BigInteger(), nullable=True),
        sa.Column("lift_kind", sa.String(length=12), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.CheckConstraint("ends_on >= starts_on", name=op.f("ck_no_show_bars_dates")),
        sa.CheckConstraint("cardinality(trigger_referral_ids) >= 1", name=op.f("ck_no_show_bars_triggers")),
        sa.CheckConstraint(
            "lift_kind IN ('commission', 'correction')", name=op.f("ck_no_show_bars_lift_kind")
        ),
        sa.CheckConstraint(
            "(lifted_at IS NULL) = (lift_kind IS NULL) AND (lifted_at IS NULL) = (lift_reason IS NULL)",
            name=op.f("ck_no_show_bars_lifted"),
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["organisations.id"], name=op.f("fk_no_show_bars_hospital_id_organisations")
        ),
        sa.ForeignKeyConstraint(
            ["lifted_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_no_show_bars_lifted_by_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"], ["policies.id"], name=op.f("fk_no_show_bars_policy_id_policies")
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_no_show_bars_resident_id_residents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_no_show_bars")),
    )
    op.create_index(
        "ix_no_show_bars_hospital_resident",
        "no_show_bars",
        ["hospital_id", "resident_id", "ends_on"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_no_show_bars_hospital_resident", table_name="no_show_bars")
    op.drop_table("no_show_bars")
    op.drop_index(
        "ix_referrals_no_shows", table_name="referrals", postgresql_where=sa.text("attendance = 'no_show'")
    )
    op.drop_index(
        "ix_referrals_unreported",
        table_name="referrals",
        postgresql_where=sa.text("status = 'booked' AND attendance IS NULL"),
    )
    op.drop_constraint(op.f("ck_referrals_his_reference_received"), "referrals", type_="check")
    op.drop_constraint(op.f("ck_referrals_attendance_reported_at"), "referrals", type_="check")
    op.drop_constraint(op.f("ck_referrals_attendance"), "referrals", type_="check")
    op.drop_column("referrals", "his_reference")
    op.drop_column("referrals", "received_at")
    op.drop_column("referrals", "attendance_note")
    op.drop_column("referrals", "attendance_reported_at")
    op.drop_column("referrals", "attendance")
