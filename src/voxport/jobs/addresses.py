"""Where webhooks may go (SSRF policy): http/https only, public addresses only unless allowlisted, the
host resolved at delivery time and the connection pinned to the address that was checked."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local (metadata), shared, reserved,
    unspecified or multicast. An IPv4-mapped IPv6 address is judged as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, allow: Allowlist) -> None:
    """At submission: refuse a URL that can never be delivered to. A host name is checked again, by its
    addresses, at each delivery."""
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
