"""Webhook address checks are on in every environment (OWASP API7).

The registry test reads IANA's CSVs shipped in the package with the csv module and
checks the first, a middle and the last address of every block, so a block dropped
from the check (or a registry file cut short) fails here.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from importlib import resources
from typing import Any

import pytest
from sqlalchemy import select

from service.kit.config import Settings
from service.kit.errors import Unprocessable
from service.models.webhooks import WebhookAttempt, WebhookEndpoint
from service.outbox.dispatcher import Dispatcher
from service.outbox.urls import check_url, numeric_ipv4, refusal_of
from tests.test_webhooks import ALL_TYPES, drain, emit_returned, fake_dns, scalar
from tests.webhook_receiver import Receiver

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
DNS = fake_dns({"his.example.org": [PUBLIC_V4], "rebind.example.org": ["10.0.0.1"]})


@pytest.fixture
def settings() -> Settings:
    """The defaults, as a deployment that never set SLOTPOOL_ENV or the loopback switch gets them."""
    return Settings(run_loops=False, log_json=False)


def registry_rows(filename: str) -> list[dict[str, str]]:
    text = resources.files("service.outbox").joinpath("iana", filename).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(keepends=True)))


def registry_blocks() -> list[tuple[str, str]]:
    blocks = []
    for filename in ("iana-ipv4-special-registry-1.csv", "iana-ipv6-special-registry-1.csv"):
        for row in registry_rows(filename):
            for cell in row["Address Block"].split(","):
                blocks.append((re.sub(r"\s*\[\d+\]$", "", cell.strip()), row["Name"]))
    return blocks


BLOCKS = registry_blocks()


def test_the_shipped_registries_are_whole():
    """25 IPv4 and 25 IPv6 rows as retrieved; the NAT64/DNS64 row names two blocks."""
    assert len(registry_rows("iana-ipv4-special-registry-1.csv")) == 25
    assert len(registry_rows("iana-ipv6-special-registry-1.csv")) == 25
    assert len(BLOCKS) == 51
    assert ("192.0.0.0/24", "IETF Protocol Assignments") in BLOCKS
    assert ("100:0:0:1::/64", "Dummy IPv6 Prefix") in BLOCKS


@pytest.mark.parametrize(("block", "name"), BLOCKS, ids=[b for b, _ in BLOCKS])
def test_every_iana_special_purpose_block_is_refused(block, name):
    network = ipaddress.ip_network(block)
    middle = network.network_address + network.num_addresses // 2
    for address in {network.network_address, middle, network.broadcast_address}:
        assert refusal_of(str(address)) is not None, (block, name, address)
        if network.version == 4:
            # The same IPv4 address inside IPv6: mapped, compatible, NAT64 (both prefixes), 6to4.
            v4 = int(address)
            for carrier in (
                f"::ffff:{address}",
                f"::{address}",
                f"64:ff9b::{address}",
                str(ipaddress.IPv6Address((0x64FF9B0001 << 80) | ((v4 >> 16) << 64) | ((v4 & 0xFFFF) << 40))),
                str(ipaddress.IPv6Address((0x2002 << 112) | (v4 << 80) | 1)),
            ):
                reason = refusal_of(carrier)
                assert reason is not None, (block, carrier)


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/",
        "https://[::ffff:10.0.0.1]/",
        "https://2130706433/",
        "https://0x7f.1/",
        "https://017700000001/",
        "https://127.1/",
        "https://192.0.0.1/",
        "https://192.0.0.170/",
        "https://[64:ff9b::10.0.0.1]/",
        "https://[64:ff9b::8.8.8.8]/",
        "https://[64:ff9b:1::a00:1]/",
        "https://[2002:a00:1::1]/",
        "https://[2002:808:808::1]/",
        "https://[::10.0.0.1]/",
        "https://[::8.8.8.8]/",
        "https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
        "https://[::1]/",
        "https://[fe80::1%25eth0]/",
        "https://[ff0e::1]/",
        "https://224.0.0.1/",
        "https://[4000::1]/",
        "https://rebind.example.org/",
    ],
)
async def test_non_public_addresses_are_refused_by_default(url):
    assert not Settings().webhook_allow_loopback
    with pytest.raises(Unprocessable) as refused:
        await check_url(url, allow_loopback=False, resolver=DNS)
    assert refused.value.code == "webhook_url_refused", refused.value.detail


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("::ffff:10.0.0.1", "10.0.0.1 (IPv4-mapped)"),
        ("::10.0.0.1", "10.0.0.1 (IPv4-compatible)"),
        ("64:ff9b::a00:1", "10.0.0.1 (NAT64)"),
        ("64:ff9b:1:a00:0:100::", "10.0.0.1 (NAT64)"),
        ("2002:a9fe:a9fe::1", "169.254.169.254 (6to4)"),
        ("2001:0:a00:1::", "10.0.0.1 (Teredo server)"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1 (Teredo client)"),
    ],
)
def test_embedded_ipv4_is_decoded_and_checked(address, carried):
    reason = refusal_of(address)
    assert reason is not None and f"carries {carried}" in reason, reason


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("10.0.1", "10.0.0.1"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("93.184.216.34", "93.184.216.34"),
    ],
)
def test_numeric_hosts_are_read_as_the_resolver_reads_them(host, address):
    import socket

    assert str(numeric_ipv4(host)) == address
    assert socket.inet_ntoa(socket.inet_aton(host)) == address  # the C library agrees


@pytest.mark.parametrize("host", ["1.2.3.256", "0x", "08.1.1.1", "1.256.1.1", "4294967296"])
async def test_numeric_hosts_that_are_no_address_are_invalid(host):
    with pytest.raises(Unprocessable) as refused:
        await check_url(f"https://{host}/", allow_loopback=False, resolver=DNS)
    assert refused.value.code == "webhook_url_invalid"


async def test_public_addresses_are_accepted():
    for url in (
        f"https://{PUBLIC_V4}/hook",
        f"https://[{PUBLIC_V6}]/hook",
        "https://his.example.org:8443/hook",
        "https://1572395042/",  # 93.184.216.34 as one number
    ):
        assert await check_url(url, allow_loopback=False, resolver=DNS) == url


async def test_loopback_needs_the_explicit_switch_and_admits_nothing_else():
    loopback = [
        "http://127.0.0.1:8080/hook",
        "https://[::1]/hook",
        "http://localhost/hook",
        "http://2130706433/",
    ]
    for url in loopback:
        with pytest.raises(Unprocessable):
            await check_url(url, allow_loopback=False, resolver=fake_dns({"localhost": ["127.0.0.1"]}))
        assert await check_url(url, allow_loopback=True, resolver=fake_dns({"localhost": ["127.0.0.1"]}))
    for url, code in [
        ("https://10.0.0.1/", "webhook_url_refused"),
        ("https://[::ffff:127.0.0.1]/", "webhook_url_refused"),
        ("https://169.254.169.254/", "webhook_url_refused"),
        ("http://his.example.org/", "webhook_url_not_https"),
        ("http://10.0.0.1/", "webhook_url_not_https"),
    ]:
        with pytest.raises(Unprocessable) as refused:
            await check_url(url, allow_loopback=True, resolver=DNS)
        assert refused.value.code == code, url
    # A "localhost" that resolves elsewhere is refused too.
    with pytest.raises(Unprocessable) as refused:
        await check_url(
            "http://localhost/", allow_loopback=True, resolver=fake_dns({"localhost": ["10.0.0.1"]})
        )
    assert refused.value.code == "webhook_url_refused"


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/",
        "https://[::ffff:10.0.0.1]/",
        "https://2130706433/",
        "http://127.0.0.1:8080/hook",
    ],
)
async def test_the_api_refuses_internal_webhook_urls_with_default_settings(client, world, url):
    r = await client.post(
        "/v1/webhooks/endpoints",
        json={"url": url, "event_types": ALL_TYPES},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 422, r.text
    assert r.json()["code"] in ("webhook_url_refused", "webhook_url_not_https")


async def test_delivery_rechecks_with_default_settings(world, clock, crypto, db, settings):
    """An endpoint already stored with a loopback URL is not called by a default dispatcher."""
    receiver = Receiver(clock)
    receiver.start()
    try:

        async def add(session: Any) -> None:
            from service.outbox.endpoints import SECRET_COLUMN
            from service.outbox.signing import new_secret

            now = clock.now()
            session.add(
                WebhookEndpoint(
                    organisation_id=world.ids["city_hospital"], url=receiver.url, event_types=ALL_TYPES,
                    status="active", secret_enc=crypto.encrypt(new_secret(), column=SECRET_COLUMN),
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip

        await db.run(add)
        await emit_returned(db, world, 1)
        async with Dispatcher(db, clock, crypto, settings) as dispatcher:
            assert await drain(dispatcher) == 1
        attempt = await scalar(db, select(WebhookAttempt))
        assert attempt.error.startswith("webhook_url_not_https"), attempt.error
        assert receiver.requests == []
    finally:
        receiver.stop()
