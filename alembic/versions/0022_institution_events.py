"""Primary institutions receive events: endpoints belong to an organisation, events name their recipient.

**``webhook_endpoints.hospital_id`` becomes ``organisation_id``**: the owner of the endpoint, a
hospital or (now) a primary institution, whose family-doctor app's backend registers endpoints
the way a HIS does. Renamed in place (constraint and index with it): no data moves.

**``events.recipient_id``**: the organisation whose endpoints receive the event. ``hospital_id``
stays the hospital the event is about (the key docs/performance.md would distribute events by);
for a hospital's own events the two are equal, for an institution's events (its referral
cancelled, received, attended; a no-show bar of its resident) the recipient is the booker.
Existing events were all the hospital's: backfilled with ``hospital_id``, then ``NOT NULL``.

Not expand-only: a build at 0021 reads and writes ``webhook_endpoints.hospital_id`` and writes
events without a recipient (docs/webhooks.md, "Who receives what").

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-14 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPAND_ONLY = False


def upgrade() -> None:
    op.alter_column("webhook_endpoints", "hospital_id", new_column_name="organisation_id")
    op.execute(
        "ALTER TABLE webhook_endpoints RENAME CONSTRAINT fk_webhook_endpoints_hospital_id_organisations"
        " TO fk_webhook_endpoints_organisation_id_organisations"
    )
    op.execute("ALTER INDEX ix_webhook_endpoints_hospital_id RENAME TO ix_webhook_endpoints_organisation_id")
    op.add_column("events", sa.Column("recipient_id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE events SET recipient_id = hospital_id")
    op.alter_column("events", "recipient_id", nullable=False)
    op.create_foreign_key(
        op.f("fk_events_recipient_id_organisations"), "events", "organisations", ["recipient_id"], ["id"]
    )


def downgrade() -> None:
    # An institution's events and endpoints have no place in the older shape.
    op.execute(
        "DELETE FROM webhook_deliveries WHERE event_id IN (SELECT id FROM events WHERE recipient_id <> hospital_id)"
    )
    op.execute("DELETE FROM events WHERE recipient_id <> hospital_id")
    op.execute(
        "DELETE FROM webhook_endpoints WHERE organisation_id IN"
        " (SELECT id FROM organisations WHERE kind <> 'hospital')"
    )
    op.drop_constraint(op.f("fk_events_recipient_id_organisations"), "events", type_="foreignkey")
    op.drop_column("events", "recipient_id")
    op.execute("ALTER INDEX ix_webhook_endpoints_organisation_id RENAME TO ix_webhook_endpoints_hospital_id")
    op.execute(
        "ALTER TABLE webhook_endpoints RENAME CONSTRAINT fk_webhook_endpoints_organisation_id_organisations"
        " TO fk_webhook_endpoints_hospital_id_organisations"
    )
    op.alter_column("webhook_endpoints", "organisation_id", new_column_name="hospital_id")
