"""One view of a referral: everything its readers need, loaded by one joined query.

The API answer, the events, FHIR's Appointment, the slip and notice, and the hospital's
worklist are all built from a ``ReferralView``. A list of any length costs one statement,
and each referral's name and ID number are decrypted once, then kept masked only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from service.kit.clock import SHANGHAI, zh_instant
from service.kit.crypto import Crypto, mask_id_number, mask_name
from service.models.policy import Policy
from service.models.referrals import REFERRAL_RESIDENT_NAME, Referral
from service.models.registry import Department, Doctor, Organisation
from service.models.residents import Resident
from service.models.slots import ClinicSession, Slot
from service.referrals.schemas import (
    AttendanceOut,
    Consultation,
    DoctorOut,
    NamedRef,
    Notice,
    ReceiptOut,
    ReferralOut,
    SlotOut,
    WardOut,
)


def doctor_out(doctor: Doctor | None) -> DoctorOut | None:
    return DoctorOut(code=doctor.code, name=doctor.name, title=doctor.title) if doctor else None


def ward_out(cs: ClinicSession) -> WardOut | None:
    if cs.ward_code is None or cs.ward_name is None:
        return None
    return WardOut(code=cs.ward_code, name=cs.ward_name)


def named(org: Organisation | Department) -> NamedRef:
    return NamedRef(id=org.id, code=org.code, name=org.name)


def slip_id_masked(id_number: str, policy: Policy) -> str:
    """The ID number as the slip prints it: the policy's characters kept at each end (R15)."""
    return mask_id_number(id_number, keep_first=policy.slip_id_keep_first, keep_last=policy.slip_id_keep_last)


@dataclass(frozen=True)
class ReferralView:
    """A referral with its slot, session, hospital, department, booker, doctors and policy."""

    referral: Referral
    slot: Slot
    clinic_session: ClinicSession
    hospital: Organisation
    department: Department
    booker: Organisation
    referring_doctor: Doctor
    doctor: Doctor | None  # the session's doctor; examinations and beds may have none
    policy: Policy
    resident_name_masked: str  # the name the referral was booked under, whatever is declared since
    resident_id_masked: str
    # The slip's mask, as the policy says (docs/slip.md): never the whole number, never in the API.
    resident_id_slip_masked: str
    crypto: Crypto = field(repr=False, compare=False)

    @property
    def cancel_deadline(self) -> datetime:
        return self.slot.starts_at - timedelta(minutes=self.policy.cancel_cutoff_minutes)

    def verification_code(self) -> str:
        """The code the hotline asks for (R12): decrypted only for a reader who is shown it."""
        return self.crypto.decrypt(self.referral.verification_code_enc, column="referrals.verification_code")

    def notice(self) -> Notice:
        """What the family doctor tells the patient after booking (R11)."""
        referral, slot, cs, policy, doctor = (
            self.referral,
            self.slot,
            self.clinic_session,
            self.policy,
            self.doctor,
        )
        ward = ward_out(cs)
        start_local = slot.starts_at.astimezone(SHANGHAI)
        end_local = slot.ends_at.astimezone(SHANGHAI)
        deadline = self.cancel_deadline
        return Notice(
            hospital=self.hospital.name,
            department=self.department.name,
            resource_kind=cs.resource_kind,
            modality=cs.modality,
            ward=ward.name if ward else None,
            doctor=doctor.name if doctor else None,
            doctor_title=doctor.title if doctor else None,
            service_date=cs.service_date,
            period=cs.period,
            time_band=f"{start_local:%H:%M}-{end_local:%H:%M}",
            slot_number=slot.number,
            reference=referral.reference,
            how_to_cancel=(
                f"如不能按时就诊，请于{zh_instant(deadline)}前拨打{policy.cancel_hotline}，"
                "提供转诊编号和验证码取消预约，或联系您的家庭医生。"
            ),
            cancel_hotline=policy.cancel_hotline,
            cancel_deadline=deadline,
            no_show_rule=str(policy.no_show_rule.get("text", "")),
            hospital_address=self.hospital.address_line,
            hospital_postal_code=self.hospital.postal_code,
            hospital_phone=self.hospital.phone,
            what_to_bring=policy.what_to_bring,
        )

    def out(self, *, show_code: bool) -> ReferralOut:
        """The API's answer; the verification code only to the institution that booked."""
        referral, slot, cs, policy = self.referral, self.slot, self.clinic_session, self.policy
        referring = self.referring_doctor
        return ReferralOut(
            reference=referral.reference,
            status=referral.status,
            verification_code=self.verification_code() if show_code else None,
            hospital=named(self.hospital),
            department=named(self.department),
            resource_kind=cs.resource_kind,
            modality=cs.modality,
            ward=ward_out(cs),
            doctor=doctor_out(self.doctor),
            slot=SlotOut(
                id=slot.id,
                number=slot.number,
                external_id=slot.external_id,
                starts_at=slot.starts_at,
                ends_at=slot.ends_at,
            ),
            session_external_id=cs.external_id,
            service_date=cs.service_date,
            period=cs.period,
            resident_name_masked=self.resident_name_masked,
            resident_id_masked=self.resident_id_masked,
            referring_institution=named(self.booker),
            referring_doctor=DoctorOut(code=referring.code, name=referring.name, title=referring.title),
            consultation=Consultation(
                encounter_id=referral.encounter_id, encountered_at=referral.encountered_at
            ),
            diagnoses=referral.diagnoses,
            booked_at=referral.booked_at,
            cancelled_at=referral.cancelled_at,
            cancelled_by=referral.cancelled_by,
            cancel_reason=referral.cancel_reason,
            notice=self.notice(),
            policy=f"{policy.code} v{policy.version}",
            attendance=AttendanceOut(
                outcome=referral.attendance,
                reported_at=referral.attendance_reported_at,
                note=referral.attendance_note,
            )
            if referral.attendance is not None and referral.attendance_reported_at is not None
            else None,
            received=ReceiptOut(received_at=referral.received_at, his_reference=referral.his_reference)
            if referral.received_at is not None
            else None,
        )


