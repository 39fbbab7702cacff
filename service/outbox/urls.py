"""Which webhook URLs the service will call (SSRF protection, OWASP API7).

Only https, to hosts whose every address is public unicast, in every environment.
Refused: every block of the IANA IPv4 and IPv6 Special-Purpose Address Registries
(shipped as data in ``iana/``, the CSVs IANA publishes, retrieved on
``REGISTRY_RETRIEVED``), multicast, IPv6 outside 2000::/3, cloud metadata
addresses, and any IPv6 address whose embedded IPv4 address (IPv4-mapped,
IPv4-compatible, NAT64, 6to4, Teredo) would be refused. Numeric hosts such as
``2130706433`` or ``0x7f.1`` are read the way the system resolver reads them.

The one exception is loopback (127.0.0.0/8, ::1, ``localhost``), over http or
https, and only when ``SLOTPOOL_WEBHOOK_ALLOW_LOOPBACK`` is set (development;
production refuses to start with it). The check runs at registration and again
before every request, and the request then connects to the address that was
checked, so a DNS answer that changes in between (DNS rebinding) cannot steer it
inside.
"""

from __future__ import annotations

import asyncio
import csv
import io
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import SplitResult, urlsplit

from service.kit.errors import Unprocessable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2000
# iana/ holds IANA's IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890, RFC 8190) in the
# CSV form IANA publishes (https://www.iana.org/assignments/iana-ipv4-special-registry/ and
# .../iana-ipv6-special-registry/), as fetched from IANA on this date; the newest entry then was
# 100:0:0:1::/64 (RFC 9780, 2025-04). docs/security.md says how to update them.
REGISTRY_RETRIEVED = "2026-07-18"
REGISTRY_FILES = ("iana-ipv4-special-registry-1.csv", "iana-ipv6-special-registry-1.csv")
# Named for the error message; each is also inside a special-purpose block.
METADATA_ADDRESSES = frozenset(
    {
        "169.254.169.254",  # AWS, GCP, Azure, Tencent Cloud, Huawei Cloud
        "100.100.100.200",  # Alibaba Cloud
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
    }
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_FOOTNOTE = re.compile(r"\s*\[\d+\]$")

Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True)
class SpecialBlock:
    """One address block of an IANA special-purpose registry."""

    network: IPNetwork
    name: str
    rfc: str


def _load_registry() -> tuple[SpecialBlock, ...]:
    blocks: list[SpecialBlock] = []
    folder = resources.files("service.outbox").joinpath("iana")
    for filename in REGISTRY_FILES:
        text = folder.joinpath(filename).read_text(encoding="utf-8")
        for row in csv.DictReader(io.StringIO(text)):
            # A cell may hold several blocks ("192.0.0.170/32, 192.0.0.171/32") and a footnote mark.
            for cell in row["Address Block"].split(","):
                network = ipaddress.ip_network(_FOOTNOTE.sub("", cell.strip()))
                rfc = " ".join(row["RFC"].split())
                blocks.append(SpecialBlock(network=network, name=row["Name"].strip('"'), rfc=rfc))
    return tuple(blocks)


SPECIAL_PURPOSE_BLOCKS = _load_registry()


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """Where a request for ``url`` goes: ``address`` is the checked address to connect to."""

    url: str
    host: str
    address: str


def _refuse(code: str, detail: str) -> Unprocessable:
    return Unprocessable(code, detail)


