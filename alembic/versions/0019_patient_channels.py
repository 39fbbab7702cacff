"""What reaches the patient: hospital contact data, what to bring, the slip's ID mask, and a
region's SMS templates and booking deep links.

- ``organisations.address_line``, ``postal_code``, ``phone``: printed on the slip and served on
  FHIR's Location; set by the commission for its region or by a hospital for itself.
- ``policies.what_to_bring``, ``slip_id_keep_first``, ``slip_id_keep_last``: policy data printed
  on the slip; the mask keeps at most the first 6 and last 4 characters (6 and 4 by default).
- ``region_notice_settings``: per division, the SMS signature and template codes and the
  booking deep-link URL template, set by the commission.

See docs/slip.md and docs/fhir.md.

Revision ID: 0022
Revises: 0018
Create Date: 2026-12-02 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New nullable columns, columns with defaults, and a new table: older builds neither read nor
# miss them, and their inserts of policies take the defaults.
EXPAND_ONLY = True

WHAT_TO_BRING = "本人身份证（或社会保障卡）、医保卡、本转诊单，以及近期的检查检验报告"


def upgrade() -> None:
    op.add_column("organisations", sa.Column("address_line", sa.String(length=200), nullable=True))
    op.add_column("organisations", sa.Column("postal_code", sa.String(length=6), nullable=True))
    op.add_column("organisations", sa.Column("phone", sa.String(length=40), nullable=True))
    op.add_column(
        "policies", sa.Column("what_to_bring", sa.Text(), server_default=WHAT_TO_BRING, nullable=False)
    )
    op.add_column(
        "policies", sa.Column("slip_id_keep_first", sa.SmallInteger(), server_default="6", nullable=False)
    )
    op.add_column(
        "policies", sa.Column("slip_id_keep_last", sa.SmallInteger(), server_default="4", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_policies_slip_id_mask"),
        "policies",
        "slip_id_keep_first BETWEEN 0 AND 6 AND slip_id_keep_last BETWEEN 0 AND 4",
    )
    op.create_table(
        "region_notice_settings",
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.Column("sms_sign_name", sa.String(length=20), nullable=True),
        sa.Column("sms_template_booked", sa.String(length=40), nullable=True),
        sa.Column("sms_template_cancelled", sa.String(length=40), nullable=True),
        sa.Column("booking_link_template", sa.String(length=500), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by_client_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "booking_link_template IS NULL OR booking_link_template LIKE 'https://%'",
            name=op.f("ck_region_notice_settings_booking_link_https"),
        ),
        sa.ForeignKeyConstraint(
            ["region_code"], ["regions.code"], name=op.f("fk_region_notice_settings_region_code_regions")
        ),
        sa.ForeignKeyConstraint(
            ["updated_by_client_id"],
            ["api_clients.id"],
            name=op.f("fk_region_notice_settings_updated_by_client_id_api_clients"),
        ),
        sa.PrimaryKeyConstraint("region_code", name=op.f("pk_region_notice_settings")),
    )


def downgrade() -> None:
    op.drop_table("region_notice_settings")
    op.drop_constraint(op.f("ck_policies_slip_id_mask"), "policies", type_="check")
    for column in ("slip_id_keep_last", "slip_id_keep_first", "what_to_bring"):
        op.drop_column("policies", column)
    for column in ("phone", "postal_code", "address_line"):
        op.drop_column("organisations", column)