async def load_views(
    session: AsyncSession, crypto: Crypto, referrals: Sequence[int | Referral]
) -> list[ReferralView]:
    """The views of ``referrals`` (ids or rows), in the order given, by one joined query."""
    ids = [r if isinstance(r, int) else r.id for r in referrals]
    if not ids:
        return []
    hospital = aliased(Organisation, name="hospital")
    booker = aliased(Organisation, name="booker")
    referring = aliased(Doctor, name="referring_doctor")
    doctor = aliased(Doctor, name="session_doctor")
    rows = (
        await session.execute(
            select(
                Referral,
                Slot,
                ClinicSession,
                hospital,
                Department,
                booker,
                referring,
                doctor,
                Policy,
                Resident.id_number_enc,
            )
            .join(Slot, Slot.id == Referral.slot_id)
            .join(ClinicSession, ClinicSession.id == Referral.session_id)
            .join(hospital, hospital.id == Referral.hospital_id)
            .join(Department, Department.id == Referral.department_id)
            .join(booker, booker.id == Referral.booker_org_id)
            .join(referring, referring.id == Referral.referring_doctor_id)
            .outerjoin(doctor, doctor.id == ClinicSession.doctor_id)
            .join(Policy, Policy.id == Referral.policy_id)
            .join(Resident, Resident.id == Referral.resident_id)
            .where(Referral.id.in_(set(ids)))
        )
    ).all()
    views: dict[int, ReferralView] = {}
    for referral, slot, cs, hosp, dept, by, ref_doc, doc, policy, id_number_enc in rows:
        name = crypto.decrypt(referral.resident_name_enc, column=REFERRAL_RESIDENT_NAME)
        id_number = crypto.decrypt(id_number_enc, column="residents.id_number")
        views[referral.id] = ReferralView(
            referral=referral,
            slot=slot,
            clinic_session=cs,
            hospital=hosp,
            department=dept,
            booker=by,
            referring_doctor=ref_doc,
            doctor=doc,
            policy=policy,
            resident_name_masked=mask_name(name),
            resident_id_masked=mask_id_number(id_number),
            resident_id_slip_masked=slip_id_masked(id_number, policy),
            crypto=crypto,
        )
    return [views[i] for i in ids]


async def load_view(session: AsyncSession, crypto: Crypto, referral: Referral | int) -> ReferralView:
    """The view of one referral."""
    (view,) = await load_views(session, crypto, [referral])
    return view
