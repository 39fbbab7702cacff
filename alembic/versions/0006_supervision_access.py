"""Access suspensions and revocations (R14); the audit trail's query indexes and TRUNCATE guard (R15).

A suspension or revocation is a row per action on one subject (a family doctor,
an institution or an API client), with its reason, and its reinstatement when
it ends. A partial unique index allows one open action per subject and serves
the check every request makes.

The audit table gains indexes for the commission's queries by actor and by
resident (list reads name their residents in detail.resident_ids), and a
statement trigger that refuses TRUNCATE, which the row triggers of 0001 do
not see. Every role is refused, the table's owner and superusers included,
unless it turns triggers off for its session (session_replication_role).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "access_suspensions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("subject_type", sa.String(length=12), nullable=False),
        sa.Column("subject_id", sa.BigInteger(), nullable=False),
        sa.Column("organisation_id", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_client_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "cancelled_references", sa.ARRAY(sa.String(length=20)), server_default="{}", nullable=False
        ),
        sa.Column("reinstated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reinstated_by_client_id", sa.BigInteger(), nullable=True),
        sa.Column("reinstate_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "subject_type IN ('doctor', 'institution', 'api_client')",
            name=op.f("ck_access_suspensions_subject_type"),
        ),
        sa.CheckConstraint("mode IN ('suspended', 'revoked')", name=op.f("ck_access_suspensions_mode")),
        sa.CheckConstraint(
            "mode = 'suspended' OR until IS NULL", name=op.f("ck_access_suspensions_revoked_has_no_until")
        ),
        sa.CheckConstraint(
            "until IS NULL OR until > created_at", name=op.f("ck_access_suspensions_until_after_created")
        ),
        sa.CheckConstraint(
            "(reinstated_at IS NULL) = (reinstate_reason IS NULL)"
            " AND (reinstated_by_client_id IS NULL OR reinstated_at IS NOT NULL)",
            name=op.f("ck_access_suspensions_reinstated"),
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_access_suspensions_organisation_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_access_suspensions_created_by_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["reinstated_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_access_suspensions_reinstated_by_client_id_api_clients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_suspensions")),
    )
    op.create_index(
        "uq_access_suspensions_active_subject",
        "access_suspensions",
        ["subject_type", "subject_id"],
        unique=True,
        postgresql_where=sa.text("reinstated_at IS NULL"),
    )
    op.create_index(
        "ix_access_suspensions_organisation_id", "access_suspensions", ["organisation_id", "id"], unique=False
    )

    op.create_index(
        "ix_audit_entries_actor_client_id", "audit_entries", ["actor_client_id", "id"], unique=False
    )
    op.create_index("ix_audit_entries_actor_org_id", "audit_entries", ["actor_org_id", "id"], unique=False)
    op.create_index(
        "ix_audit_entries_resident_ids",
        "audit_entries",
        [sa.text("(detail -> 'resident_ids')")],
        unique=False,
        postgresql_using="gin",
    )
    # The function of 0001 raises for any trigger; here it fires once per TRUNCATE statement.
    op.execute(
        "CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_entries_no_truncate ON audit_entries")
    op.drop_index("ix_audit_entries_resident_ids", table_name="audit_entries", postgresql_using="gin")
    op.drop_index("ix_audit_entries_actor_org_id", table_name="audit_entries")
    op.drop_index("ix_audit_entries_actor_client_id", table_name="audit_entries")
    op.drop_index("ix_access_suspensions_organisation_id", table_name="access_suspensions")
    op.drop_index(
        "uq_access_suspensions_active_subject",
        table_name="access_suspensions",
        postgresql_where=sa.text("reinstated_at IS NULL"),
    )
    op.drop_table("access_suspensions")
