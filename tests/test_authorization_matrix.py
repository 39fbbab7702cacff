"""Every operation of contracts/openapi.json against every kind of caller (docs/authorization.md).

``MATRIX`` has one row per operation: its method and path, the roles it admits, how to build
a valid request for the owner of the objects it touches, and what a second organisation of
the same role and a commission of another province get. The callers are the five roles with
the objects' owners (``city_hospital``, ``chc_a``, the Hefei platform and hotline, the Anhui
commission), no key at all, and five outsiders: another hospital, another primary
institution, and the Jiangsu commission (320000), platform and hotline (320100).

Expected per cell: ``ALLOWED`` (2xx, or a business 4xx that is none of 401, 403, 404),
403 ``wrong_role`` for a role the row does not list, 401 without a key, and for outsiders
the row's own verdict, usually a 404 (the object is not theirs to see) or a 403; a verdict
may be a dict by role when, say, another hospital and another primary institution differ.

A new operation in the contract fails ``test_every_operation_has_a_row`` until it has a row
here: copy a row of a similar operation, say who may call it, and build its request.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.kit.config import Settings
from service.models.attendance import NoShowBar
from service.models.policy import Policy
from service.models.referrals import Referral
from service.models.signals import Alert, IdentityConflict
from tests.factories import (
    World,
    add_jiangsu,
    booking,
    contract_row,
    pool_slots,
    push,
    session_item,
    sign,
    waitlist_entry,
)
from tests.test_authorization import policy_body

CONTRACT = Path(__file__).resolve().parent.parent / "contracts" / "openapi.json"
DAY = date(2026, 3, 10)

# --- what a cell expects -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """An outcome: allowed (optionally with a check on the answer), or refused with status and code."""

    status: int | None = None  # None: allowed
    code: str | None = None  # None: any code
    check: Callable[[httpx.Response, Ctx], bool] | None = None
    why: str = ""

    def verdict(self, r: httpx.Response, ctx: Ctx) -> str | None:
        """None when ``r`` is this outcome, else what is wrong with it."""
        if self.status is None:
            if r.status_code in (401, 403, 404) or r.status_code >= 500:
                return f"expected allowed, got {r.status_code} {_code(r)}"
            if self.check is not None and not self.check(r, ctx):
                return f"allowed, but {self.why}"
            return None
        if r.status_code != self.status or (self.code is not None and _code(r) != self.code):
            return f"expected {self.status} {self.code or ''}, got {r.status_code} {_code(r)}"
        return None


def _code(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    if body.get("resourceType") == "OperationOutcome":  # /fhir carries /v1's code in details.coding
        codings = body["issue"][0].get("details", {}).get("coding", [])
        return str(codings[0]["code"]) if codings else ""
    return str(body.get("code", ""))


ALLOWED = Expect()
HIDDEN = Expect(404)  # another organisation's or region's object: as if it did not exist
OUT_OF_REGION = Expect(403, "out_of_region")
WRONG_ROLE = Expect(403, "wrong_role")
NO_KEY = Expect(401)


def allowed_if(check: Callable[[httpx.Response, Ctx], bool], why: str) -> Expect:
    return Expect(check=check, why=why)


def not_listing_owners_referral(r: httpx.Response, ctx: Ctx) -> bool:
    return ctx.reference not in r.text


def not_listing_owners_session(r: httpx.Response, ctx: Ctx) -> bool:
    return '"M1"' not in r.text and r.json()["items"] == []


def row_rejected(r: httpx.Response, ctx: Ctx) -> bool:
    return bool(r.json()["rejected"] == 1)


# --- the callers ---------------------------------------------------------------------------------

# caller -> (role, key name in World.keys; None: no key, kind: owner / other_org / other_region)
CALLERS: dict[str, tuple[str | None, str | None, str]] = {
    "hospital": ("hospital", "city_hospital", "owner"),
    "primary": ("primary", "chc_a", "owner"),
    "platform": ("platform", "platform", "owner"),
    "hotline": ("hotline", "hotline", "owner"),
    "commission": ("commission", "commission", "owner"),
    "none": (None, None, "none"),
    "hospital_other_org": ("hospital", "district_hospital", "other_org"),
    "primary_other_org": ("primary", "chc_b", "other_org"),
    "commission_other_region": ("commission", "jiangsu_commission", "other_region"),
    "platform_other_region": ("platform", "jiangsu_platform", "other_region"),
    "hotline_other_region": ("hotline", "jiangsu_hotline", "other_region"),
}

# --- the world the requests are built in ---------------------------------------------------------


@dataclass
class Call:
    path: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    json: Any = None


@dataclass
class Ctx:
    """The shared world: owners' objects made once per caller, and makers of fresh ones."""

    client: httpx.AsyncClient
    world: World
    reference: str = ""
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    # The caller's role: webhook rows build the endpoint of the owner of that role (a hospital's
    # or a primary institution's), so each owner calls on its own and each outsider on another's.
    role: str | None = None

    def auth(self, who: str) -> dict[str, str]:
        return self.world.auth(who)

    async def as_owner(self, method: str, url: str, who: str, **kwargs: Any) -> Any:
        r = await self.client.request(method, url, headers=self.auth(who), **kwargs)
        assert r.status_code < 300, (url, r.status_code, r.text)
        return r.json() if r.content else None

    async def fresh_referral(self) -> dict[str, Any]:
        """A new booking by chc_a at the city hospital, for rows that change or end a referral."""
        seq = next(self.seq)
        await sign(self.client, self.world, [seq])
        slot = (await pool_slots(self.client, self.world))[0]
        referral: dict[str, Any] = await self.as_owner(
            "POST", "/v1/referrals", "chc_a", json=booking(slot["slot_id"], seq, clock=self.world.clock)
        )
        return referral

    @property
    def endpoint_owner(self) -> str:
        return "chc_a" if self.role == "primary" else "city_hospital"

    async def fresh_endpoint(self) -> int:
        types = ["referral.cancelled"] if self.role == "primary" else ["referral.booked"]
        body = {"url": "http://127.0.0.1:9/matrix", "event_types": types}
        endpoint = await self.as_owner("POST", "/v1/webhooks/endpoints", self.endpoint_owner, json=body)
        return int(endpoint["id"])

    async def first_fhir_id(self, resource: str) -> str:
        bundle = await self.as_owner("GET", f"/fhir/{resource}", "chc_a")
        return str(bundle["entry"][0]["resource"]["id"])

    async def client_id(self, who: str) -> int:
        return int((await self.as_owner("GET", "/v1/me", who))["client_id"])


