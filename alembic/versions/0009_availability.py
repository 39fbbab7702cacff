"""Availability counts for regional platforms, maintained by triggers on slots and sessions.

One row per clinic session and pool window (``pool_opens_at``, ``public_at``)
holds how many of its live slots are public, reserved, booked and returned.
Statement-level triggers on ``slots`` apply the net change of each statement
(sorted by key, so concurrent statements lock rows in the same order), and
stamp the row with the writing transaction's ID (``changed_xid``), which the
feed's ``since`` cursor compares against a reader's snapshot xmin. A trigger
on ``clinic_sessions`` copies a session's group keys (period, resource kind
and what the kind names: the doctor's title of a visit, the modality of an
examination, the ward of a bed day), kept here so reads need no join, and
stamps its rows when they or its status change. Withdrawn slots are not
counted. See docs/availability.md.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


class _Xid8(sa.types.UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction ID (no wraparound), as pg_current_xact_id() returns."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The net change of one statement, as rows (session_id, pool_opens_at, public_at, status, n).
_INSERTED = "SELECT session_id, pool_opens_at, public_at, status, 1 AS n FROM new_slots"
_DELETED = "SELECT session_id, pool_opens_at, public_at, status, -1 AS n FROM old_slots"
_UPDATED = """
    SELECT o.session_id, o.pool_opens_at, o.public_at, o.status, -1 AS n
    FROM old_slots o JOIN new_slots n ON n.id = o.id
    WHERE (o.session_id, o.pool_opens_at, o.public_at, o.status)
          IS DISTINCT FROM (n.session_id, n.pool_opens_at, n.public_at, n.status)
    UNION ALL
    SELECT n.session_id, n.pool_opens_at, n.public_at, n.status, 1 AS n
    FROM old_slots o JOIN new_slots n ON n.id = o.id
    WHERE (o.session_id, o.pool_opens_at, o.public_at, o.status)
          IS DISTINCT FROM (n.session_id, n.pool_opens_at, n.public_at, n.status)
"""


# What a count row copies from its session ``cs``: the feed's group keys (and the ward's name). A
# visit is grouped by its doctor's title, an examination by its modality, a bed day by its ward;
# an examination's optional doctor is no group key, so its title is not copied.
_SESSION_COLUMNS = {
    "hospital_id": "cs.hospital_id",
    "department_id": "cs.department_id",
    "service_date": "cs.service_date",
    "period": "cs.period",
    "resource_kind": "cs.resource_kind",
    "doctor_title": "CASE WHEN cs.resource_kind = 'outpatient' THEN cs.doctor_title END",
    "modality": "cs.modality",
    "ward_code": "cs.ward_code",
    "ward_name": "cs.ward_name",
}
# A change of any of these session columns rewrites and stamps the session's rows.
_SESSION_WATCHED = (*_SESSION_COLUMNS, "status")


def _apply(changes: str) -> str:
    return f"""
    INSERT INTO availability_counts AS c
        (session_id, pool_opens_at, public_at, {", ".join(_SESSION_COLUMNS)},
         public, reserved, booked, returned, changed_xid)
    SELECT d.session_id, d.pool_opens_at, d.public_at, {", ".join(_SESSION_COLUMNS.values())},
           coalesce(sum(d.n) FILTER (WHERE d.status = 'public'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.status = 'reserved'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.status = 'booked'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.status = 'returned'), 0),
           pg_current_xact_id()
    FROM ({changes}) AS d
    JOIN clinic_sessions cs ON cs.id = d.session_id
    WHERE d.status <> 'withdrawn'
    GROUP BY d.session_id, d.pool_opens_at, d.public_at, cs.id
    ORDER BY d.session_id, d.pool_opens_at, d.public_at
    ON CONFLICT (session_id, pool_opens_at, public_at) DO UPDATE SET
        public = c.public + excluded.public,
        reserved = c.reserved + excluded.reserved,
        booked = c.booked + excluded.booked,
        returned = c.returned + excluded.returned,
        changed_xid = excluded.changed_xid
    """


_TRIGGERS = {
    # name: (event, REFERENCING clause, changes)
    "availability_counts_slots_insert": ("INSERT", "NEW TABLE AS new_slots", _INSERTED),
    # PostgreSQL allows no column list with transition tables; _UPDATED skips rows whose counted
    # columns did not change.
    "availability_counts_slots_update": ("UPDATE", "OLD TABLE AS old_slots NEW TABLE AS new_slots", _UPDATED),
    "availability_counts_slots_delete": ("DELETE", "OLD TABLE AS old_slots", _DELETED),
}


def upgrade() -> None:
    op.create_table(
        "availability_counts",
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("pool_opens_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("public_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("department_id", sa.BigInteger(), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("resource_kind", sa.String(length=12), nullable=False),
        sa.Column("doctor_title", sa.String(length=20), nullable=True),
        sa.Column("modality", sa.String(length=20), nullable=True),
        sa.Column("ward_code", sa.String(length=64), nullable=True),
        sa.Column("ward_name", sa.String(length=200), nullable=True),
        sa.Column("public", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("booked", sa.Integer(), nullable=False),
        sa.Column("returned", sa.Integer(), nullable=False),
        sa.Column("changed_xid", _Xid8(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["clinic_sessions.id"],
            name=op.f("fk_availability_counts_session_id_clinic_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_availability_counts_hospital_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name=op.f("fk_availability_counts_department_id_departments"),
        ),
        sa.PrimaryKeyConstraint(
            "session_id", "pool_opens_at", "public_at", name=op.f("pk_availability_counts")
        ),
    )
    op.create_index(
        "ix_availability_counts_hospital_date",
        "availability_counts",
        ["hospital_id", "service_date"],
        unique=False,
    )
    for name, (event, referencing, changes) in _TRIGGERS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{_apply(changes)};\nRETURN NULL;\nEND;\n$$"
        )
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON slots REFERENCING {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )
    copy = ",\n                ".join(
        f"{c} = {e.replace('cs.', 'NEW.')}" for c, e in _SESSION_COLUMNS.items()
    )
    op.execute(
        f"""
        CREATE FUNCTION availability_counts_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE availability_counts
            SET {copy},
                changed_xid = pg_current_xact_id()
            WHERE session_id = NEW.id;
            RETURN NULL;
        END;
        $$
        """
    )
    watched = ", ".join(_SESSION_WATCHED)
    old, new = (", ".join(f"{row}.{c}" for c in _SESSION_WATCHED) for row in ("OLD", "NEW"))
    op.execute(
        f"CREATE TRIGGER availability_counts_session_changed AFTER UPDATE OF {watched} ON clinic_sessions "
        f"FOR EACH ROW WHEN (({old}) IS DISTINCT FROM ({new})) "
        "EXECUTE FUNCTION availability_counts_session_changed()"
    )
    # Counts for the slots that exist already.
    op.execute(_apply(_INSERTED.replace("new_slots", "slots")))


def downgrade() -> None:
    op.execute("DROP TRIGGER availability_counts_session_changed ON clinic_sessions")
    op.execute("DROP FUNCTION availability_counts_session_changed()")
    for name in reversed(list(_TRIGGERS)):
        op.execute(f"DROP TRIGGER {name} ON slots")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_index("ix_availability_counts_hospital_date", table_name="availability_counts")
    op.drop_table("availability_counts")
