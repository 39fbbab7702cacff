"""The waiting list (候补): entries, offers, the slot status ``offered`` and two policy fields.

**Entries** (``waitlist_entries``): a resident waiting for one hospital's department (a modality,
a ward) over a date range, with the consultation and diagnoses a booking needs. At most one
waiting entry per resident, hospital and department (a partial unique index).

**Offers** (``waitlist_offers``): a freed slot held for one entry until ``expires_at``. The slot
is claimed from ``reserved`` to ``offered`` by the same conditional UPDATE a booking claims it
with, so a slot is ``booked`` or ``offered`` or neither, never both; the partial unique indexes
allow one pending offer per slot and per entry; the trigger refuses a pending offer whose slot
the inserting transaction has not claimed (``offered``). docs/waitlist.md.

**The release index** now covers ``offered`` slots too: at ``public_at`` an offered slot goes to
the public like a reserved one, and its pending offer lapses in the same statement.

**Policies** get ``waitlist_offer_hold_minutes`` (default 10) and ``waitlist_urgent_priority``
(default false).

Not expand-only: a build at 0021 knows no ``offered`` slot and would count it nowhere.

Revision ID: 0023
Revises: 0021
Create Date: 2026-12-14 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPAND_ONLY = False

_KINDS = "('outpatient', 'examination', 'bed')"

# The availability counts (revisions 0009, 0016) count an offered slot as held, with the booked
# ones: it is no longer open to anyone but its offer, and it is still one of the pool's slots, so
# the feed shows it as taken and the report's ``reserved`` (reserved + booked + returned) keeps it.
_UPSERT = """
    ON CONFLICT (session_id, pool_opens_at, public_at) DO UPDATE SET
        public = c.public + excluded.public,
        reserved = c.reserved + excluded.reserved,
        booked = c.booked + excluded.booked,
        returned = c.returned + excluded.returned,
        changed_xid = excluded.changed_xid
"""

_NET_CHANGE_HELD = f"""
    INSERT INTO availability_counts AS c
        (session_id, pool_opens_at, public_at, hospital_id, department_id, service_date, period,
         resource_kind, doctor_title, modality, ward_code, ward_name,
         public, reserved, booked, returned, changed_xid)
    SELECT d.session_id, d.pool_opens_at, d.public_at, cs.hospital_id, cs.department_id,
           cs.service_date, cs.period, cs.resource_kind, cs.doctor_title, cs.modality,
           cs.ward_code, cs.ward_name, d.public, d.reserved, d.booked, d.returned,
           pg_current_xact_id()
    FROM (
        SELECT x.session_id, x.pool_opens_at, x.public_at,
               coalesce(sum(x.n) FILTER (WHERE x.status = 'public'), 0) AS public,
               coalesce(sum(x.n) FILTER (WHERE x.status = 'reserved'), 0) AS reserved,
               coalesce(sum(x.n) FILTER (WHERE x.status IN ('booked', 'offered')), 0) AS booked,
               coalesce(sum(x.n) FILTER (WHERE x.status = 'returned'), 0) AS returned
        FROM (
            SELECT session_id, pool_opens_at, public_at, status, -1 AS n
            FROM old_slots WHERE status <> 'withdrawn'
            UNION ALL
            SELECT session_id, pool_opens_at, public_at, status, 1 AS n
            FROM new_slots WHERE status <> 'withdrawn'
        ) AS x
        GROUP BY x.session_id, x.pool_opens_at, x.public_at
    ) AS d
    -- OFFSET 0 keeps the lookup a per-group index probe: never a hash over every session.
    CROSS JOIN LATERAL (
        SELECT s.hospital_id, s.department_id, s.service_date, s.period, s.resource_kind,
               CASE WHEN s.resource_kind = 'outpatient' THEN s.doctor_title END AS doctor_title,
               s.modality, s.ward_code, s.ward_name
        FROM clinic_sessions s
        WHERE s.id = d.session_id
        OFFSET 0
    ) AS cs
    WHERE (d.public, d.reserved, d.booked, d.returned) <> (0, 0, 0, 0)
    ORDER BY d.session_id, d.pool_opens_at, d.public_at
    {_UPSERT}
"""


# 0016's statement, for the downgrade.
_UPSERT_0016 = """
    ON CONFLICT (session_id, pool_opens_at, public_at) DO UPDATE SET
        public = c.public + excluded.public,
        reserved = c.reserved + excluded.reserved,
        booked = c.booked + excluded.booked,
        returned = c.returned + excluded.returned,
        changed_xid = excluded.changed_xid
