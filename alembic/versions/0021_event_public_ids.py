"""Events get an opaque public id; webhook endpoints remember their last test event.

**``events.public_id``** is the ``webhook-id`` a receiver deduplicates on: ``evt_`` and the
32 hex digits of a random UUID, set by the column's default on insert, unique. Until now the
webhook-id was ``evt_<events.id>``, which told every receiver how many events the region had
written and in what order. The bigint ``id`` stays and still orders the outbox.

Events already written keep ``public_id`` NULL and their webhook-id ``evt_<id>``: they may
have been delivered under that id, and a retry or replay must carry the same one. So the
column is added without a default (no table rewrite, no backfill of a table that grows with
every booking), and the default is set afterwards, for new rows only.

**``webhook_endpoints.test_sent_at``**: when the endpoint's owner last asked for a test event
(``POST /v1/webhooks/endpoints/{id}/test``), which allows one per endpoint per interval.

Not expand-only: a build at 0018 would sign the new events with ``evt_<id>``, not their
stored id, so one event could reach a receiver under two ids (docs/webhooks.md, "Event ids").

Revision ID: 0021
Revises: 0018
Create Date: 2026-12-12 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPAND_ONLY = False

PUBLIC_ID_SQL = "'evt_' || replace(gen_random_uuid()::text, '-', '')"


def upgrade() -> None:
    op.add_column("events", sa.Column("public_id", sa.String(40), nullable=True))
    op.execute(f"ALTER TABLE events ALTER COLUMN public_id SET DEFAULT {PUBLIC_ID_SQL}")
    op.create_index("ix_events_public_id", "events", ["public_id"], unique=True)
    op.add_column("webhook_endpoints", sa.Column("test_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_endpoints", "test_sent_at")
    op.drop_index("ix_events_public_id", table_name="events")
    op.drop_column("events", "public_id")