async def build_ctx(client: httpx.AsyncClient, world: World, crypto: Any) -> Ctx:
    """Jiangsu, a pushed session, one booking with a webhook delivery, a bar and an alert."""
    await add_jiangsu(world, crypto)
    ctx = Ctx(client=client, world=world)
    await push(client, world, [session_item("M1", DAY, slots=40)])
    await ctx.fresh_endpoint()
    ctx.reference = (await ctx.fresh_referral())["reference"]
    # Another centre declares the booked resident under another name: a name conflict.
    await sign(client, world, [100], institution="P-B", doctor_code="FD-B1", name="另一个名字")

    async def bar_and_alert(session: Any) -> None:
        referral = await session.scalar(select(Referral).where(Referral.reference == ctx.reference))
        policy_id = await session.scalar(select(Policy.id).where(Policy.code == "test-city"))
        now = world.clock.now()
        hospital = world.ids["city_hospital"]
        session.add(
            NoShowBar(resident_id=referral.resident_id, hospital_id=hospital, policy_id=policy_id,
                      starts_on=DAY, ends_on=DAY + timedelta(days=90), trigger_referral_ids=[referral.id],
                      created_at=now)
        )  # fmt: skip
        session.add(
            Alert(signal="book_cancel_churn", subject_type="institution", institution_id=world.ids["chc_a"],
                  hospital_id=hospital, policy_id=policy_id, window_hours=24, window_start=now - timedelta(days=1),
                  window_end=now, value=0.9, threshold=0.5, events=9, evidence_referral_ids=[referral.id],
                  first_seen_at=now, last_seen_at=now, status="open")
        )  # fmt: skip

    await world.db.run(bar_and_alert)
    return ctx