"""

_NET_CHANGE = f"""
    INSERT INTO availability_counts AS c
        (session_id, pool_opens_at, public_at, hospital_id, department_id, service_date, period,
         resource_kind, doctor_title, modality, ward_code, ward_name,
         public, reserved, booked, returned, changed_xid)
    SELECT d.session_id, d.pool_opens_at, d.public_at, cs.hospital_id, cs.department_id,
           cs.service_date, cs.period, cs.resource_kind, cs.doctor_title, cs.modality,
           cs.ward_code, cs.ward_name, d.public, d.reserved, d.booked, d.returned,
           pg_current_xact_id()
    FROM (
        SELECT x.session_id, x.pool_opens_at, x.public_at,
               coalesce(sum(x.n) FILTER (WHERE x.status = 'public'), 0) AS public,
               coalesce(sum(x.n) FILTER (WHERE x.status = 'reserved'), 0) AS reserved,
               coalesce(sum(x.n) FILTER (WHERE x.status = 'booked'), 0) AS booked,
               coalesce(sum(x.n) FILTER (WHERE x.status = 'returned'), 0) AS returned
        FROM (
            SELECT session_id, pool_opens_at, public_at, status, -1 AS n
            FROM old_slots WHERE status <> 'withdrawn'
            UNION ALL
            SELECT session_id, pool_opens_at, public_at, status, 1 AS n
            FROM new_slots WHERE status <> 'withdrawn'
        ) AS x
        GROUP BY x.session_id, x.pool_opens_at, x.public_at
    ) AS d
    -- OFFSET 0 keeps the lookup a per-group index probe: never a hash over every session.
    CROSS JOIN LATERAL (
        SELECT s.hospital_id, s.department_id, s.service_date, s.period, s.resource_kind,
               CASE WHEN s.resource_kind = 'outpatient' THEN s.doctor_title END AS doctor_title,
               s.modality, s.ward_code, s.ward_name
        FROM clinic_sessions s
        WHERE s.id = d.session_id
        OFFSET 0
    ) AS cs
    WHERE (d.public, d.reserved, d.booked, d.returned) <> (0, 0, 0, 0)
    ORDER BY d.session_id, d.pool_opens_at, d.public_at
    {_UPSERT_0016}
"""


def _replace_net_change(statement: str) -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION availability_counts_slots_update() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{statement};\nRETURN NULL;\nEND;\n$$"
    )


_OFFER_NEEDS_CLAIM = """
CREATE FUNCTION waitlist_offer_needs_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' AND NOT EXISTS (
        SELECT 1 FROM slots WHERE id = NEW.slot_id AND status = 'offered'
    ) THEN
        RAISE EXCEPTION 'a pending offer needs its slot claimed as offered (slot %)', NEW.slot_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_waitlist_offers_slot_claimed';
    END IF;
    RETURN NEW;
