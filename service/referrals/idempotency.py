"""Idempotent booking: a retried request gets the first answer, never a second referral."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.errors import Unprocessable
from service.models.referrals import IdempotencyKey, Referral


def request_hash(body: dict[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()


# How long a stored answer is replayed; after it the key is free and the request is a new one.
IDEMPOTENCY_WINDOW = timedelta(hours=24)


async def claim_idempotency_key(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, client_id: int, key: str, body_hash: bytes
) -> tuple[int, dict[str, Any]] | None:
    """Claim ``key`` for this request, or return the answer stored by the first request.

    A concurrent request with the same key waits on the primary key until the
    first one commits (then gets its answer) or rolls back (then proceeds). A key
    whose answer is older than ``IDEMPOTENCY_WINDOW`` is claimed afresh, whether or
    not the purge has deleted it yet.
    """
    stmt = insert(IdempotencyKey).values(
        client_id=client_id,
        key=key,
        request_hash=body_hash,
        response_status=0,
        response_body={},
        created_at=actor.now,
    )
    claimed = await session.scalar(
        stmt.on_conflict_do_update(
            index_elements=[IdempotencyKey.client_id, IdempotencyKey.key],
            set_={
                "request_hash": stmt.excluded.request_hash,
                "response_status": stmt.excluded.response_status,
                "response_body": stmt.excluded.response_body,
                "created_at": stmt.excluded.created_at,
            },
            where=IdempotencyKey.created_at <= actor.now - IDEMPOTENCY_WINDOW,
        ).returning(IdempotencyKey.key)
    )
    if claimed is not None:
        return None
    stored = await session.get(IdempotencyKey, (client_id, key), populate_existing=True)
    assert stored is not None
    if not hmac.compare_digest(stored.request_hash, body_hash):
        raise Unprocessable(
            "idempotency_key_reused", "This Idempotency-Key was used for a different request."
        )
    return stored.response_status, await _with_code(session, crypto, stored.response_body)


async def _with_code(session: AsyncSession, crypto: Crypto, body: dict[str, Any]) -> dict[str, Any]:
    """The stored answer with its verification code read back from the referral, where it is encrypted."""
    encrypted = await session.scalar(
        select(Referral.verification_code_enc).where(Referral.reference == body.get("reference"))
    )
    if encrypted is None:
        return body
    return {**body, "verification_code": crypto.decrypt(encrypted, column="referrals.verification_code")}


async def store_idempotent_answer(
    *, session: AsyncSession, client_id: int, key: str, status: int, body: dict[str, Any]
) -> None:
    """Keep the answer for replays, without the verification code: a secret has no place there."""
    stored = await session.get(IdempotencyKey, (client_id, key))
    assert stored is not None
    stored.response_status = status
    stored.response_body = {**body, "verification_code": None}
    await session.flush()


async def purge_idempotency_keys(*, session: AsyncSession, now: datetime, batch_size: int) -> int:
    """Delete one batch of stored answers past their window; the count tells the caller whether to go on."""
    due = (
        select(IdempotencyKey.client_id, IdempotencyKey.key)
        .where(IdempotencyKey.created_at <= now - IDEMPOTENCY_WINDOW)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        delete(IdempotencyKey).where(tuple_(IdempotencyKey.client_id, IdempotencyKey.key).in_(due))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
