"""Where webhooks may go (SSRF policy): http/https only, public addresses only unless allowlisted, the
host resolved at delivery time and the connection pinned to the address that was checked."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class WebhookURLError(ValueError):
    """The URL can never be delivered to (bad scheme, no host, a refused literal address)."""


class ResolveError(OSError):
    """The host name did not resolve this time."""


@dataclass(frozen=True)
class Allowlist:
    """Hosts (exact names, case-insensitive) and networks (CIDRs or single addresses) webhooks may reach
    even though they are not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        hosts, networks = set(), []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def permits(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(address in net for net in self.networks if net.version == address.version)


# IPv6 prefixes that carry an IPv4 address (RFC 6052 NAT64, RFC 8215 local-use NAT64, 6to4, Teredo,
# IPv4-compatible): such an address reaches, or is translated to, the IPv4 address inside it.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_COMPATIBLE = ipaddress.ip_network("::/96")
# IPv4 ranges Python's `is_global` lets through that are not public unicast: IETF protocol assignments.
_NOT_PUBLIC_V4 = (ipaddress.ip_network("192.0.0.0/24"),)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    value = int(address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address in _NAT64_LOCAL:  # a /48 prefix: the IPv4 address is bits 48-63 and 72-87 (RFC 6052)
        return ipaddress.IPv4Address(((value >> 64) & 0xFFFF) << 16 | (value >> 40) & 0xFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address, where the traffic goes
    return None


def public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local (metadata), shared, reserved,
    unspecified, multicast or an IETF protocol assignment (192.0.0.0/24). An IPv6 address that carries an
    IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is judged as that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return public(inner)
    if isinstance(address, ipaddress.IPv4Address) and any(address in net for net in _NOT_PUBLIC_V4):
        return False
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_host_name(host: str) -> None:
    """A DNS name as it goes on the wire: ASCII labels of 1 to 63 characters, 253 in all (an
    internationalised name in its IDNA `xn--` form)."""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise WebhookURLError(
            "'webhook_url' has an invalid host name: each dot-separated label must be 1 to 63 letters, "
            "digits, hyphens or underscores (an internationalised name in its IDNA xn-- form), 253 "
            "characters in all."
        )


def check_url(url: str, allow: Allowlist) -> None:
    """At submission: refuse a URL that can never be delivered to. A host name is checked again, by its
    addresses, at each delivery."""
    if not url.isascii() or any(ch <= " " or ch == "\x7f" for ch in url):
        raise WebhookURLError(
            "'webhook_url' must be ASCII without spaces or control characters: percent-encode the path "
            "and give an internationalised host name in its IDNA (xn--) form."
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(f"'webhook_url' is not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError("'webhook_url' must be an http:// or https:// URL.")
    host = parts.hostname
    if not host:
        raise WebhookURLError("'webhook_url' has no host.")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLError("'webhook_url' must not carry credentials.")
    if port == 0:
        raise WebhookURLError("'webhook_url' has port 0.")
    address = _literal(host)
    if address is None:
        _check_host_name(host)
    if address is not None and not public(address) and not allow.permits(host, address):
        raise WebhookURLError(
            f"'webhook_url' points at {address}, a non-public address; the server does not send webhooks "
            "there unless webhook_allow_hosts permits it."
        )


Lookup = Callable[[str, int], Awaitable[list[str]]]


async def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver's answers for `host`, as address strings."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


async def resolve(host: str, port: int, allow: Allowlist, lookup: Lookup = system_lookup) -> IPAddress:
    """The address to connect to: the first the name resolves to, provided that every answer is allowed.
    A name with any non-public answer that is not allowlisted is refused, whatever else it resolves to."""
    literal = _literal(host)
    if literal is not None:
        candidates = [literal]
    else:
        try:
            answers = await lookup(host, port)
        except OSError as exc:  # perhaps passing (DNS down): worth another attempt, unlike a refusal
            raise ResolveError(f"cannot resolve {host}: {exc}") from None
        candidates = [ipaddress.ip_address(answer.split("%", 1)[0]) for answer in answers]
    refused = [str(a) for a in candidates if not (public(a) or allow.permits(host, a))]
    if refused or not candidates:
        raise WebhookURLError(f"{host} resolves to non-public addresses ({', '.join(refused) or 'none'})")
    return candidates[0]


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to one checked address whatever host the URL names; TLS (SNI and certificate checks)
    still uses the URL's host, since httpcore passes it to start_tls itself."""

    def __init__(self, address: IPAddress):
        self.address = str(address)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001
        return await self._inner.connect_tcp(self.address, port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)  # fmt: skip

    async def connect_unix_socket(self, *args: Any, **kwargs: Any):  # noqa: ANN201
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
