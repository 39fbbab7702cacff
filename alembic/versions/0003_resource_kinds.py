"""Resource kinds (R18): examinations and inpatient beds beside outpatient visits.

Sessions, slots, policies, policy assignments and shortfalls gain a
``resource_kind`` ('outpatient' by default, so every existing row keeps its
meaning). Examination sessions name a modality, bed sessions a ward; only
outpatient sessions must name a doctor. A slot carries its session's kind
through a composite foreign key, so the R16 length check can exempt beds,
whose slot is a day's admission window. A hospital holds one policy per kind.

Downgrading refuses while examination or bed data exists: the older schema
cannot hold it, and dropping it silently would lose bookings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "('outpatient', 'examination', 'bed')"
MODALITIES = (
    "('CT', 'MRI', 'PET-CT', 'PET-MRI', 'SPECT', 'X-ray', 'mammography', "
    "'ultrasound', 'DSA', 'endoscopy', 'ECG')"
)


def _kind_column() -> sa.Column[str]:
    return sa.Column("resource_kind", sa.String(length=12), server_default="outpatient", nullable=False)


def upgrade() -> None:
    op.add_column("policies", _kind_column())
    op.create_check_constraint(op.f("ck_policies_resource_kind"), "policies", f"resource_kind IN {KINDS}")
    op.create_check_constraint(
        op.f("ck_policies_kind_rules"),
        "policies",
        "resource_kind = 'outpatient' OR (ratio_base = 'all_outpatient' AND min_senior_share = 0)",
    )

    op.add_column("hospital_policies", _kind_column())
    op.drop_constraint(op.f("pk_hospital_policies"), "hospital_policies", type_="primary")
    op.create_primary_key(op.f("pk_hospital_policies"), "hospital_policies", ["hospital_id", "resource_kind"])
    op.create_check_constraint(
        op.f("ck_hospital_policies_resource_kind"), "hospital_policies", f"resource_kind IN {KINDS}"
    )

    op.add_column("clinic_sessions", _kind_column())
    op.add_column("clinic_sessions", sa.Column("modality", sa.String(length=20), nullable=True))
    op.add_column("clinic_sessions", sa.Column("ward_code", sa.String(length=64), nullable=True))
    op.add_column("clinic_sessions", sa.Column("ward_name", sa.String(length=200), nullable=True))
    op.alter_column("clinic_sessions", "doctor_id", existing_type=sa.BigInteger(), nullable=True)
    op.alter_column("clinic_sessions", "doctor_title", existing_type=sa.String(length=20), nullable=True)
    op.create_unique_constraint(
        op.f("uq_clinic_sessions_id_resource_kind"), "clinic_sessions", ["id", "resource_kind"]
    )
    op.create_check_constraint(
        op.f("ck_clinic_sessions_resource_kind"), "clinic_sessions", f"resource_kind IN {KINDS}"
    )
    op.create_check_constraint(
        op.f("ck_clinic_sessions_modality"),
        "clinic_sessions",
        f"modality IS NULL OR modality IN {MODALITIES}",
    )
    op.create_check_constraint(
        op.f("ck_clinic_sessions_doctor_title"),
        "clinic_sessions",
        "(doctor_id IS NULL) = (doctor_title IS NULL)",
    )
    op.create_check_constraint(
        op.f("ck_clinic_sessions_ward"), "clinic_sessions", "(ward_code IS NULL) = (ward_name IS NULL)"
    )
    op.create_check_constraint(
        op.f("ck_clinic_sessions_resource_detail"),
        "clinic_sessions",
        "CASE resource_kind"
        " WHEN 'outpatient' THEN doctor_id IS NOT NULL AND modality IS NULL AND ward_code IS NULL"
        " WHEN 'examination' THEN modality IS NOT NULL AND ward_code IS NULL"
        " ELSE ward_code IS NOT NULL AND modality IS NULL END",
    )

    op.add_column("slots", _kind_column())
    op.drop_constraint(op.f("fk_slots_session_id_clinic_sessions"), "slots", type_="foreignkey")
    op.create_foreign_key(
        op.f("fk_slots_session_id_clinic_sessions"),
        "slots",
        "clinic_sessions",
        ["session_id", "resource_kind"],
        ["id", "resource_kind"],
    )
    op.drop_constraint(op.f("ck_slots_r16_length"), "slots", type_="check")
    op.create_check_constraint(
        op.f("ck_slots_r16_length"),
        "slots",
        "resource_kind = 'bed' OR ends_at - starts_at <= interval '30 minutes'",
    )
    op.create_check_constraint(
        op.f("ck_slots_bed_window"), "slots", "ends_at - starts_at <= interval '1440 minutes'"
    )

    op.add_column("reservation_shortfalls", _kind_column())
    op.drop_constraint(op.f("pk_reservation_shortfalls"), "reservation_shortfalls", type_="primary")
    op.create_primary_key(
        op.f("pk_reservation_shortfalls"),
        "reservation_shortfalls",
        ["department_id", "service_date", "resource_kind", "kind"],
    )
    op.create_check_constraint(
        op.f("ck_reservation_shortfalls_resource_kind"), "reservation_shortfalls", f"resource_kind IN {KINDS}"
    )


def downgrade() -> None:
    bind = op.get_bind()
    for table in ("policies", "hospital_policies", "clinic_sessions"):
        count = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE resource_kind <> 'outpatient'")
        ).scalar_one()
        if count:
            raise RuntimeError(
                f"{table} holds {count} examination or bed rows; the schema before 0003 cannot hold "
                "them. Remove them deliberately before downgrading."
            )

    op.drop_constraint(
        op.f("ck_reservation_shortfalls_resource_kind"), "reservation_shortfalls", type_="check"
    )
    op.drop_constraint(op.f("pk_reservation_shortfalls"), "reservation_shortfalls", type_="primary")
    op.create_primary_key(
        op.f("pk_reservation_shortfalls"), "reservation_shortfalls", ["department_id", "service_date", "kind"]
    )
    op.drop_column("reservation_shortfalls", "resource_kind")

    op.drop_constraint(op.f("ck_slots_bed_window"), "slots", type_="check")
    op.drop_constraint(op.f("ck_slots_r16_length"), "slots", type_="check")
    op.create_check_constraint(
        op.f("ck_slots_r16_length"), "slots", "ends_at - starts_at <= interval '30 minutes'"
    )
    op.drop_constraint(op.f("fk_slots_session_id_clinic_sessions"), "slots", type_="foreignkey")
    op.create_foreign_key(
        op.f("fk_slots_session_id_clinic_sessions"), "slots", "clinic_sessions", ["session_id"], ["id"]
    )
    op.drop_column("slots", "resource_kind")

    for name in ("resource_detail", "ward", "doctor_title", "modality", "resource_kind"):
        op.drop_constraint(op.f(f"ck_clinic_sessions_{name}"), "clinic_sessions", type_="check")
    op.drop_constraint(op.f("uq_clinic_sessions_id_resource_kind"), "clinic_sessions", type_="unique")
    op.alter_column("clinic_sessions", "doctor_title", existing_type=sa.String(length=20), nullable=False)
    op.alter_column("clinic_sessions", "doctor_id", existing_type=sa.BigInteger(), nullable=False)
    for column in ("ward_name", "ward_code", "modality", "resource_kind"):
        op.drop_column("clinic_sessions", column)

    op.drop_constraint(op.f("ck_hospital_policies_resource_kind"), "hospital_policies", type_="check")
    op.drop_constraint(op.f("pk_hospital_policies"), "hospital_policies", type_="primary")
    op.create_primary_key(op.f("pk_hospital_policies"), "hospital_policies", ["hospital_id"])
    op.drop_column("hospital_policies", "resource_kind")

    op.drop_constraint(op.f("ck_policies_kind_rules"), "policies", type_="check")
    op.drop_constraint(op.f("ck_policies_resource_kind"), "policies", type_="check")
    op.drop_column("policies", "resource_kind")
