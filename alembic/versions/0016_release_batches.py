"""The release (R6) in batches of thousands: a trigger linear in any plan, an index to resume by.

**The availability counts' UPDATE trigger costs the same per row whatever plan it cached.**

PL/pgSQL plans the trigger's statement once per connection and keeps that plan. The
statement of 0009 joined the transition tables ``old_slots`` and ``new_slots`` on ``id``;
planned for the one row a booking changes, that join is a nested loop, and the same
connection later flipping 10,000 slots in one statement (the release, R6) compared every
old row with every new one: seconds per batch, growing with its square. Planned for a big
statement instead, the lookup of the sessions became a hash join over every clinic session,
which each later one-row booking then paid.

Now the net change of a statement is summed from the two transition tables without joining
them (each old row counts -1, each new row +1, per session and window), groups whose net
change is nil are dropped, and each group's session is looked up on its own by its key.
Every step is linear in the rows changed, whatever their number was when the plan was made.
The counts are the same as before; what no longer happens is a stamp (``changed_xid``) on a
row whose counts a statement left as they were.

**The due reserved slots are indexed by (public_at, session_id).** The release claims them in
that order, a batch at a time, and starts each batch where the last one ended; with
``public_at`` alone, a whole region releasing at one instant is one run of equal keys, and
every batch walked again past the entries of the slots the batches before it had returned
(dead, but still in the index until vacuum). The session as second key also keeps a session's
slots together, so a batch boundary splits at most one session into two events.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Builds at 0015 write slots as before; the counts they get are the same.
EXPAND_ONLY = True

_UPSERT = """
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
    {_UPSERT}
"""

# 0009's statement, for the downgrade.
_JOINED = f"""
    INSERT INTO availability_counts AS c
        (session_id, pool_opens_at, public_at, hospital_id, department_id, service_date, period, resource_kind, doctor_title, modality, ward_code, ward_name,
         public, reserved, booked, returned, changed_xid)
    SELECT d.session_id, d.pool_opens_at, d.public_at, cs.hospital_id, cs.department_id, cs.service_date, cs.period, cs.resource_kind, CASE WHEN cs.resource_kind = 'outpatient' THEN cs.doctor_title END, cs.modality, cs.ward_code, cs.ward_name,
           coalesce(sum(d.n) FILTER (WHERE d.status = 'public'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.status = 'reserved'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.status = 'booked'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.status = 'returned'), 0),
           pg_current_xact_id()
    FROM (
    SELECT o.session_id, o.pool_opens_at, o.public_at, o.status, -1 AS n
    FROM old_slots o JOIN new_slots n ON n.id = o.id
    WHERE (o.session_id, o.pool_opens_at, o.public_at, o.status)
          IS DISTINCT FROM (n.session_id, n.pool_opens_at, n.public_at, n.status)
    UNION ALL
    SELECT n.session_id, n.pool_opens_at, n.public_at, n.status, 1 AS n
    FROM old_slots o JOIN new_slots n ON n.id = o.id
    WHERE (o.session_id, o.pool_opens_at, o.public_at, o.status)
          IS DISTINCT FROM (n.session_id, n.pool_opens_at, n.public_at, n.status)
) AS d
    JOIN clinic_sessions cs ON cs.id = d.session_id
    WHERE d.status <> 'withdrawn'
    GROUP BY d.session_id, d.pool_opens_at, d.public_at, cs.id
    ORDER BY d.session_id, d.pool_opens_at, d.public_at
    {_UPSERT}
"""


def _replace(statement: str) -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION availability_counts_slots_update() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{statement};\nRETURN NULL;\nEND;\n$$"
    )


def upgrade() -> None:
    _replace(_NET_CHANGE)
    op.create_index(
        "ix_slots_reserved_public_at_session_id",
        "slots",
        ["public_at", "session_id"],
        unique=False,
        postgresql_where=sa.text("status = 'reserved'"),
    )
    op.drop_index(
        "ix_slots_reserved_public_at", table_name="slots", postgresql_where=sa.text("status = 'reserved'")
    )


def downgrade() -> None:
    op.create_index(
        "ix_slots_reserved_public_at",
        "slots",
        ["public_at"],
        unique=False,
        postgresql_where=sa.text("status = 'reserved'"),
    )
    op.drop_index(
        "ix_slots_reserved_public_at_session_id",
        table_name="slots",
        postgresql_where=sa.text("status = 'reserved'"),
    )
    _replace(_JOINED)
