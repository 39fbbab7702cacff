"""Readiness: is the database's schema one this build can serve?

A rolling deploy runs the new build's migrations while old replicas still serve, so the
database may be *ahead* of a replica. Ahead is fine as long as the newer migrations were
expand-only for this build: ``schema_compatibility`` names the oldest build revision the
schema still serves, and a replica is ready when its own head is that revision or after it.
Behind (the database at an ancestor of this build's head) is ``migrations_pending``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from sqlalchemy import SmallInteger, Text, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base
from service.models.migrations import head_revision, served_revisions


class SchemaCompatibility(Base):
    """One row, written by ``slotpool migrate`` after every upgrade."""

    __tablename__ = "schema_compatibility"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    oldest_build_revision: Mapped[str] = mapped_column(Text)
    schema_revision: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class SchemaState:
    verdict: Literal["ready", "migrations_pending", "schema_incompatible"]
    schema: str | None
    head: str
    oldest_build: str | None = None


@lru_cache
def _build() -> tuple[str, frozenset[str]]:
    return head_revision(), frozenset(served_revisions())


async def schema_state(conn: AsyncConnection) -> SchemaState:
    head, known = _build()
    current = None
    if await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL")):
        current = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    if current == head:
        return SchemaState("ready", current, head)
    if current is None or current in known:
        return SchemaState("migrations_pending", current, head)
    # The database is ahead of this build: a newer build migrated it.
    marker = None
    if await conn.scalar(text("SELECT to_regclass('schema_compatibility') IS NOT NULL")):
        marker = await conn.scalar(text("SELECT oldest_build_revision FROM schema_compatibility"))
    if marker is not None and marker in known:
        return SchemaState("ready", current, head, marker)
    return SchemaState("schema_incompatible", current, head, marker)
