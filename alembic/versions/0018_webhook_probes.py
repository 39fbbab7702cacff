"""Webhook endpoints remember when to probe an unreachable receiver again.

``webhook_endpoints.probe_at``: set when a request to the endpoint got no answer (refused,
reset, timed out) or a gateway's 502/503/504; from then on the dispatcher re-sends the
queue's head every few seconds, between the retries of the backoff schedule, so the queue
resumes as soon as the receiver is back. Cleared by the first delivery that succeeds. See
docs/webhooks.md.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A nullable column that older builds never read: their dispatchers keep the backoff schedule.
EXPAND_ONLY = True


def upgrade() -> None:
    op.add_column("webhook_endpoints", sa.Column("probe_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_endpoints", "probe_at")
