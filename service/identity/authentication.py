"""An API key to a ``Caller``, in the session of the request's unit of work."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.abuse.ratelimit import limit_for, take_token
from service.identity.suspensions import blocking_suspension, refusal
from service.kit.config import Settings
from service.kit.context import Caller
from service.kit.errors import Unauthorized
from service.models.registry import ApiClient, Organisation
from service.models.supervision import AccessSuspension


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer`` header; 401 when there is none."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing_credentials", "Send 'Authorization: Bearer <API key>'.")
    return token.strip()


async def authenticate(
    *, session: AsyncSession, key_digest: bytes, now: datetime, settings: Settings
) -> Caller:
    """The caller whose key has ``key_digest``, after its suspension check and a rate-limit token.

    One query finds the client, its organisation and any suspension in force (R14: the
    commission's action takes effect on the very next request). The token is spent in the
    same transaction; the caller commits it before the work begins, so a refused request
    still spends its token and the bucket's row is never held for the length of the work.
    """
    row = (
        await session.execute(
            select(
                ApiClient,
                Organisation,
                blocking_suspension(now, client_id=ApiClient.id, organisation_id=Organisation.id),
            )
            .join(Organisation, Organisation.id == ApiClient.organisation_id)
            .where(ApiClient.key_digest == key_digest)
        )
    ).first()
    if row is None:
        raise Unauthorized("invalid_credentials", "The API key is not valid.")
    client, org, suspension_id = row
    if client.revoked_at is not None:
        raise Unauthorized("key_revoked", "This API key has been revoked.")
    if suspension_id is not None:
        suspension = await session.get(AccessSuspension, suspension_id)
        assert suspension is not None
        raise refusal(suspension)
    # Every authenticated operation spends a token of its client's bucket (docs/abuse-limits.md).
    await take_token(session=session, client_id=client.id, now=now, limit=limit_for(settings, client.role))
    return Caller(
        client_id=client.id,
        org_id=org.id,
        role=client.role,
        org_kind=org.kind,
        org_name=org.name,
        region_code=org.region_code,
    )
