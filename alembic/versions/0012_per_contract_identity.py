"""Per-contract declared identity, identity name conflicts, and the contract-source setting.

A contract keeps the name and phone its institution declared, and a referral the
name it was booked under, so that one institution's sync no longer rewrites what
another's referrals show. Existing contracts and referrals take the resident's
current name (and contracts its phone): the data step decrypts each with the
deployment's data key and re-encrypts it for its new column, whose name the
AES-GCM associated data binds. Institutions that declare different names for one
ID number are reported to the commission as ``identity_name_conflict`` rows. A
region may accept contracts from its signing platform only. See docs/identity.md.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _copy_names() -> None:
    """Give every existing contract and referral the resident's current name (and phone)."""
    from service.kit.config import get_settings
    from service.kit.crypto import Crypto

    bind = op.get_bind()
    contracts = bind.execute(
        sa.text(
            "SELECT c.id, r.name_enc, r.phone_enc FROM family_doctor_contracts c"
            " JOIN residents r ON r.id = c.resident_id ORDER BY c.id"
        )
    ).all()
    referrals = bind.execute(
        sa.text(
            "SELECT f.id, r.name_enc FROM referrals f JOIN residents r ON r.id = f.resident_id ORDER BY f.id"
        )
    ).all()
    if not contracts and not referrals:
        return
    settings = get_settings()
    crypto = Crypto(
        data_key=settings.key_bytes("data_key"),
        index_key=settings.key_bytes("index_key"),
        api_key_pepper=settings.key_bytes("api_key_pepper"),
    )

    def name(blob: bytes) -> str:
        return crypto.decrypt(bytes(blob), column="residents.name")

    if contracts:
        bind.execute(
            sa.text("UPDATE family_doctor_contracts SET name_enc = :name, phone_enc = :phone WHERE id = :id"),
            [
                {
                    "id": row.id,
                    "name": crypto.encrypt(name(row.name_enc), column="family_doctor_contracts.name"),
                    "phone": crypto.encrypt(
                        crypto.decrypt(bytes(row.phone_enc), column="residents.phone"),
                        column="family_doctor_contracts.phone",
                    )
                    if row.phone_enc is not None
                    else None,
                }
                for row in contracts
            ],
        )
    if referrals:
        bind.execute(
            sa.text("UPDATE referrals SET resident_name_enc = :name WHERE id = :id"),
            [
                {"id": row.id, "name": crypto.encrypt(name(row.name_enc), column="referrals.resident_name")}
                for row in referrals
            ],
        )


def upgrade() -> None:
    op.add_column("family_doctor_contracts", sa.Column("name_enc", sa.LargeBinary(), nullable=True))
    op.add_column("family_doctor_contracts", sa.Column("phone_enc", sa.LargeBinary(), nullable=True))
    op.add_column("referrals", sa.Column("resident_name_enc", sa.LargeBinary(), nullable=True))
    _copy_names()
    op.alter_column("family_doctor_contracts", "name_enc", nullable=False)
    op.alter_column("referrals", "resident_name_enc", nullable=False)

    op.create_table(
        "region_contract_sources",
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.Column("source", sa.String(length=12), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by_client_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("source IN ('any', 'platform')", name=op.f("ck_region_contract_sources_source")),
        sa.ForeignKeyConstraint(
            ["region_code"], ["regions.code"], name=op.f("fk_region_contract_sources_region_code_regions")
        ),
        sa.ForeignKeyConstraint(
            ["updated_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_region_contract_sources_updated_by_client_id_api_clients"),
        ),
        sa.PrimaryKeyConstraint("region_code", name=op.f("pk_region_contract_sources")),
    )

    op.create_table(
        "identity_conflicts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("signal", sa.String(length=40), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by_client_id", sa.BigInteger(), nullable=True),
        sa.Column("acknowledgement_note", sa.Text(), nullable=True),
        sa.CheckConstraint("signal IN ('identity_name_conflict')", name=op.f("ck_identity_conflicts_signal")),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'closed')", name=op.f("ck_identity_conflicts_status")
        ),
        sa.CheckConstraint(
            "(status = 'closed') = (closed_at IS NOT NULL)", name=op.f("ck_identity_conflicts_closed_at")
        ),
        sa.CheckConstraint(
            "(acknowledged_at IS NULL) = (acknowledged_by_client_id IS NULL)",
            name=op.f("ck_identity_conflicts_acknowledged"),
        ),
        sa.ForeignKeyConstraint(
            ["acknowledged_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_identity_conflicts_acknowledged_by_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_identity_conflicts_resident_id_residents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_conflicts")),
    )
    op.create_index(
        "uq_identity_conflicts_live",
        "identity_conflicts",
        ["resident_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'closed'"),
    )
    op.create_table(
        "identity_conflict_parties",
        sa.Column("conflict_id", sa.BigInteger(), nullable=False),
        sa.Column("contract_id", sa.BigInteger(), nullable=False),
        sa.Column("institution_id", sa.BigInteger(), nullable=False),
        sa.Column("name_masked", sa.String(length=100), nullable=False),
        sa.Column("name_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conflict_id"],
            ["identity_conflicts.id"],
            name=op.f("fk_identity_conflict_parties_conflict_id_identity_conflicts"),
        ),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["family_doctor_contracts.id"],
            name=op.f("fk_identity_conflict_parties_contract_id_family_doctor_contracts"),
        ),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["organisations.id"],
            name=op.f("fk_identity_conflict_parties_institution_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("conflict_id", "contract_id", name=op.f("pk_identity_conflict_parties")),
    )
    op.create_index(
        op.f("ix_identity_conflict_parties_institution_id"),
        "identity_conflict_parties",
        ["institution_id"],
        unique=False,
    )


def downgrade() -> None:
    # The declared names go with their columns: residents keep the name they were first
    # registered under, which is all the schema before this revision can show.
    op.drop_index(op.f("ix_identity_conflict_parties_institution_id"), table_name="identity_conflict_parties")
    op.drop_table("identity_conflict_parties")
    op.drop_index(
        "uq_identity_conflicts_live",
        table_name="identity_conflicts",
        postgresql_where=sa.text("status <> 'closed'"),
    )
    op.drop_table("identity_conflicts")
    op.drop_table("region_contract_sources")
    op.drop_column("referrals", "resident_name_enc")
    op.drop_column("family_doctor_contracts", "phone_enc")
    op.drop_column("family_doctor_contracts", "name_enc")
