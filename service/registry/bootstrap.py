"""Setting up a fresh database for one region: its divisions and its commission's first key.

The GB/T 2260 divisions ship with the package (data/divisions.csv; data/README.md says where
they come from and under which licence). Bootstrapping a region loads its whole province, so
the commission can register organisations anywhere in it without first posting divisions.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import advisory_key
from service.kit.errors import Conflict, Unprocessable
from service.kit.regions import province_of
from service.models.registry import ApiClient, Organisation, Region
from service.registry.schemas import OrganisationIn, RegionIn
from service.registry.service import create_api_client, create_organisation, organisation_out

LEVEL_ORDER = {"province": 0, "city": 1, "county": 2}
KEY_NAME = "bootstrap"


@lru_cache(maxsize=1)
def shipped_divisions() -> dict[str, RegionIn]:
    """Every division in the shipped list, by code."""
    text = resources.files("service.registry").joinpath("data/divisions.csv").read_text(encoding="utf-8")
    return {
        row["code"]: RegionIn(
            code=row["code"], name=row["name"], level=row["level"], parent_code=row["parent"] or None
        )
        for row in csv.DictReader(io.StringIO(text))
    }


def divisions_for(region_code: str) -> list[RegionIn]:
    """The province that holds ``region_code`` and every division under it, parents first."""
    divisions = shipped_divisions()
    if region_code not in divisions:
        raise Unprocessable(
            "region_unknown", f"{region_code} is not a division in the shipped GB/T 2260 list."
        )
    prefix = province_of(region_code)[:2]
    wanted = [d for code, d in divisions.items() if code.startswith(prefix)]
    return sorted(wanted, key=lambda d: (LEVEL_ORDER[d.level], d.code))


def default_commission_code(region_code: str) -> str:
    return f"COMMISSION-{region_code}"


@dataclass(frozen=True)
class Bootstrapped:
    organisation: Organisation
    client: ApiClient
    token: str
    organisation_created: bool
    divisions_added: int


async def _add_missing_divisions(session: AsyncSession, divisions: list[RegionIn]) -> int:
    """Insert the divisions that are not there yet; never rename one the commission may have edited."""
    added = 0
    for division in divisions:  # parents first, so every parent exists when its children go in
        stmt = insert(Region).values(**division.model_dump()).on_conflict_do_nothing(index_elements=["code"])
        added += (await session.execute(stmt.returning(Region.code))).first() is not None
    await session.flush()
    return added


async def _existing_commission(session: AsyncSession, region_code: str, code: str) -> Organisation | None:
    """The commission already set up for this region, if any; refuses codes that clash."""
    org = await session.scalar(select(Organisation).where(Organisation.code == code))
    if org is not None:
        if org.kind != "authority" or org.region_code != region_code:
            raise Conflict(
                "organisation_exists",
                f"Organisation {code} exists and is not an authority of region {region_code}; "
                "choose another --commission-code.",
            )
        return org
    other = await session.scalar(
        select(Organisation)
        .join(ApiClient, ApiClient.organisation_id == Organisation.id)
        .where(
            Organisation.region_code == region_code,
            Organisation.kind == "authority",
            ApiClient.role == "commission",
        )
        .order_by(Organisation.id)
        .limit(1)
    )
    if other is not None:
        raise Conflict(
            "region_bootstrapped",
            f"Region {region_code} already has a commission, {other.code}; to issue it another key, "
            f"run again with --commission-code {other.code} --force.",
        )
    return None


async def bootstrap_region(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    region_code: str,
    commission_name: str,
    commission_code: str | None = None,
    force: bool = False,
) -> Bootstrapped:
    """Load the region's divisions, create its commission and issue the commission's first key.

    Run again on a bootstrapped region it refuses, unless ``force``: then it issues another
    key to the existing commission, adds any division still missing and changes nothing else.
    """
    # Two bootstraps at once would both find the region empty; the second waits and then refuses.
    await session.execute(select(func.pg_advisory_xact_lock(advisory_key("bootstrap"))))
    divisions = divisions_for(region_code)
    code = commission_code or default_commission_code(region_code)
    org = await _existing_commission(session, region_code, code)
    if org is not None and not force:
        raise Conflict(
            "region_bootstrapped",
            f"Region {region_code} is already bootstrapped (commission {code}); "
            "pass --force to issue another commission key.",
        )
    added = await _add_missing_divisions(session, divisions)
    created = org is None
    if org is None:
        org = await create_organisation(
            session=session,
            actor=actor,
            org=OrganisationIn(code=code, name=commission_name, kind="authority", region_code=region_code),
        )
    client, token = await create_api_client(
        session=session,
        actor=actor,
        crypto=crypto,
        organisation_id=org.id,
        role="commission",
        name=KEY_NAME,
    )
    await record(
        session=session,
        actor=actor,
        action="region.bootstrap",
        detail={
            "region_code": region_code,
            "province_code": province_of(region_code),
            "divisions_added": added,
            "force": force,
            "organisation": {
                "before": None if created else organisation_out(org).model_dump(mode="json"),
                "after": organisation_out(org).model_dump(mode="json"),
            },
            "api_client": {
                "id": client.id,
                "organisation_id": org.id,
                "role": client.role,
                "name": client.name,
            },
        },
    )
    return Bootstrapped(
        organisation=org, client=client, token=token, organisation_created=created, divisions_added=added
    )
