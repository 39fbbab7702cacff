"""Initial schema: registry, residents, policies, sessions and slots, referrals, events, audit.

The invariants the pool must never break are constraints here: one active
referral per slot and per resident-department-day (partial unique indexes),
slots of at most 30 minutes (R16), a pool window opening at least one day
before the public release (R5), and an append-only audit table.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 02:57:54.513459
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("ratio", sa.Numeric(precision=5, scale=4), nullable=False),
        sa.Column("ratio_base", sa.String(length=20), nullable=False),
        sa.Column("min_senior_share", sa.Numeric(precision=5, scale=4), nullable=False),
        sa.Column("lead_minutes", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("disease_prefixes", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("preferred_specialties", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("consultation_max_age_hours", sa.Integer(), nullable=False),
        sa.Column("cancel_cutoff_minutes", sa.Integer(), nullable=False),
        sa.Column("cancel_hotline", sa.String(length=40), nullable=False),
        sa.Column("no_show_rule", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("source", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("ratio_base IN ('all_outpatient', 'expert')", name=op.f("ck_policies_ratio_base")),
        sa.CheckConstraint(
            "scope IN ('city', 'jurisdiction', 'by_tier', 'alliance', 'lower_tier')",
            name=op.f("ck_policies_scope"),
        ),
        sa.CheckConstraint("cancel_cutoff_minutes >= 0", name=op.f("ck_policies_cancel_cutoff")),
        sa.CheckConstraint("consultation_max_age_hours > 0", name=op.f("ck_policies_consultation_window")),
        sa.CheckConstraint("lead_minutes >= 1440", name=op.f("ck_policies_lead_time")),
        sa.CheckConstraint(
            "min_senior_share >= 0 AND min_senior_share <= 1", name=op.f("ck_policies_senior_share")
        ),
        sa.CheckConstraint("ratio > 0 AND ratio <= 1", name=op.f("ck_policies_ratio")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint("code", "version", name=op.f("uq_policies_code_version")),
    )
    op.create_table(
        "regions",
        sa.Column("code", sa.String(length=6), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("parent_code", sa.String(length=6), nullable=True),
        sa.CheckConstraint("code ~ '^[0-9]{6}$'", name=op.f("ck_regions_code_format")),
        sa.CheckConstraint("level IN ('province', 'city', 'county')", name=op.f("ck_regions_level")),
        sa.ForeignKeyConstraint(
            ["parent_code"], ["regions.code"], name=op.f("fk_regions_parent_code_regions")
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_regions")),
    )
    op.create_table(
        "residents",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("id_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("id_number_enc", sa.LargeBinary(), nullable=False),
        sa.Column("name_enc", sa.LargeBinary(), nullable=False),
        sa.Column("phone_enc", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_residents")),
        sa.UniqueConstraint("id_index", name=op.f("uq_residents_id_index")),
    )
    op.create_table(
        "organisations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.Column("hospital_level", sa.SmallInteger(), nullable=True),
        sa.Column("hospital_tier", sa.String(length=10), nullable=True),
        sa.Column("primary_kind", sa.String(length=10), nullable=True),
        sa.Column("reservation_mode", sa.String(length=10), server_default="pool", nullable=False),
        sa.CheckConstraint(
            "(kind = 'hospital') = (hospital_level IS NOT NULL AND hospital_tier IS NOT NULL)",
            name=op.f("ck_organisations_hospital_fields"),
        ),
        sa.CheckConstraint(
            "(kind = 'primary') = (primary_kind IS NOT NULL)",
            name=op.f("ck_organisations_primary_fields"),
        ),
        sa.CheckConstraint(
            "hospital_tier IS NULL OR hospital_tier IN ('provincial', 'city', 'county')",
            name=op.f("ck_organisations_hospital_tier"),
        ),
        sa.CheckConstraint(
            "kind IN ('hospital', 'primary', 'authority')", name=op.f("ck_organisations_kind")
        ),
        sa.CheckConstraint(
            "primary_kind IS NULL OR primary_kind IN ('community', 'township', 'village')",
            name=op.f("ck_organisations_primary_kind"),
        ),
        sa.CheckConstraint(
            "reservation_mode IN ('pool', 'hospital')",
            name=op.f("ck_organisations_reservation_mode"),
        ),
        sa.CheckConstraint(
            "hospital_level IS NULL OR hospital_level IN (2, 3)",
            name=op.f("ck_organisations_hospital_level"),
        ),
        sa.ForeignKeyConstraint(
            ["region_code"], ["regions.code"], name=op.f("fk_organisations_region_code_regions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organisations")),
        sa.UniqueConstraint("code", name=op.f("uq_organisations_code")),
    )
    op.create_index(op.f("ix_organisations_region_code"), "organisations", ["region_code"], unique=False)
    op.create_table(
        "alliances",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("lead_hospital_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_hospital_id"],
            ["organisations.id"],
            name=op.f("fk_alliances_lead_hospital_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alliances")),
    )
    op.create_index(op.f("ix_alliances_lead_hospital_id"), "alliances", ["lead_hospital_id"], unique=False)
    op.create_table(
        "api_clients",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("organisation_id", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("key_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('hospital', 'primary', 'platform', 'hotline', 'commission')",
            name=op.f("ck_api_clients_role"),
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_api_clients_organisation_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_clients")),
        sa.UniqueConstraint("key_digest", name=op.f("uq_api_clients_key_digest")),
    )
    op.create_index(op.f("ix_api_clients_organisation_id"), "api_clients", ["organisation_id"], unique=False)
    op.create_table(
        "departments",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("specialty", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_departments_hospital_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_departments")),
        sa.UniqueConstraint("hospital_id", "code", name=op.f("uq_departments_hospital_id_code")),
    )
    op.create_table(
        "doctors",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("organisation_id", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("title", sa.String(length=20), nullable=False),
        sa.CheckConstraint(
            "title IN ('chief', 'associate_chief', 'attending', 'resident')",
            name=op.f("ck_doctors_title"),
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_doctors_organisation_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_doctors")),
        sa.UniqueConstraint("organisation_id", "code", name=op.f("uq_doctors_organisation_id_code")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["organisations.id"], name=op.f("fk_events_hospital_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_hospital_id_id", "events", ["hospital_id", "id"], unique=False)
    op.create_table(
        "hospital_policies",
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("policy_code", sa.String(length=64), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_hospital_policies_hospital_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("hospital_id", name=op.f("pk_hospital_policies")),
    )
    op.create_table(
        "alliance_members",
        sa.Column("alliance_id", sa.BigInteger(), nullable=False),
        sa.Column("organisation_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["alliance_id"],
            ["alliances.id"],
            name=op.f("fk_alliance_members_alliance_id_alliances"),
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_alliance_members_organisation_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("alliance_id", "organisation_id", name=op.f("pk_alliance_members")),
    )
    op.create_index(
        op.f("ix_alliance_members_organisation_id"),
        "alliance_members",
        ["organisation_id"],
        unique=False,
    )
    op.create_table(
        "clinic_sessions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("department_id", sa.BigInteger(), nullable=False),
        sa.Column("doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("doctor_title", sa.String(length=20), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("withdrawn_reason", sa.Text(), nullable=True),
        sa.Column("policy_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "period IN ('morning', 'afternoon', 'evening')", name=op.f("ck_clinic_sessions_period")
        ),
        sa.CheckConstraint("status IN ('active', 'withdrawn')", name=op.f("ck_clinic_sessions_status")),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_clinic_sessions_department_id_departments"),
        ),
        sa.ForeignKeyConstraint(
            ["doctor_id"], ["doctors.id"], name=op.f("fk_clinic_sessions_doctor_id_doctors")
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_clinic_sessions_hospital_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"], ["policies.id"], name=op.f("fk_clinic_sessions_policy_id_policies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinic_sessions")),
        sa.UniqueConstraint(
            "hospital_id", "external_id", name=op.f("uq_clinic_sessions_hospital_id_external_id")
        ),
    )
    op.create_index(
        "ix_clinic_sessions_department_date",
        "clinic_sessions",
        ["department_id", "service_date"],
        unique=False,
    )
    op.create_table(
        "family_doctor_contracts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("institution_id", sa.BigInteger(), nullable=False),
        sa.Column("contract_no", sa.String(length=64), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("family_doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=False),
        sa.Column("ends_on", sa.Date(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("ends_on >= starts_on", name=op.f("ck_family_doctor_contracts_dates")),
        sa.ForeignKeyConstraint(
            ["family_doctor_id"],
            ["doctors.id"],
            name=op.f("fk_family_doctor_contracts_family_doctor_id_doctors"),
        ),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["organisations.id"],
            name=op.f("fk_family_doctor_contracts_institution_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"],
            ["residents.id"],
            name=op.f("fk_family_doctor_contracts_resident_id_residents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_family_doctor_contracts")),
        sa.UniqueConstraint(
            "institution_id",
            "contract_no",
            name=op.f("uq_family_doctor_contracts_institution_id_contract_no"),
        ),
    )
    op.create_index(
        "ix_family_doctor_contracts_resident_doctor",
        "family_doctor_contracts",
        ["resident_id", "family_doctor_id"],
        unique=False,
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("response_body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name=op.f("fk_idempotency_keys_client_id_api_clients"),
        ),
        sa.PrimaryKeyConstraint("client_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "reservation_shortfalls",
        sa.Column("department_id", sa.BigInteger(), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("actual", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('ratio', 'senior_share', 'lead_time')",
            name=op.f("ck_reservation_shortfalls_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_reservation_shortfalls_department_id_departments"),
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_reservation_shortfalls_hospital_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["policies.id"],
            name=op.f("fk_reservation_shortfalls_policy_id_policies"),
        ),
        sa.PrimaryKeyConstraint(
            "department_id", "service_date", "kind", name=op.f("pk_reservation_shortfalls")
        ),
    )
    op.create_index(
        "ix_reservation_shortfalls_hospital_date",
        "reservation_shortfalls",
        ["hospital_id", "service_date"],
        unique=False,
    )
    op.create_table(
        "slots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=True),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pool_opens_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("public_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("returned_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("ends_at - starts_at <= interval '30 minutes'", name=op.f("ck_slots_r16_length")),
        sa.CheckConstraint("pool_opens_at <= public_at - interval '1 day'", name=op.f("ck_slots_r5_lead")),
        sa.CheckConstraint(
            "status IN ('public', 'reserved', 'booked', 'returned', 'withdrawn')",
            name=op.f("ck_slots_status"),
        ),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_slots_positive_length")),
        sa.CheckConstraint("number > 0", name=op.f("ck_slots_number")),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["organisations.id"], name=op.f("fk_slots_hospital_id_organisations")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["clinic_sessions.id"], name=op.f("fk_slots_session_id_clinic_sessions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slots")),
        sa.UniqueConstraint("session_id", "number", name=op.f("uq_slots_session_id_number")),
    )
    op.create_index("ix_slots_hospital_starts_at", "slots", ["hospital_id", "starts_at"], unique=False)
    op.create_index(
        "ix_slots_reserved_public_at",
        "slots",
        ["public_at"],
        unique=False,
        postgresql_where=sa.text("status = 'reserved'"),
    )
    op.create_table(
        "referrals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("reference", sa.String(length=20), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("department_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("slot_id", sa.BigInteger(), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("booker_org_id", sa.BigInteger(), nullable=False),
        sa.Column("referring_doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("booked_by_client_id", sa.BigInteger(), nullable=False),
        sa.Column("policy_id", sa.BigInteger(), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=False),
        sa.Column("encountered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("diagnoses", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("verification_code_enc", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("booked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_by", sa.String(length=20), nullable=True),
        sa.Column("cancelled_by_client_id", sa.BigInteger(), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "(status = 'cancelled') = (cancelled_at IS NOT NULL)",
            name=op.f("ck_referrals_cancelled_at"),
        ),
        sa.CheckConstraint("status IN ('booked', 'cancelled')", name=op.f("ck_referrals_status")),
        sa.CheckConstraint("cardinality(diagnoses) >= 1", name=op.f("ck_referrals_r10_diagnosis")),
        sa.ForeignKeyConstraint(
            ["booked_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_referrals_booked_by_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["booker_org_id"],
            ["organisations.id"],
            name=op.f("fk_referrals_booker_org_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["cancelled_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_referrals_cancelled_by_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_referrals_department_id_departments"),
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_referrals_hospital_id_organisations"),
        ),
        sa.ForeignKeyConstraint(["policy_id"], ["policies.id"], name=op.f("fk_referrals_policy_id_policies")),
        sa.ForeignKeyConstraint(
            ["referring_doctor_id"],
            ["doctors.id"],
            name=op.f("fk_referrals_referring_doctor_id_doctors"),
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_referrals_resident_id_residents")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["clinic_sessions.id"],
            name=op.f("fk_referrals_session_id_clinic_sessions"),
        ),
        sa.ForeignKeyConstraint(["slot_id"], ["slots.id"], name=op.f("fk_referrals_slot_id_slots")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
        sa.UniqueConstraint("reference", name=op.f("uq_referrals_reference")),
    )
    op.create_index(
        "ix_referrals_booker_booked_at", "referrals", ["booker_org_id", "booked_at"], unique=False
    )
    op.create_index("ix_referrals_hospital_date", "referrals", ["hospital_id", "service_date"], unique=False)
    op.create_index(op.f("ix_referrals_resident_id"), "referrals", ["resident_id"], unique=False)
    op.create_index(op.f("ix_referrals_slot_id"), "referrals", ["slot_id"], unique=False)
    op.create_index(
        "uq_referrals_active_resident_department_day",
        "referrals",
        ["resident_id", "department_id", "service_date"],
        unique=True,
        postgresql_where=sa.text("status = 'booked'"),
    )
    op.create_index(
        "uq_referrals_active_slot",
        "referrals",
        ["slot_id"],
        unique=True,
        postgresql_where=sa.text("status = 'booked'"),
    )
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("actor_client_id", sa.BigInteger(), nullable=True),
        sa.Column("actor_org_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("code", sa.String(length=60), nullable=True),
        sa.Column("hospital_id", sa.BigInteger(), nullable=True),
        sa.Column("resident_id", sa.BigInteger(), nullable=True),
        sa.Column("referral_id", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_client_id"],
            ["api_clients.id"],
            name=op.f("fk_audit_entries_actor_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["actor_org_id"],
            ["organisations.id"],
            name=op.f("fk_audit_entries_actor_org_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_audit_entries_hospital_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_audit_entries_referral_id_referrals")
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_audit_entries_resident_id_residents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    op.create_index("ix_audit_entries_at", "audit_entries", ["at"], unique=False)
    op.create_index("ix_audit_entries_resident_at", "audit_entries", ["resident_id", "at"], unique=False)

    op.execute(
        """
        CREATE FUNCTION audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_entries is append-only' USING ERRCODE = 'insufficient_privilege';
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries "
        "FOR EACH ROW EXECUTE FUNCTION audit_entries_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_entries_append_only ON audit_entries")
    op.execute("DROP FUNCTION audit_entries_append_only()")
    op.drop_index("ix_audit_entries_resident_at", table_name="audit_entries")
    op.drop_index("ix_audit_entries_at", table_name="audit_entries")
    op.drop_table("audit_entries")
    op.drop_index(
        "uq_referrals_active_slot",
        table_name="referrals",
        postgresql_where=sa.text("status = 'booked'"),
    )
    op.drop_index(
        "uq_referrals_active_resident_department_day",
        table_name="referrals",
        postgresql_where=sa.text("status = 'booked'"),
    )
    op.drop_index(op.f("ix_referrals_slot_id"), table_name="referrals")
    op.drop_index(op.f("ix_referrals_resident_id"), table_name="referrals")
    op.drop_index("ix_referrals_hospital_date", table_name="referrals")
    op.drop_index("ix_referrals_booker_booked_at", table_name="referrals")
    op.drop_table("referrals")
    op.drop_index(
        "ix_slots_reserved_public_at",
        table_name="slots",
        postgresql_where=sa.text("status = 'reserved'"),
    )
    op.drop_index("ix_slots_hospital_starts_at", table_name="slots")
    op.drop_table("slots")
    op.drop_index("ix_reservation_shortfalls_hospital_date", table_name="reservation_shortfalls")
    op.drop_table("reservation_shortfalls")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_family_doctor_contracts_resident_doctor", table_name="family_doctor_contracts")
    op.drop_table("family_doctor_contracts")
    op.drop_index("ix_clinic_sessions_department_date", table_name="clinic_sessions")
    op.drop_table("clinic_sessions")
    op.drop_index(op.f("ix_alliance_members_organisation_id"), table_name="alliance_members")
    op.drop_table("alliance_members")
    op.drop_table("hospital_policies")
    op.drop_index("ix_events_hospital_id_id", table_name="events")
    op.drop_table("events")
    op.drop_table("doctors")
    op.drop_table("departments")
    op.drop_index(op.f("ix_api_clients_organisation_id"), table_name="api_clients")
    op.drop_table("api_clients")
    op.drop_index(op.f("ix_alliances_lead_hospital_id"), table_name="alliances")
    op.drop_table("alliances")
    op.drop_index(op.f("ix_organisations_region_code"), table_name="organisations")
    op.drop_table("organisations")
    op.drop_table("residents")
    op.drop_table("regions")
    op.drop_table("policies")
