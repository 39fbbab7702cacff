"""Which webhook URLs the service will call (SSRF protection, OWASP API7).

Only https, plus http to loopback in development. Outside development the host
must resolve to public addresses only: no private, loopback, link-local,
shared (CGNAT) or cloud metadata address. The check runs at registration and
again before every request, and the request then connects to the address that
was checked, so a DNS answer that changes in between (DNS rebinding) cannot
steer it inside.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from service.errors import Unprocessable

MAX_URL_LENGTH = 2000
# Named for the error message; is_global already excludes each of them.
METADATA_ADDRESSES = frozenset(
    {
        "169.254.169.254",  # AWS, GCP, Azure, Tencent Cloud, Huawei Cloud
        "100.100.100.200",  # Alibaba Cloud
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
    }
)

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """Where a request for ``url`` goes: ``address`` pins the checked address (None: let httpx resolve)."""

    url: str
    host: str
    address: str | None


def _refuse(code: str, detail: str) -> Unprocessable:
    return Unprocessable(code, detail)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_loopback_host(host: str) -> bool:
    ip = _ip(host)
    return host == "localhost" or (ip is not None and ip.is_loopback)


def _parse(url: str, *, development: bool) -> SplitResult:
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
    if parts.scheme == "http" and not (development and _is_loopback_host(parts.hostname)):
        raise _refuse(
            "webhook_url_not_https",
            "Webhook URLs must use https (plain http is accepted only to loopback in development).",
        )
    return parts


def refusal_of(address: str) -> str | None:
    """Why ``address`` may not be called outside development, or None if it may."""
    ip = _ip(address)
    if ip is None:
        return f"{address} is not an IP address"
    if str(ip) in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_private:
        return f"{ip} is a private address"
    if not ip.is_global or ip.is_multicast:
        return f"{ip} is not a public unicast address"
    return None


async def resolve_target(url: str, *, development: bool, resolver: Resolver = system_resolver) -> Target:
    """Check ``url`` and decide the address to connect to; raises a 422 Problem when refused."""
    parts = _parse(url, development=development)
    host = parts.hostname or ""
    if development:
        return Target(url=url, host=host, address=None)
    port = parts.port or 443
    if _ip(host) is not None:
        addresses = [host]
    else:
        try:
            addresses = await resolver(host, port)
        except OSError as exc:
            raise _refuse("webhook_url_unresolvable", f"The host {host} does not resolve.") from exc
        if not addresses:
            raise _refuse("webhook_url_unresolvable", f"The host {host} does not resolve.")
    for address in addresses:
        reason = refusal_of(address)
        if reason is not None:
            raise _refuse(
                "webhook_url_refused", f"The webhook URL resolves to a non-public address: {reason}."
            )
    return Target(url=url, host=host, address=addresses[0])


async def check_url(url: str, *, development: bool, resolver: Resolver = system_resolver) -> str:
    """The URL, if the service may call it; raises a 422 Problem otherwise."""
    await resolve_target(url, development=development, resolver=resolver)
    return url