async def only(ctx: Ctx, sql_model: Any) -> int:
    return int(await ctx.world.db.run(lambda s: s.scalar(select(sql_model.id).limit(1))))


# --- how each row builds its request -------------------------------------------------------------

Builder = Callable[[Ctx], Awaitable[Call]]


def static(
    path: dict[str, Any] | None = None, params: dict[str, Any] | None = None, body: Any = None
) -> Builder:
    async def build(ctx: Ctx) -> Call:
        return Call(path=path or {}, params=params, json=body)

    return build


async def _referral(ctx: Ctx) -> Call:
    return Call(path={"reference": ctx.reference})


async def _booking(ctx: Ctx) -> Call:
    seq = next(ctx.seq)
    await sign(ctx.client, ctx.world, [seq])
    slot = (await pool_slots(ctx.client, ctx.world))[0]
    return Call(json=booking(slot["slot_id"], seq, clock=ctx.world.clock))


async def _cancel(ctx: Ctx) -> Call:
    referral = await ctx.fresh_referral()
    return Call(path={"reference": referral["reference"]}, json={"reason": "矩阵"})


async def _hotline_cancel(ctx: Ctx) -> Call:
    referral = await ctx.fresh_referral()
    body = {
        "reference": referral["reference"],
        "verification_code": referral["verification_code"],
        "reason": "x",
    }
    return Call(json=body)


async def _waitlist_body(ctx: Ctx) -> dict[str, Any]:
    seq = next(ctx.seq)
    await sign(ctx.client, ctx.world, [seq])
    department = (await pool_slots(ctx.client, ctx.world))[0]["department"]["id"]
    hospital = ctx.world.ids["city_hospital"]
    return waitlist_entry(
        seq, clock=ctx.world.clock, hospital_id=hospital, department_id=department, from_date=DAY
    )


async def _waitlist_create(ctx: Ctx) -> Call:
    return Call(json=await _waitlist_body(ctx))


async def _fresh_entry(ctx: Ctx) -> dict[str, Any]:
    entry: dict[str, Any] = await ctx.as_owner(
        "POST", "/v1/waitlist/entries", "chc_a", json=await _waitlist_body(ctx)
    )
    return entry


async def _waitlist_withdraw(ctx: Ctx) -> Call:
    entry = await _fresh_entry(ctx)
    return Call(path={"reference": entry["reference"]}, json={"reason": "矩阵"})


async def _waitlist_offer(ctx: Ctx) -> Call:
    """A fresh entry waits; a fresh referral is cancelled, and its slot is offered to the line."""
    await _fresh_entry(ctx)
    referral = await ctx.fresh_referral()
    await ctx.as_owner(
        "POST", f"/v1/referrals/{referral['reference']}/cancel", "chc_a", json={"reason": "矩阵"}
    )
    offers = await ctx.as_owner("GET", "/v1/waitlist/offers", "chc_a")
    return Call(path={"reference": offers["items"][-1]["reference"]})


async def _attendance(ctx: Ctx) -> Call:
    return Call(json={"reports": [{"reference": ctx.reference, "outcome": "attended"}]})


async def _contracts(ctx: Ctx) -> Call:
    return Call(json={"contracts": [contract_row(next(ctx.seq))]})


async def _sessions(ctx: Ctx) -> Call:
    return Call(json={"sessions": [session_item(f"M-{next(ctx.seq)}", DAY + timedelta(days=1), slots=4)]})


async def _organisation(ctx: Ctx) -> Call:
    body = {"code": f"P-M{next(ctx.seq)}", "name": "矩阵社区卫生服务中心", "kind": "primary",
            "region_code": "340104", "primary_kind": "community"}  # fmt: skip
    return Call(json=body)


async def _suspension(ctx: Ctx) -> Call:
    return Call(
        json={"subject_type": "institution", "organisation_code": "P-FAR", "mode": "suspended", "reason": "x"}
    )


