"""The whole path once: push, search, book, read, cancel."""

from __future__ import annotations

from datetime import date

from tests.factories import booking, contract_row, session_item

DAY = date(2026, 3, 10)  # public release 3 March 08:00; the pool opened 2 March 08:00


async def test_push_book_cancel(client, world, clock):
    r = await client.post(
        "/v1/hospital/sessions",
        json={"sessions": [session_item("S1", DAY, slots=10)]},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["result"] == "created"
    assert len(result["pool_slot_numbers"]) == 2

    r = await client.post(
        "/v1/contracts/sync", json={"contracts": [contract_row(1)]}, headers=world.auth("platform")
    )
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 1

    r = await client.get("/v1/pool/slots", headers=world.auth("chc_a"))
    assert r.status_code == 200, r.text
    slots = r.json()["items"]
    assert len(slots) == 2

    r = await client.post(
        "/v1/referrals", json=booking(slots[0]["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    ref = r.json()
    assert ref["status"] == "booked"
    assert len(ref["verification_code"]) == 6

    r = await client.post(
        f"/v1/referrals/{ref['reference']}/cancel",
        json={"reason": "patient recovered"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
