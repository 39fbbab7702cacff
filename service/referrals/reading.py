"""Reading referrals: one, or a page of them, to the institution that made them or the hospital
that receives them (OWASP API1); every read is recorded in the audit trail (R15)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record_read
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.kit.errors import NotFound
from service.models.referrals import Referral
from service.models.registry import Department
from service.referrals.schemas import ReferralOut
from service.referrals.views import ReferralView, load_view, load_views


def shows_code(caller: Caller) -> bool:
    """The verification code goes to the referring institution only; the patient gives it to the hotline."""
    return caller.role == "primary"


async def visible_referral(
    *, session: AsyncSession, caller: Caller, crypto: Crypto, reference: str
) -> ReferralView:
    """A referral, to the institution that made it or the hospital that receives it (OWASP API1)."""
    referral = await session.scalar(select(Referral).where(Referral.reference == reference))
    visible = referral is not None and (
        (caller.role == "primary" and referral.booker_org_id == caller.org_id)
        or (caller.role == "hospital" and referral.hospital_id == caller.org_id)
    )
    if not visible or referral is None:
        raise NotFound("referral_not_found", f"No referral {reference} visible to you.")
    return await load_view(session, crypto, referral)


async def read_referral(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, reference: str
) -> ReferralOut:
    """One referral, with the read recorded in the audit trail (R15)."""
    view = await visible_referral(session=session, caller=caller, crypto=crypto, reference=reference)
    referral = view.referral
    await record_read(
        session=session,
        actor=actor,
        action="referral.read",
        hospital_id=referral.hospital_id,
        reads=[(referral.id, referral.resident_id)],
        detail={"via": "api"},
    )
    return view.out(show_code=shows_code(caller))


async def list_referrals(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    service_date: date | None,
    department_code: str | None,
    status: str | None,
    after: tuple[date, int] | None,
    limit: int,
) -> tuple[list[ReferralOut], tuple[date, int] | None]:
    """The caller's referrals: those it made (primary) or receives (hospital), by date then id.

    ``after`` is the (service date, id) of the last item of the previous page; the
    second value returned is that of this page's last item when more follow.
    """
    stmt = select(Referral).order_by(Referral.service_date, Referral.id).limit(limit + 1)
    if caller.role == "hospital":
        stmt = stmt.where(Referral.hospital_id == caller.org_id)
    else:
        stmt = stmt.where(Referral.booker_org_id == caller.org_id)
    if service_date is not None:
        stmt = stmt.where(Referral.service_date == service_date)
    if status is not None:
        stmt = stmt.where(Referral.status == status)
    if department_code is not None:
        stmt = stmt.join(Department, Department.id == Referral.department_id).where(
            Department.code == department_code
        )
    if after is not None:
        stmt = stmt.where(tuple_(Referral.service_date, Referral.id) > tuple_(*after))
    rows = list(await session.scalars(stmt))
    following = (rows[limit - 1].service_date, rows[limit - 1].id) if len(rows) > limit else None
    page = rows[:limit]
    views = await load_views(session, crypto, page)
    await record_read(
        session=session,
        actor=actor,
        action="referrals.listed",
        hospital_id=caller.org_id if caller.role == "hospital" else None,
        reads=[(r.id, r.resident_id) for r in page],
        detail={"via": "api"},
    )
    return [view.out(show_code=shows_code(caller)) for view in views], following