async def _reinstate(ctx: Ctx) -> Call:
    subject = await ctx.client_id("provincial_hospital")
    suspension = await ctx.as_owner(
        "POST",
        "/v1/supervision/suspensions",
        "commission",
        json={"subject_type": "api_client", "subject_id": subject, "mode": "revoked", "reason": "x"},
    )
    return Call(path={"suspension_id": suspension["id"]}, json={"reason": "恢复"})


async def _endpoint(ctx: Ctx) -> Call:
    return Call(path={"endpoint_id": await ctx.fresh_endpoint()})


async def _endpoint_patch(ctx: Ctx) -> Call:
    types = ["referral.received"] if ctx.role == "primary" else ["referral.cancelled"]
    return Call(path={"endpoint_id": await ctx.fresh_endpoint()}, json={"event_types": types})


async def _endpoint_body(ctx: Ctx) -> Call:
    types = ["referral.cancelled"] if ctx.role == "primary" else ["referral.booked"]
    return Call(json={"url": "http://127.0.0.1:9/m", "event_types": types})


async def _delivery(ctx: Ctx) -> Call:
    if ctx.role == "primary":  # a cancellation queues one for the institution's endpoint
        await ctx.fresh_endpoint()
        referral = await ctx.fresh_referral()
        await ctx.as_owner(
            "POST", f"/v1/referrals/{referral['reference']}/cancel", "chc_a", json={"reason": "x"}
        )
    page = await ctx.as_owner(
        "GET", "/v1/webhooks/deliveries", ctx.endpoint_owner, params={"status": "pending"}
    )
    return Call(path={"delivery_id": page["items"][0]["id"]})


async def _bar(ctx: Ctx) -> Call:
    return Call(path={"bar_id": await only(ctx, NoShowBar)}, json={"reason": "误报"})


async def _alert(ctx: Ctx) -> Call:
    return Call(path={"alert_id": await only(ctx, Alert)})


def _fhir(resource: str, name: str) -> Builder:
    async def build(ctx: Ctx) -> Call:
        return Call(path={name: await ctx.first_fhir_id(resource)})

    return build


async def _appointment(ctx: Ctx) -> Call:
    return Call(path={"reference": ctx.reference})


async def _hospital(ctx: Ctx) -> Call:
    return Call(path={"hospital_id": ctx.world.ids["city_hospital"]}, json={"policy_code": "fuzhou"})


async def _opening_hours(ctx: Ctx) -> Call:
    return Call(
        path={"organisation_id": ctx.world.ids["chc_a"]},
        json={"opening_hours": {"mon": [["08:00", "12:00"]]}},
    )


async def _contact(ctx: Ctx) -> Call:
    return Call(
        path={"organisation_id": ctx.world.ids["city_hospital"]},
        json={
            "address_line": "安徽省合肥市蜀山区淮河路390号",
            "postal_code": "230001",
            "phone": "0551-62283114",
        },
    )


async def _compliance(ctx: Ctx) -> Call:
    params = {"from": "2026-03-09", "to": "2026-03-10", "hospital_id": ctx.world.ids["city_hospital"]}
    return Call(params=params)


async def _fresh_session(ctx: Ctx) -> Call:
    [result] = await push(
        ctx.client, ctx.world, [session_item(f"R-{next(ctx.seq)}", DAY + timedelta(days=2))]
    )
    return Call(path={"session_id": result["session_id"]}, params={"reason": "推送错误"})


async def _conflict(ctx: Ctx) -> Call:
    return Call(path={"conflict_id": await only(ctx, IdentityConflict)})


NO_INPUT = static()

# --- the matrix: one row per operation -----------------------------------------------------------

PUBLIC = frozenset({"*"})
HOSPITAL, PRIMARY, PLATFORM, HOTLINE, COMMISSION = "hospital", "primary", "platform", "hotline", "commission"
EVERY_ROLE = frozenset({HOSPITAL, PRIMARY, PLATFORM, HOTLINE, COMMISSION})