def _ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a resolver reads in ``host`` (inet_aton forms), or None if it is a name.

    ``2130706433``, ``0x7f.1``, ``017700000001`` and ``127.1`` are all 127.0.0.1 to
    getaddrinfo, so they must be to this check too. Raises ValueError for a host
    that is numeric in form but no address (``1.2.3.999``).
    """
    labels = host.split(".")
    if not labels or len(labels) > 4 or not all(re.fullmatch(r"0[xX][0-9a-fA-F]*|[0-9]+", p) for p in labels):
        return None
    values = []
    for label in labels:
        if label[:2] in ("0x", "0X"):
            if len(label) == 2:
                raise ValueError(host)
            values.append(int(label[2:], 16))
        elif len(label) > 1 and label.startswith("0"):
            values.append(int(label, 8))  # ValueError on 8 or 9, as inet_aton refuses them
        else:
            values.append(int(label))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        raise ValueError(host)
    number = last
    for i, value in enumerate(head):
        number += value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, with the form that carries each."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped", ip.ipv4_mapped))
    elif ip in _IPV4_COMPATIBLE and int(ip) > 1:
        found.append(("IPv4-compatible", low32))
    if ip in _NAT64_WELL_KNOWN:
        found.append(("NAT64", low32))
    elif ip in _NAT64_LOCAL:
        # RFC 6052 with a /48 prefix: two octets before the reserved "u" octet, two after it.
        packed = ip.packed
        found.append(("NAT64", ipaddress.IPv4Address(packed[6:8] + packed[9:11])))
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found.extend([("Teredo server", server), ("Teredo client", client)])
    return found


def special_block_of(ip: IPAddress) -> SpecialBlock | None:
    """The most specific IANA special-purpose block holding ``ip``, or None."""
    holding = [b for b in SPECIAL_PURPOSE_BLOCKS if ip.version == b.network.version and ip in b.network]
    return max(holding, key=lambda b: b.network.prefixlen, default=None)


def refusal_of(address: str, *, allow_loopback: bool = False) -> str | None:
    """Why ``address`` may not be called, or None if it may."""
    ip = _ip(address)
    if ip is None:
        return f"{address} is not an IP address"
    if allow_loopback and ip.is_loopback:
        return None
    if str(ip) in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        for form, inner in embedded_ipv4(ip):
            reason = refusal_of(str(inner))
            if reason is not None:
                return f"{ip} carries {inner} ({form}): {reason}"
    block = special_block_of(ip)
    if block is not None:
        return f"{ip} is in the special-purpose block {block.network} ({block.name}, {block.rfc})"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return f"{ip} is outside the IPv6 global unicast space 2000::/3"
    if not ip.is_global:
        return f"{ip} is not a public unicast address"
    return None


def _loopback_name(host: str) -> bool:
    # RFC 6761: localhost names resolve to loopback; what they resolve to is checked all the same.
    return host == "localhost" or host.endswith(".localhost")


def _parse(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise _refuse("webhook_url_invalid", f"A webhook URL has at most {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse("webhook_url_invalid", "The webhook URL cannot be parsed.") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _refuse("webhook_url_invalid", "A webhook URL is an absolute https:// URL.")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise _refuse("webhook_url_invalid", "A webhook URL carries no credentials and no fragment.")
    if port == 0:
        raise _refuse("webhook_url_invalid", "Port 0 is not a port.")
    return parts


def _not_https() -> Unprocessable:
    return _refuse(
        "webhook_url_not_https",
        "Webhook URLs must use https (plain http is accepted only to loopback, in development).",
    )


async def _addresses(host: str, port: int, resolver: Resolver) -> list[str]:
    literal = _ip(host)
    if literal is not None:
        return [str(literal)]
    try:
        numeric = numeric_ipv4(host)
    except ValueError as exc:
        raise _refuse("webhook_url_invalid", f"The host {host} is not a valid address.") from exc
    if numeric is not None:
        return [str(numeric)]
    try:
        addresses = await resolver(host, port)
    except OSError as exc:
        raise _refuse("webhook_url_unresolvable", f"The host {host} does not resolve.") from exc
    if not addresses:
        raise _refuse("webhook_url_unresolvable", f"The host {host} does not resolve.")
    return addresses


async def resolve_target(url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver) -> Target:
    """Check ``url`` and decide the address to connect to; raises a 422 Problem when refused."""
    parts = _parse(url)
    host = parts.hostname or ""
    plain_http = parts.scheme == "http"
    if plain_http and not allow_loopback:
        raise _not_https()
    if plain_http and not _loopback_name(host):
        # Only a loopback literal may follow; the name of a public host never.
        literal = _ip(host)
        try:
            numeric = literal or numeric_ipv4(host)
        except ValueError:
            numeric = None
        if numeric is None or not numeric.is_loopback:
            raise _not_https()
    addresses = await _addresses(host, parts.port or (80 if plain_http else 443), resolver)
    for address in addresses:
        reason = refusal_of(address, allow_loopback=allow_loopback)
        if reason is not None:
            raise _refuse(
                "webhook_url_refused", f"The webhook URL resolves to a non-public address: {reason}."
            )
        if plain_http and not ipaddress.ip_address(address.split("%", 1)[0]).is_loopback:
            raise _not_https()
    return Target(url=url, host=host, address=str(_ip(addresses[0])))


async def check_url(url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver) -> str:
    """The URL, if the service may call it; raises a 422 Problem otherwise."""
    await resolve_target(url, allow_loopback=allow_loopback, resolver=resolver)
    return url
