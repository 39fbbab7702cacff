"""The commission lists scalping alerts and identity name conflicts of its region, and acknowledges them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.kit.cursors import CursorQuery, decode_id_cursor, encode_cursor
from service.kit.ids import PathId, QueryId
from service.models.signals import Signal, SubjectType
from service.signals import identity, service
from service.signals.schemas import (
    AcknowledgeIn,
    AlertList,
    AlertOut,
    IdentityConflictList,
    IdentityConflictOut,
)
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, writes

router = APIRouter(prefix="/v1/supervision", tags=["supervision"], route_class=UnitRoute)
# Every endpoint here writes: a read of alerts or conflicts is recorded in the audit trail (R15).
Commission = Annotated[Unit, writes("commission")]


@router.get(
    "/alerts",
    response_model=AlertList,
    **operation("listAlerts", "List scalping alerts", problems=["invalid_cursor"]),
)
async def list_alerts(
    unit: Commission,
    signal: Signal | None = None,
    status: Annotated[str | None, Query(pattern="^(open|acknowledged|closed)$")] = None,
    subject_type: SubjectType | None = None,
    institution_id: QueryId = None,
    doctor_id: QueryId = None,
    hospital_id: QueryId = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AlertList:
    """Alerts about the region's hospitals or booking institutions, newest first, with their evidence."""
    before = decode_id_cursor(cursor)
    alerts, following = await service.list_alerts(
        session=unit.session,
        region_code=unit.caller.region_code,
        signal=signal,
        status=status,
        subject_type=subject_type,
        institution_id=institution_id,
        doctor_id=doctor_id,
        hospital_id=hospital_id,
        before_id=before,
        limit=limit,
    )
    if alerts:
        await service.record_alert_read(session=unit.session, actor=unit.actor, alerts=alerts)
    items = await service.alerts_out(session=unit.session, crypto=unit.crypto, alerts=alerts)
    return AlertList(items=items, next_cursor=encode_cursor(following) if following is not None else None)


@router.get(
    "/alerts/{alert_id}",
    response_model=AlertOut,
    **operation("getAlert", "Read an alert with its evidence", problems=["alert_not_found"]),
)
async def get_alert(alert_id: PathId, unit: Commission) -> AlertOut:
    """One alert with every referral behind it."""
    alert = await service.get_alert(
        session=unit.session, region_code=unit.caller.region_code, alert_id=alert_id
    )
    await service.record_alert_read(session=unit.session, actor=unit.actor, alerts=[alert])
    [out] = await service.alerts_out(session=unit.session, crypto=unit.crypto, alerts=[alert])
    return out


@router.post(
    "/alerts/{alert_id}/acknowledge",
    response_model=AlertOut,
    **operation(
        "acknowledgeAlert", "Acknowledge an alert", problems=["alert_not_found", "already_acknowledged"]
    ),
)
async def acknowledge_alert(
    alert_id: PathId, unit: Commission, body: AcknowledgeIn | None = None
) -> AlertOut:
    """The commission has looked into the alert; a note may say what it found or did."""
    alert = await service.acknowledge_alert(
        session=unit.session,
        actor=unit.actor,
        region_code=unit.caller.region_code,
        alert_id=alert_id,
        note=body.note if body is not None else None,
    )
    [out] = await service.alerts_out(session=unit.session, crypto=unit.crypto, alerts=[alert])
    return out


@router.get(
    "/identity-conflicts",
    response_model=IdentityConflictList,
    **operation("listIdentityConflicts", "List identity conflicts", problems=["invalid_cursor"]),
)
async def list_identity_conflicts(
    unit: Commission,
    status: Annotated[str | None, Query(pattern="^(open|acknowledged|closed)$")] = None,
    institution_id: QueryId = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> IdentityConflictList:
    """Institutions declaring different names for one ID number, where one of them is in the region."""
    before = decode_id_cursor(cursor)
    conflicts, following = await identity.list_identity_conflicts(
        session=unit.session,
        region_code=unit.caller.region_code,
        status=status,
        institution_id=institution_id,
        before_id=before,
        limit=limit,
    )
    await identity.record_conflict_read(session=unit.session, actor=unit.actor, conflicts=conflicts)
    items = await identity.conflicts_out(session=unit.session, conflicts=conflicts)
    return IdentityConflictList(
        items=items, next_cursor=encode_cursor(following) if following is not None else None
    )


@router.get(
    "/identity-conflicts/{conflict_id}",
    response_model=IdentityConflictOut,
    **operation("getIdentityConflict", "Read an identity conflict", problems=["identity_conflict_not_found"]),
)
async def get_identity_conflict(conflict_id: PathId, unit: Commission) -> IdentityConflictOut:
    """One name conflict with every declaration behind it."""
    conflict = await identity.get_identity_conflict(
        session=unit.session, region_code=unit.caller.region_code, conflict_id=conflict_id
    )
    await identity.record_conflict_read(session=unit.session, actor=unit.actor, conflicts=[conflict])
    [out] = await identity.conflicts_out(session=unit.session, conflicts=[conflict])
    return out


@router.post(
    "/identity-conflicts/{conflict_id}/acknowledge",
    response_model=IdentityConflictOut,
    **operation(
        "acknowledgeIdentityConflict",
        "Acknowledge an identity conflict",
        problems=["identity_conflict_not_found", "already_acknowledged"],
    ),
)
async def acknowledge_identity_conflict(
    conflict_id: PathId, unit: Commission, body: AcknowledgeIn | None = None
) -> IdentityConflictOut:
    """The commission has looked into the conflict; it closes by itself once the declarations agree."""
    conflict = await identity.acknowledge_identity_conflict(
        session=unit.session,
        actor=unit.actor,
        region_code=unit.caller.region_code,
        conflict_id=conflict_id,
        note=body.note if body is not None else None,
    )
    [out] = await identity.conflicts_out(session=unit.session, conflicts=[conflict])
    return out