@dataclass(frozen=True)
class Row:
    roles: frozenset[str]
    build: Builder = NO_INPUT
    # Another hospital or primary institution, when its role is admitted; a dict when they differ.
    other_org: Expect | dict[str, Expect] = ALLOWED
    # The Jiangsu commission, platform or hotline, when its role is admitted; a dict when they differ.
    other_region: Expect | dict[str, Expect] = ALLOWED


def roles(*names: str) -> frozenset[str]:
    return frozenset(names)


MATRIX: dict[tuple[str, str], Row] = {
    # operations
    ("GET", "/healthz"): Row(PUBLIC),
    ("GET", "/readyz"): Row(PUBLIC),
    # registry
    ("GET", "/v1/me"): Row(EVERY_ROLE),
    # The sandbox clock (docs/sandbox.md): any client of a sandbox reads and moves it; it is the
    # sandbox's, no organisation's, so outsiders are allowed as owners are. A zero advance keeps
    # every later row's time as it was. Outside a sandbox: 404 sandbox_off (tests/test_sandbox.py).
    ("GET", "/v1/sandbox/clock"): Row(EVERY_ROLE),
    ("POST", "/v1/sandbox/clock"): Row(EVERY_ROLE, static(body={"advance": "PT0S"})),
    ("GET", "/v1/organisations"): Row(EVERY_ROLE),
    ("POST", "/v1/regions"): Row(
        roles(COMMISSION),
        static(
            body={
                "regions": [{"code": "340104", "name": "蜀山区", "level": "county", "parent_code": "340100"}]
            }
        ),
        other_region=OUT_OF_REGION,
    ),
    ("POST", "/v1/organisations"): Row(roles(COMMISSION), _organisation, other_region=OUT_OF_REGION),
    ("PUT", "/v1/organisations/{organisation_id}/opening-hours"): Row(
        roles(COMMISSION), _opening_hours, other_region=HIDDEN
    ),
    # A hospital sets its own contact, the commission those of its region; another's is hidden.
    ("PATCH", "/v1/organisations/{organisation_id}"): Row(
        roles(COMMISSION, HOSPITAL), _contact, other_org=HIDDEN, other_region=HIDDEN
    ),
    ("GET", "/v1/regions/{region_code}/notice-settings"): Row(
        roles(COMMISSION, PLATFORM, PRIMARY, HOSPITAL), static(path={"region_code": "340100"})
    ),
    ("PUT", "/v1/regions/{region_code}/notice-settings"): Row(
        roles(COMMISSION),
        static(
            path={"region_code": "340100"},
            body={"sms_sign_name": "合肥卫健", "sms_template_booked": "SMS_1", "booking_link_template": None},
        ),
        other_region=Expect(403, "region_out_of_scope"),
    ),
    ("POST", "/v1/alliances"): Row(
        roles(COMMISSION),
        static(body={"name": "矩阵医共体", "lead_hospital_code": "H-DIST", "member_codes": ["P-A"]}),
        other_region=OUT_OF_REGION,
    ),
    # policies
    ("GET", "/v1/policies"): Row(EVERY_ROLE),
    ("POST", "/v1/policies"): Row(
        roles(COMMISSION),
        static(body=policy_body(ratio="0.30")),
        other_region=allowed_if(
            lambda r, ctx: r.json()["code"] == "test-city-320000", "it must land on Jiangsu's own copy"
        ),
    ),
    ("PUT", "/v1/hospitals/{hospital_id}/policy"): Row(roles(COMMISSION), _hospital, other_region=HIDDEN),
    # hospital feed and attendance
    ("POST", "/v1/hospital/sessions"): Row(roles(HOSPITAL), _sessions),
    ("DELETE", "/v1/hospital/sessions/{session_id}"): Row(roles(HOSPITAL), _fresh_session, other_org=HIDDEN),
    ("DELETE", "/v1/sessions/{session_id}"): Row(roles(COMMISSION), _fresh_session, other_region=HIDDEN),
    ("GET", "/v1/hospital/shortfalls"): Row(roles(HOSPITAL)),
    ("GET", "/v1/hospital/sessions"): Row(
        roles(HOSPITAL),
        static(params={"service_date": DAY.isoformat()}),
        other_org=allowed_if(not_listing_owners_session, "another hospital's session must not be listed"),
    ),
    ("GET", "/v1/hospital/worklist"): Row(
        roles(HOSPITAL),
        other_org=allowed_if(not_listing_owners_referral, "another hospital's referral must not be listed"),
    ),
    ("POST", "/v1/hospital/attendance"): Row(roles(HOSPITAL), _attendance, other_org=ALLOWED),
    ("POST", "/v1/referrals/{reference}/receive"): Row(roles(HOSPITAL), _referral, other_org=HIDDEN),
    # contracts, pool and referrals
    ("POST", "/v1/contracts/sync"): Row(
        roles(PLATFORM, PRIMARY),
        _contracts,
        other_org=allowed_if(row_rejected, "another institution's contract must be rejected"),
        other_region=allowed_if(row_rejected, "another region's contract must be rejected"),
    ),
    ("GET", "/v1/regions/{region_code}/contract-source"): Row(
        roles(COMMISSION, PLATFORM, PRIMARY), static(path={"region_code": "340100"})
    ),
    ("PUT", "/v1/regions/{region_code}/contract-source"): Row(
        roles(COMMISSION),
        static(path={"region_code": "340100"}, body={"source": "any"}),
        other_region=Expect(403, "region_out_of_scope"),
    ),
    ("GET", "/v1/availability"): Row(
        roles(PLATFORM),
        static(params={"region": "340100", "from": "2026-03-09", "to": "2026-03-12"}),
        other_region=Expect(403, "region_out_of_scope"),
    ),
    ("GET", "/v1/pool/slots"): Row(roles(PRIMARY)),
    ("POST", "/v1/referrals"): Row(roles(PRIMARY), _booking),
    ("GET", "/v1/referrals"): Row(
        roles(PRIMARY, HOSPITAL),
        other_org=allowed_if(
            not_listing_owners_referral, "another organisation's referral must not be listed"
        ),
    ),
    ("GET", "/v1/referrals/{reference}"): Row(roles(PRIMARY, HOSPITAL), _referral, other_org=HIDDEN),
    ("GET", "/v1/referrals/{reference}/notice"): Row(roles(PRIMARY, HOSPITAL), _referral, other_org=HIDDEN),
    ("GET", "/v1/referrals/{reference}/slip.pdf"): Row(roles(PRIMARY, HOSPITAL), _referral, other_org=HIDDEN),
    ("POST", "/v1/referrals/{reference}/cancel"): Row(roles(PRIMARY), _cancel, other_org=HIDDEN),
    # Another region's referral answers exactly as an unknown reference or a wrong code does.
    ("POST", "/v1/hotline/cancellations"): Row(
        roles(HOTLINE), _hotline_cancel, other_region=Expect(422, "verification_failed")
    ),
    # the waiting list (docs/waitlist.md)
    ("POST", "/v1/waitlist/entries"): Row(roles(PRIMARY), _waitlist_create),
    ("GET", "/v1/waitlist/entries"): Row(
        roles(PRIMARY),
        other_org=allowed_if(
            lambda r, ctx: r.json()["items"] == [], "another institution's entries must not be listed"
        ),
    ),
    ("POST", "/v1/waitlist/entries/{reference}/withdraw"): Row(
        roles(PRIMARY), _waitlist_withdraw, other_org=HIDDEN
    ),
    ("GET", "/v1/waitlist/offers"): Row(
        roles(PRIMARY),
        other_org=allowed_if(
            lambda r, ctx: r.json()["items"] == [], "another institution's offers must not be listed"
        ),
    ),
    ("POST", "/v1/waitlist/offers/{reference}/accept"): Row(
        roles(PRIMARY), _waitlist_offer, other_org=HIDDEN
    ),
    ("POST", "/v1/waitlist/offers/{reference}/decline"): Row(
        roles(PRIMARY), _waitlist_offer, other_org=HIDDEN
    ),
    # supervision
    ("GET", "/v1/shortfalls"): Row(roles(COMMISSION)),
    ("GET", "/v1/reports/compliance"): Row(
        roles(COMMISSION), _compliance, other_region=Expect(403, "hospital_outside_region")
    ),
    ("GET", "/v1/no-show-bars"): Row(roles(COMMISSION)),
    ("POST", "/v1/no-show-bars/{bar_id}/lift"): Row(roles(COMMISSION), _bar, other_region=HIDDEN),
    ("GET", "/v1/supervision/alerts"): Row(roles(COMMISSION)),
    ("GET", "/v1/supervision/alerts/{alert_id}"): Row(roles(COMMISSION), _alert, other_region=HIDDEN),
    ("POST", "/v1/supervision/alerts/{alert_id}/acknowledge"): Row(
        roles(COMMISSION), _alert, other_region=HIDDEN
    ),
    ("GET", "/v1/supervision/identity-conflicts"): Row(
        roles(COMMISSION),
        other_region=allowed_if(lambda r, ctx: r.json()["items"] == [], "it lists another region's conflict"),
    ),
    ("GET", "/v1/supervision/identity-conflicts/{conflict_id}"): Row(
        roles(COMMISSION), _conflict, other_region=HIDDEN
    ),
    ("POST", "/v1/supervision/identity-conflicts/{conflict_id}/acknowledge"): Row(
        roles(COMMISSION), _conflict, other_region=HIDDEN
    ),
    ("GET", "/v1/supervision/suspensions"): Row(roles(COMMISSION)),
    ("POST", "/v1/supervision/suspensions"): Row(roles(COMMISSION), _suspension, other_region=HIDDEN),
    ("POST", "/v1/supervision/suspensions/{suspension_id}/reinstate"): Row(
        roles(COMMISSION), _reinstate, other_region=HIDDEN
    ),
    ("GET", "/v1/audit"): Row(roles(COMMISSION)),
    ("POST", "/v1/audit/search"): Row(roles(COMMISSION), static(body={"action": "referral.booked"})),
    # webhooks: a hospital's and a primary institution's own endpoints (docs/webhooks.md)
    ("GET", "/v1/webhooks/endpoints"): Row(roles(HOSPITAL, PRIMARY)),
    ("POST", "/v1/webhooks/endpoints"): Row(roles(HOSPITAL, PRIMARY), _endpoint_body),
    ("GET", "/v1/webhooks/endpoints/{endpoint_id}"): Row(
        roles(HOSPITAL, PRIMARY), _endpoint, other_org=HIDDEN
    ),
    ("PATCH", "/v1/webhooks/endpoints/{endpoint_id}"): Row(
        roles(HOSPITAL, PRIMARY), _endpoint_patch, other_org=HIDDEN
    ),
    ("DELETE", "/v1/webhooks/endpoints/{endpoint_id}"): Row(
        roles(HOSPITAL, PRIMARY), _endpoint, other_org=HIDDEN
    ),
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret"): Row(
        roles(HOSPITAL, PRIMARY), _endpoint, other_org=HIDDEN
    ),
    # A test event goes to the caller's own endpoint only (here a closed port: answered, not delivered).
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}/test"): Row(
        roles(HOSPITAL, PRIMARY), _endpoint, other_org=HIDDEN
    ),
    ("GET", "/v1/webhooks/deliveries"): Row(roles(HOSPITAL, PRIMARY)),
    ("POST", "/v1/webhooks/deliveries/{delivery_id}/replay"): Row(
        roles(HOSPITAL, PRIMARY), _delivery, other_org=HIDDEN
    ),
    # FHIR
    ("GET", "/fhir/metadata"): Row(PUBLIC),
    ("GET", "/fhir/Location"): Row(roles(HOSPITAL, PRIMARY, PLATFORM, COMMISSION)),
    ("GET", "/fhir/Location/{location_id}"): Row(
        roles(HOSPITAL, PRIMARY, PLATFORM, COMMISSION),
        _fhir("Location", "location_id"),
        other_org={HOSPITAL: HIDDEN},  # a hospital reads its own; a primary institution, the pools it books
        other_region=HIDDEN,
    ),
    ("GET", "/fhir/Schedule"): Row(roles(HOSPITAL, PRIMARY, PLATFORM, COMMISSION)),
    ("GET", "/fhir/Schedule/{schedule_id}"): Row(
        roles(HOSPITAL, PRIMARY, PLATFORM, COMMISSION),
        _fhir("Schedule", "schedule_id"),
        other_org={HOSPITAL: HIDDEN},  # a hospital reads its own; a primary institution, the pools it books
        other_region=HIDDEN,
    ),
    ("GET", "/fhir/Slot"): Row(roles(HOSPITAL, PRIMARY, PLATFORM, COMMISSION)),
    ("GET", "/fhir/Slot/{slot_id}"): Row(
        roles(HOSPITAL, PRIMARY, PLATFORM, COMMISSION),
        _fhir("Slot", "slot_id"),
        other_org={HOSPITAL: HIDDEN},  # a hospital reads its own; a primary institution, the pools it books
        other_region=HIDDEN,
    ),
    ("GET", "/fhir/Appointment"): Row(
        roles(HOSPITAL, PRIMARY),
        other_org=allowed_if(
            not_listing_owners_referral, "another organisation's appointment must not be listed"
        ),
    ),
    ("GET", "/fhir/Appointment/{reference}"): Row(roles(HOSPITAL, PRIMARY), _appointment, other_org=HIDDEN),
    ("GET", "/fhir/$bulk-publish"): Row(roles(PLATFORM, COMMISSION)),
    ("GET", "/fhir/bulk/{resource_type}.ndjson"): Row(
        roles(PLATFORM, COMMISSION), static(path={"resource_type": "Slot"})
    ),
}


