"""Referral counts for compliance reports, maintained by triggers on referrals.

One row per clinic session and the referral's own hospital and service date
holds how many referrals were booked there (cancelled ones included), how many
were cancelled, and how many were reported attended or no-show. Statement-level
triggers on ``referrals`` apply the net change of each statement (sorted by key,
so concurrent statements lock rows in the same order), as the availability
counts of revision 0009 do for slots. Reports read these rows instead of the
referrals themselves. See docs/reports.md.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = "session_id, hospital_id, service_date"
_ROW = f"{_KEY}, status, attendance"
# The net change of one statement, as rows (session_id, hospital_id, service_date, status, attendance, n).
_INSERTED = f"SELECT {_ROW}, 1 AS n FROM new_referrals"
_DELETED = f"SELECT {_ROW}, -1 AS n FROM old_referrals"
_CHANGED = "(o.session_id, o.hospital_id, o.service_date, o.status, o.attendance) IS DISTINCT FROM (n.session_id, n.hospital_id, n.service_date, n.status, n.attendance)"
_UPDATED = f"""
    SELECT o.session_id, o.hospital_id, o.service_date, o.status, o.attendance, -1 AS n
    FROM old_referrals o JOIN new_referrals n ON n.id = o.id
    WHERE {_CHANGED}
    UNION ALL
    SELECT n.session_id, n.hospital_id, n.service_date, n.status, n.attendance, 1 AS n
    FROM old_referrals o JOIN new_referrals n ON n.id = o.id
    WHERE {_CHANGED}
"""


def _apply(changes: str) -> str:
    return f"""
    INSERT INTO referral_counts AS c ({_KEY}, bookings, cancelled, attended, no_show)
    SELECT {_KEY},
           sum(d.n),
           coalesce(sum(d.n) FILTER (WHERE d.status = 'cancelled'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.attendance = 'attended'), 0),
           coalesce(sum(d.n) FILTER (WHERE d.attendance = 'no_show'), 0)
    FROM ({changes}) AS d
    GROUP BY {_KEY}
    ORDER BY {_KEY}
    ON CONFLICT ({_KEY}) DO UPDATE SET
        bookings = c.bookings + excluded.bookings,
        cancelled = c.cancelled + excluded.cancelled,
        attended = c.attended + excluded.attended,
        no_show = c.no_show + excluded.no_show
    """


_TRIGGERS = {
    # name: (event, REFERENCING clause, changes)
    "referral_counts_insert": ("INSERT", "NEW TABLE AS new_referrals", _INSERTED),
    # PostgreSQL allows no column list with transition tables; _UPDATED skips rows whose counted
    # columns did not change.
    "referral_counts_update": ("UPDATE", "OLD TABLE AS old_referrals NEW TABLE AS new_referrals", _UPDATED),
    "referral_counts_delete": ("DELETE", "OLD TABLE AS old_referrals", _DELETED),
}


def upgrade() -> None:
    op.create_table(
        "referral_counts",
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("bookings", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.Column("attended", sa.Integer(), nullable=False),
        sa.Column("no_show", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["clinic_sessions.id"],
            name=op.f("fk_referral_counts_session_id_clinic_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["organisations.id"],
            name=op.f("fk_referral_counts_hospital_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("session_id", "hospital_id", "service_date", name=op.f("pk_referral_counts")),
    )
    op.create_index(
        "ix_referral_counts_hospital_date", "referral_counts", ["hospital_id", "service_date"], unique=False
    )
    for name, (event, referencing, changes) in _TRIGGERS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{_apply(changes)};\nRETURN NULL;\nEND;\n$$"
        )
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON referrals REFERENCING {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )
    # Counts for the referrals that exist already.
    op.execute(_apply(_INSERTED.replace("new_referrals", "referrals")))


def downgrade() -> None:
    for name in reversed(list(_TRIGGERS)):
        op.execute(f"DROP TRIGGER {name} ON referrals")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_index("ix_referral_counts_hospital_date", table_name="referral_counts")
    op.drop_table("referral_counts")