END;
$$
"""


def upgrade() -> None:
    op.drop_constraint(op.f("ck_slots_status"), "slots", type_="check")
    op.create_check_constraint(
        op.f("ck_slots_status"),
        "slots",
        "status IN ('public', 'reserved', 'offered', 'booked', 'returned', 'withdrawn')",
    )
    _replace_net_change(_NET_CHANGE_HELD)
    op.drop_index(
        "ix_slots_reserved_public_at_session_id",
        table_name="slots",
        postgresql_where=sa.text("status = 'reserved'"),
    )
    op.create_index(
        "ix_slots_reserved_public_at_session_id",
        "slots",
        ["public_at", "session_id"],
        unique=False,
        postgresql_where=sa.text("status IN ('reserved', 'offered')"),
    )
    op.add_column(
        "policies",
        sa.Column("waitlist_offer_hold_minutes", sa.Integer(), server_default="10", nullable=False),
    )
    op.add_column(
        "policies",
        sa.Column("waitlist_urgent_priority", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_policies_waitlist_offer_hold"), "policies", "waitlist_offer_hold_minutes BETWEEN 1 AND 1440"
    )
    op.create_table(
        "waitlist_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("reference", sa.String(length=20), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("department_id", sa.BigInteger(), nullable=False),
        sa.Column("resource_kind", sa.String(length=12), nullable=False),
        sa.Column("modality", sa.String(length=20), nullable=True),
        sa.Column("ward_code", sa.String(length=64), nullable=True),
        sa.Column("from_date", sa.Date(), nullable=False),
        sa.Column("to_date", sa.Date(), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("resident_name_enc", sa.LargeBinary(), nullable=False),
        sa.Column("booker_org_id", sa.BigInteger(), nullable=False),
        sa.Column("referring_doctor_id", sa.BigInteger(), nullable=False),
        sa.Column("created_by_client_id", sa.BigInteger(), nullable=False),
        sa.Column("policy_id", sa.BigInteger(), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=False),
        sa.Column("encountered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("diagnoses", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("urgent", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("urgent_reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("referral_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('waiting', 'booked', 'withdrawn', 'expired')", name=op.f("ck_waitlist_entries_status")
        ),
        sa.CheckConstraint(
            "(status = 'waiting') = (closed_at IS NULL)", name=op.f("ck_waitlist_entries_closed_at")
        ),
        sa.CheckConstraint(
            "(status = 'booked') = (referral_id IS NOT NULL)", name=op.f("ck_waitlist_entries_referral")
        ),
        sa.CheckConstraint("to_date >= from_date", name=op.f("ck_waitlist_entries_date_range")),
        sa.CheckConstraint(f"resource_kind IN {_KINDS}", name=op.f("ck_waitlist_entries_resource_kind")),
        sa.CheckConstraint("cardinality(diagnoses) >= 1", name=op.f("ck_waitlist_entries_r10_diagnosis")),
        sa.CheckConstraint(
            "urgent = (urgent_reason IS NOT NULL)", name=op.f("ck_waitlist_entries_urgent_reason")
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["organisations.id"], name=op.f("fk_waitlist_entries_hospital_id_organisations")
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_waitlist_entries_department_id_departments")
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_waitlist_entries_resident_id_residents")
        ),
        sa.ForeignKeyConstraint(
            ["booker_org_id"],
            ["organisations.id"],
            name=op.f("fk_waitlist_entries_booker_org_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["referring_doctor_id"],
            ["doctors.id"],
            name=op.f("fk_waitlist_entries_referring_doctor_id_doctors"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_waitlist_entries_created_by_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"], ["policies.id"], name=op.f("fk_waitlist_entries_policy_id_policies")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_waitlist_entries_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
        sa.UniqueConstraint("reference", name=op.f("uq_waitlist_entries_reference")),
    )
    op.create_index(
        "uq_waitlist_entries_waiting_resident_department",
        "waitlist_entries",
        ["resident_id", "hospital_id", "department_id"],
        unique=True,
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.create_index(
        "ix_waitlist_entries_line",
        "waitlist_entries",
        ["hospital_id", "department_id", "created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.create_index(
        "ix_waitlist_entries_doctor_created_at", "waitlist_entries", ["referring_doctor_id", "created_at"]
    )
    op.create_index(
        "ix_waitlist_entries_booker_created_at", "waitlist_entries", ["booker_org_id", "created_at"]
    )
    op.create_table(
        "waitlist_offers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("reference", sa.String(length=20), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("slot_id", sa.BigInteger(), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("booker_org_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("referral_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'accepted', 'declined', 'expired', 'lapsed', 'withdrawn')",
            name=op.f("ck_waitlist_offers_status"),
        ),
        sa.CheckConstraint(
            "(status = 'pending') = (closed_at IS NULL)", name=op.f("ck_waitlist_offers_closed_at")
        ),
        sa.CheckConstraint(
            "(status = 'accepted') = (referral_id IS NOT NULL)", name=op.f("ck_waitlist_offers_referral")
        ),
        sa.CheckConstraint("expires_at > offered_at", name=op.f("ck_waitlist_offers_hold")),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["waitlist_entries.id"], name=op.f("fk_waitlist_offers_entry_id_waitlist_entries")
        ),
        sa.ForeignKeyConstraint(["slot_id"], ["slots.id"], name=op.f("fk_waitlist_offers_slot_id_slots")),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["organisations.id"], name=op.f("fk_waitlist_offers_hospital_id_organisations")
        ),
        sa.ForeignKeyConstraint(
            ["booker_org_id"],
            ["organisations.id"],
            name=op.f("fk_waitlist_offers_booker_org_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_waitlist_offers_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_offers")),
        sa.UniqueConstraint("reference", name=op.f("uq_waitlist_offers_reference")),
        sa.UniqueConstraint("entry_id", "slot_id", name=op.f("uq_waitlist_offers_entry_id_slot_id")),
    )
    op.create_index(
        "uq_waitlist_offers_pending_slot",
        "waitlist_offers",
        ["slot_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "uq_waitlist_offers_pending_entry",
        "waitlist_offers",
        ["entry_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_waitlist_offers_pending_expires_at",
        "waitlist_offers",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.execute(_OFFER_NEEDS_CLAIM)
    op.execute(
        "CREATE TRIGGER waitlist_offer_needs_claim BEFORE INSERT OR UPDATE OF status, slot_id ON waitlist_offers"
        " FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION waitlist_offer_needs_claim()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER waitlist_offer_needs_claim ON waitlist_offers")
    op.execute("DROP FUNCTION waitlist_offer_needs_claim()")
    op.drop_table("waitlist_offers")
    op.drop_table("waitlist_entries")
    op.drop_constraint(op.f("ck_policies_waitlist_offer_hold"), "policies", type_="check")
    op.drop_column("policies", "waitlist_urgent_priority")
    op.drop_column("policies", "waitlist_offer_hold_minutes")
    op.drop_index(
        "ix_slots_reserved_public_at_session_id",
        table_name="slots",
        postgresql_where=sa.text("status IN ('reserved', 'offered')"),
    )
    op.create_index(
        "ix_slots_reserved_public_at_session_id",
        "slots",
        ["public_at", "session_id"],
        unique=False,
        postgresql_where=sa.text("status = 'reserved'"),
    )
    op.execute("UPDATE slots SET status = 'reserved' WHERE status = 'offered'")
    _replace_net_change(_NET_CHANGE)
    op.drop_constraint(op.f("ck_slots_status"), "slots", type_="check")
    op.create_check_constraint(
        op.f("ck_slots_status"),
        "slots",
        "status IN ('public', 'reserved', 'booked', 'returned', 'withdrawn')",
    )
