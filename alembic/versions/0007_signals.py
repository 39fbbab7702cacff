"""Scalping signals and alerts (R14).

Policies gain per-signal thresholds (empty: every signal at its default).
Organisations gain optional opening hours, against which consultation times
are judged. Alerts are rows of their own: one per episode of a signal above
its threshold, for a family doctor or an institution at one hospital, with
the referrals behind it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNALS = (
    "'book_cancel_churn', 'cancel_near_release', 'new_signing_referrals', "
    "'senior_only_referrals', 'consultation_burst', 'consultation_off_hours'"
)


def upgrade() -> None:
    op.add_column(
        "policies",
        sa.Column(
            "signal_thresholds",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column(
        "organisations",
        sa.Column("opening_hours", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("signal", sa.String(length=40), nullable=False),
        sa.Column("subject_type", sa.String(length=12), nullable=False),
        sa.Column("institution_id", sa.BigInteger(), nullable=False),
        sa.Column("doctor_id", sa.BigInteger(), nullable=True),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("policy_id", sa.BigInteger(), nullable=True),
        sa.Column("window_hours", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Numeric(precision=7, scale=4), nullable=False),
        sa.Column("threshold", sa.Numeric(precision=7, scale=4), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("evidence_referral_ids", sa.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by_client_id", sa.BigInteger(), nullable=True),
        sa.Column("acknowledgement_note", sa.Text(), nullable=True),
        sa.CheckConstraint(f"signal IN ({SIGNALS})", name=op.f("ck_alerts_signal")),
        sa.CheckConstraint("subject_type IN ('doctor', 'institution')", name=op.f("ck_alerts_subject_type")),
        sa.CheckConstraint("status IN ('open', 'acknowledged', 'closed')", name=op.f("ck_alerts_status")),
        sa.CheckConstraint(
            "(subject_type = 'doctor') = (doctor_id IS NOT NULL)", name=op.f("ck_alerts_subject")
        ),
        sa.CheckConstraint("(status = 'closed') = (closed_at IS NOT NULL)", name=op.f("ck_alerts_closed_at")),
        sa.CheckConstraint(
            "(acknowledged_at IS NULL) = (acknowledged_by_client_id IS NULL)",
            name=op.f("ck_alerts_acknowledged"),
        ),
        sa.CheckConstraint("cardinality(evidence_referral_ids) >= 1", name=op.f("ck_alerts_evidence")),
        sa.ForeignKeyConstraint(
            ["acknowledged_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_alerts_acknowledged_by_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(["doctor_id"], ["doctors.id"], name=op.f("fk_alerts_doctor_id_doctors")),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["organisations.id"], name=op.f("fk_alerts_hospital_id_organisations")
        ),
        sa.ForeignKeyConstraint(
            ["institution_id"], ["organisations.id"], name=op.f("fk_alerts_institution_id_organisations")
        ),
        sa.ForeignKeyConstraint(["policy_id"], ["policies.id"], name=op.f("fk_alerts_policy_id_policies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index(
        "uq_alerts_live",
        "alerts",
        ["signal", "hospital_id", "institution_id", sa.text("COALESCE(doctor_id, 0)")],
        unique=True,
        postgresql_where=sa.text("status <> 'closed'"),
    )
    op.create_index("ix_alerts_hospital", "alerts", ["hospital_id", "id"], unique=False)
    op.create_index("ix_alerts_institution", "alerts", ["institution_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_alerts_institution", table_name="alerts")
    op.drop_index("ix_alerts_hospital", table_name="alerts")
    op.drop_index("uq_alerts_live", table_name="alerts", postgresql_where=sa.text("status <> 'closed'"))
    op.drop_table("alerts")
    op.drop_column("organisations", "opening_hours")
    op.drop_column("policies", "signal_thresholds")
