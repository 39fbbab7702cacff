"""A summary of closed service days for compliance reports, kept exact by triggers.

Two tables hold, per hospital (and per department) and service date and resource kind,
what the report counts over the clinic sessions of that day: the sessions not removed,
the policy versions of the active ones, their slot figures (from ``availability_counts``),
their referral figures (from ``referral_counts``) and the recorded shortfalls
(``reservation_shortfalls``). They hold rows only for the days of one window,
``report_summary_window`` (``closed_from`` to ``closed_through``), which a job extends
one day per transaction (service/reports/summary.py); reports read the summary for the
days in the window and count the other days live. See docs/reports.md.

Exactness. Every row written to any of the four sources takes (a row-level trigger) a
shared advisory lock on its service date, then reads the window; for a day inside it, it
recomputes that day's summary rows from the sources (under an exclusive lock per hospital,
date and kind, so two writers of one day recompute one after the other, each seeing the
other's committed rows). The job closes a day under the exclusive lock of that date,
which waits for every writer of the date and holds off new ones until the summary rows
and the wider window commit together. So at every commit the rows of every day in the
window equal a recount, whatever wrote: a push of a past day, a withdrawal or removal,
a late cancellation, an attendance report or its correction, a release, a shortfall.

The advisory locks use PostgreSQL's two-key form, whose key space is apart from the
single 64-bit keys the service takes elsewhere (``service.kit.db.advisory_key``).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Expand/contract (docs/operations.md): new tables, an index, functions and triggers. Builds
# at 0015 do not read the summary; their writes keep it exact through the same triggers.
EXPAND_ONLY = True

# The two advisory lock classes (the first key of the two-key form).
DAY_LOCK = 16001  # second key: the service date, as days since 2000-01-01
KEY_LOCK = 16002  # second key: a hash of hospital, date and kind

SENIOR_TITLES = ("chief", "associate_chief")  # service.models.registry.SENIOR_TITLES

_FIGURES = (
    "offered",
    "reserved",
    "senior_reserved",
    "returned",
    "bookings",
    "cancelled",
    "attended",
    "no_show",
    "ratio_short",
    "senior_short",
    "lead_short",
)


def _summary_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("resource_kind", sa.String(length=12), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("policy_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in _FIGURES),
    ]


# Recompute the rows of the keys (hospital, date, kind) given as three arrays, from the sources.
# One statement, so one snapshot: the department rows and the hospital rows agree.
_REFRESH = f"""
CREATE FUNCTION report_days_refresh(p_hospital bigint[], p_date date[], p_kind text[], p_lock boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    lock_key integer;
BEGIN
    IF p_lock THEN
        -- Writers of the same day recompute one after the other (the keys of one call in one order).
        FOR lock_key IN
            SELECT DISTINCT hashtext(h::text || ':' || (d - DATE '2000-01-01')::text || ':' || k)
            FROM unnest(p_hospital, p_date, p_kind) AS u(h, d, k) ORDER BY 1
        LOOP
            PERFORM pg_advisory_xact_lock({KEY_LOCK}, lock_key);
        END LOOP;
    END IF;
    DELETE FROM report_department_days r
    USING unnest(p_hospital, p_date, p_kind) AS u(h, d, k)
    WHERE r.hospital_id = u.h AND r.service_date = u.d AND r.resource_kind = u.k;
    DELETE FROM report_hospital_days r
    USING unnest(p_hospital, p_date, p_kind) AS u(h, d, k)
    WHERE r.hospital_id = u.h AND r.service_date = u.d AND r.resource_kind = u.k;
    WITH keys AS (
        SELECT DISTINCT h AS hospital_id, d AS service_date, k AS resource_kind
        FROM unnest(p_hospital, p_date, p_kind) AS u(h, d, k)
    ),
    s AS MATERIALIZED (  -- the sessions a report counts: not removed
        SELECT cs.id, cs.hospital_id, cs.department_id, cs.service_date, cs.resource_kind, cs.policy_id,
               cs.status = 'active' AS active,
               cs.doctor_title IN ({", ".join(f"'{t}'" for t in SENIOR_TITLES)}) AS senior
        FROM keys JOIN clinic_sessions cs
          ON cs.service_date = keys.service_date AND cs.hospital_id = keys.hospital_id
         AND cs.resource_kind = keys.resource_kind
        WHERE cs.status <> 'removed'
    ),
    slot AS (
        SELECT s.id,
               sum(ac.public + ac.reserved + ac.booked + ac.returned) AS offered,
               sum(ac.reserved + ac.booked + ac.returned) AS reserved,
               sum(ac.returned) AS returned
        FROM s JOIN availability_counts ac
          ON ac.session_id = s.id AND ac.hospital_id = s.hospital_id
         AND ac.service_date = s.service_date AND ac.resource_kind = s.resource_kind
        GROUP BY s.id
    ),
    referral AS (  -- the referrals of the session's own hospital and date (booking copies both)
        SELECT s.id, sum(rc.bookings) AS bookings, sum(rc.cancelled) AS cancelled,
               sum(rc.attended) AS attended, sum(rc.no_show) AS no_show
        FROM s JOIN referral_counts rc
          ON rc.session_id = s.id AND rc.hospital_id = s.hospital_id AND rc.service_date = s.service_date
        GROUP BY s.id
    ),
    session_days AS (
        SELECT s.hospital_id, s.department_id, s.service_date, s.resource_kind,
               count(*) AS sessions,
               array_agg(DISTINCT s.policy_id ORDER BY s.policy_id)
                   FILTER (WHERE s.active AND s.policy_id IS NOT NULL) AS policy_ids,
               coalesce(sum(sl.offered), 0) AS offered,
               coalesce(sum(sl.reserved), 0) AS reserved,
               coalesce(sum(sl.reserved) FILTER (WHERE s.senior), 0) AS senior_reserved,
               coalesce(sum(sl.returned), 0) AS returned,
               coalesce(sum(rf.bookings), 0) AS bookings,
               coalesce(sum(rf.cancelled), 0) AS cancelled,
               coalesce(sum(rf.attended), 0) AS attended,
               coalesce(sum(rf.no_show), 0) AS no_show
        FROM s LEFT JOIN slot sl ON sl.id = s.id LEFT JOIN referral rf ON rf.id = s.id
        GROUP BY s.hospital_id, s.department_id, s.service_date, s.resource_kind
    ),
    short_days AS (
        SELECT sf.hospital_id, sf.department_id, sf.service_date, sf.resource_kind,
               count(*) FILTER (WHERE sf.kind = 'ratio') AS ratio_short,
               count(*) FILTER (WHERE sf.kind = 'senior_share') AS senior_short,
               count(*) FILTER (WHERE sf.kind = 'lead_time') AS lead_short
        FROM keys JOIN reservation_shortfalls sf
          ON sf.hospital_id = keys.hospital_id AND sf.service_date = keys.service_date
         AND sf.resource_kind = keys.resource_kind
        GROUP BY sf.hospital_id, sf.department_id, sf.service_date, sf.resource_kind
    ),
    department_days AS (
        SELECT hospital_id, department_id, service_date, resource_kind,
               coalesce(d.sessions, 0) AS sessions, d.policy_ids,
               {", ".join(f"coalesce({f}, 0) AS {f}" for f in _FIGURES)}
        FROM session_days d FULL JOIN short_days sh
        USING (hospital_id, department_id, service_date, resource_kind)
    ),
    hospital_policies AS (
        SELECT hospital_id, service_date, resource_kind, array_agg(DISTINCT policy_id ORDER BY policy_id) AS policy_ids
        FROM s WHERE s.active AND s.policy_id IS NOT NULL
        GROUP BY hospital_id, service_date, resource_kind
    ),
    departments_written AS (
        INSERT INTO report_department_days
            (hospital_id, department_id, service_date, resource_kind, sessions, policy_ids, {", ".join(_FIGURES)})
        SELECT hospital_id, department_id, service_date, resource_kind, sessions, policy_ids, {", ".join(_FIGURES)}
        FROM department_days
    )
    INSERT INTO report_hospital_days
        (hospital_id, service_date, resource_kind, sessions, policy_ids, {", ".join(_FIGURES)})
    SELECT t.hospital_id, t.service_date, t.resource_kind, t.sessions, p.policy_ids, {", ".join(f"t.{f}" for f in _FIGURES)}
    FROM (
        SELECT hospital_id, service_date, resource_kind, sum(sessions) AS sessions,
               {", ".join(f"sum({f}) AS {f}" for f in _FIGURES)}
        FROM department_days
        GROUP BY hospital_id, service_date, resource_kind
    ) t
    LEFT JOIN hospital_policies p USING (hospital_id, service_date, resource_kind);
END;
$$
"""

# The sources, the columns of theirs a report counts (an update that changes none of them is
# skipped), and how a row names its kind: a referral count has none of its own, its session's.
# A referral count is summarised only under its session's hospital and date, which booking
# copies into it; were they ever to differ, the count would be in no summary row, and its change
# would change none. So every source row names its key (hospital, date, kind) itself.
_SOURCES = {
    "clinic_sessions": (
        "sessions",
        (
            "hospital_id",
            "department_id",
            "service_date",
            "resource_kind",
            "policy_id",
            "status",
            "doctor_title",
        ),
        "{row}.resource_kind",
    ),
    "availability_counts": (
        "availability",
        ("hospital_id", "service_date", "resource_kind", "public", "reserved", "booked", "returned"),
        "{row}.resource_kind",
    ),
    "referral_counts": (
        "referrals",
        ("session_id", "hospital_id", "service_date", "bookings", "cancelled", "attended", "no_show"),
        "(SELECT cs.resource_kind FROM clinic_sessions cs WHERE cs.id = {row}.session_id)",
    ),
    "reservation_shortfalls": (
        "shortfalls",
        ("hospital_id", "department_id", "service_date", "resource_kind", "kind"),
        "{row}.resource_kind",
    ),
}


def _trigger_function(short: str, kind: str) -> str:
    """A changed row locks its date(s); only a row of a closed day reads the window's rows again.

    Row-level, so that the common write (a booking's one count row, of a day still open) costs
    two lock-table calls and a one-row read, without a pass over a transition table.
    """
    return f"""
CREATE FUNCTION report_days_{short}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_day date;
    new_day date;
    window_from date;
    window_through date;
    hospitals bigint[] := '{{}}';
    days date[] := '{{}}';
    kinds text[] := '{{}}';
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_day := OLD.service_date;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_day := NEW.service_date;
    END IF;
    -- The locks below order this write and a closing only if each statement reads what committed
    -- before it: every writer of the service runs at READ COMMITTED, and so must any other.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'changes to % must run at READ COMMITTED: the report summary depends on it', TG_TABLE_NAME
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- A day being closed waits for this transaction, and this one for the closing: either the
    -- closing sees this row, or this reads the window the closing committed. (An infinite date,
    -- which no push writes, is never closed and needs no lock.)
    IF isfinite(least(old_day, new_day)) THEN
        PERFORM pg_advisory_xact_lock_shared({DAY_LOCK}, least(old_day, new_day) - DATE '2000-01-01');
    END IF;
    IF old_day <> new_day AND isfinite(greatest(old_day, new_day)) THEN
        PERFORM pg_advisory_xact_lock_shared({DAY_LOCK}, greatest(old_day, new_day) - DATE '2000-01-01');
    END IF;
    SELECT closed_from, closed_through INTO window_from, window_through FROM report_summary_window;
    IF old_day BETWEEN window_from AND window_through THEN
        hospitals := hospitals || OLD.hospital_id;
        days := days || old_day;
        kinds := kinds || {kind.format(row="OLD")}::text;
    END IF;
    IF new_day BETWEEN window_from AND window_through THEN
        hospitals := hospitals || NEW.hospital_id;
        days := days || new_day;
        kinds := kinds || {kind.format(row="NEW")}::text;
    END IF;
    IF cardinality(days) > 0 THEN
        PERFORM report_days_refresh(hospitals, days, kinds, true);
    END IF;
    RETURN NULL;
END;
$$
"""


def upgrade() -> None:
    # The summary tables have no foreign keys: every row is derived from rows that have them,
    # and checking thousands of keys would double the cost of closing a day.
    # Sessions of a date (the closing job) or of a few dates and hospitals (the open days of a report).
    op.create_index(
        "ix_clinic_sessions_service_date_hospital", "clinic_sessions", ["service_date", "hospital_id"]
    )
    op.create_table(
        "report_summary_window",
        sa.Column("id", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("closed_from", sa.Date(), nullable=False),
        sa.Column("closed_through", sa.Date(), nullable=False),
        sa.CheckConstraint("id", name=op.f("ck_report_summary_window_one_row")),
        sa.CheckConstraint("closed_from <= closed_through", name=op.f("ck_report_summary_window_ordered")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_summary_window")),
    )
    op.create_table(
        "report_hospital_days",
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        *_summary_columns(),
        sa.PrimaryKeyConstraint(
            "hospital_id", "service_date", "resource_kind", name=op.f("pk_report_hospital_days")
        ),
    )
    op.create_table(
        "report_department_days",
        sa.Column("hospital_id", sa.BigInteger(), nullable=False),
        sa.Column("department_id", sa.BigInteger(), nullable=False),
        *_summary_columns(),
        sa.PrimaryKeyConstraint(
            "hospital_id",
            "service_date",
            "resource_kind",
            "department_id",
            name=op.f("pk_report_department_days"),
        ),
    )
    op.execute(_REFRESH)
    for table, (short, columns, kind) in _SOURCES.items():
        op.execute(_trigger_function(short, kind))
        op.execute(
            f"CREATE TRIGGER report_days_{short}_insert_delete AFTER INSERT OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION report_days_{short}_changed()"
        )
        old, new = (", ".join(f"{row}.{c}" for c in columns) for row in ("OLD", "NEW"))
        op.execute(
            f"CREATE TRIGGER report_days_{short}_update AFTER UPDATE ON {table} "
            f"FOR EACH ROW WHEN (({old}) IS DISTINCT FROM ({new})) "
            f"EXECUTE FUNCTION report_days_{short}_changed()"
        )
    # No window yet: every day is counted live until the job closes the first one.


def downgrade() -> None:
    for table, (short, _, _) in reversed(list(_SOURCES.items())):
        op.execute(f"DROP TRIGGER report_days_{short}_update ON {table}")
        op.execute(f"DROP TRIGGER report_days_{short}_insert_delete ON {table}")
        op.execute(f"DROP FUNCTION report_days_{short}_changed()")
    op.execute("DROP FUNCTION report_days_refresh(bigint[], date[], text[], boolean)")
    op.drop_table("report_department_days")
    op.drop_table("report_hospital_days")
    op.drop_table("report_summary_window")
    op.drop_index("ix_clinic_sessions_service_date_hospital", table_name="clinic_sessions")