def contract_operations() -> set[tuple[str, str]]:
    paths = json.loads(CONTRACT.read_text())["paths"]
    return {(method.upper(), path) for path, operations in paths.items() for method in operations}


def expected(row: Row, caller: str) -> Expect:
    role, _, kind = CALLERS[caller]
    if row.roles == PUBLIC:
        return ALLOWED
    if role is None:
        return NO_KEY
    if role not in row.roles:
        return WRONG_ROLE
    if kind == "owner":
        return ALLOWED
    verdict = row.other_org if kind == "other_org" else row.other_region
    return verdict.get(role, ALLOWED) if isinstance(verdict, dict) else verdict


# --- the tests -----------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The matrix runs against a sandbox, the one kind of server where every operation exists."""
    return Settings(
        run_loops=False, log_json=False, lock_timeout_ms=5000, db_pool_size=20, webhook_allow_loopback=True,
        sandbox=True,
    )  # fmt: skip


def test_every_operation_has_a_row():
    """A new operation without a row, or a row whose operation is gone, fails here."""
    operations = contract_operations()
    assert sorted(operations - MATRIX.keys()) == [], "operations in the contract without a row in MATRIX"
    assert sorted(MATRIX.keys() - operations) == [], "rows in MATRIX for operations the contract lacks"


def test_a_missing_row_is_noticed():
    """The check above cannot pass vacuously: drop one row and the sets differ."""
    some = next(iter(MATRIX))
    assert contract_operations() - (MATRIX.keys() - {some}) == {some}


def test_the_matrix_covers_every_role():
    assert {role for role, _, _ in CALLERS.values() if role} == EVERY_ROLE
    for (method, path), row in MATRIX.items():
        assert row.roles == PUBLIC or row.roles <= EVERY_ROLE, (method, path)


@pytest.mark.parametrize("caller", list(CALLERS))
async def test_authorization_matrix(caller, client, world, crypto):
    """One world per caller; every operation in the contract, with its expected outcome."""
    ctx = await build_ctx(client, world, crypto)
    ctx.role, key, _ = CALLERS[caller]
    headers = world.auth(key) if key else {}
    wrong: list[str] = []
    for (method, path), row in MATRIX.items():
        call = await row.build(ctx)
        url = path.format(**call.path)
        r = await client.request(method, url, headers=headers, params=call.params, json=call.json)
        problem = expected(row, caller).verdict(r, ctx)
        if problem is not None:
            wrong.append(f"{method} {path}: {problem}")
    assert wrong == [], f"{caller}:\n" + "\n".join(wrong)
