"""Issue 29, item 9: IPv6 addresses that carry an IPv4 address (NAT64, local-use NAT64, 6to4,
IPv4-mapped and -compatible, Teredo) are judged by that IPv4 address, and 192.0.0.0/24 is not public.
Checked by validation and by a test resolver only: nothing here connects anywhere."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from voxport.jobs.webhooks import Allowlist, WebhookURLError, check_url, public, resolve

PRIVATE_INSIDE = [
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b:1:7f00:0:100::",  # local-use NAT64 (/48) of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:c0a8:101::",  # 6to4 of 192.168.1.1
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:169.254.169.254",  # IPv4-mapped
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    "::ffff:192.0.0.8",
]
PUBLIC_INSIDE = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "64:ff9b:1:808:8:800::"]


@pytest.mark.parametrize("address", [*PRIVATE_INSIDE, "192.0.0.8", "192.0.0.1", "192.0.0.255"])
def test_not_public(address: str) -> None:
    assert not public(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(WebhookURLError):
        check_url(f"http://{host}/hook", Allowlist())


@pytest.mark.parametrize("address", [*PUBLIC_INSIDE, "8.8.8.8", "2606:4700::1"])
def test_public(address: str) -> None:
    assert public(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    check_url(f"http://{host}/hook", Allowlist())


class _TestResolverLoop(asyncio.SelectorEventLoop):
    """An event loop whose name resolution answers from a table: no DNS, no traffic."""

    table: dict[str, list[str]] = {}

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):  # noqa: A002, ANN001
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in self.table[host]]  # fmt: skip


def _resolve(host: str, addresses: list[str]) -> str:
    loop = _TestResolverLoop()
    loop.table = {host: addresses}
    try:
        return str(loop.run_until_complete(resolve(host, 443, Allowlist())))
    finally:
        loop.close()


@pytest.mark.parametrize("address", PRIVATE_INSIDE)
def test_a_name_resolving_to_an_embedded_private_address_is_refused(address: str) -> None:
    with pytest.raises(WebhookURLError):
        _resolve("hooks.example.test", [address])


def test_a_name_resolving_to_embedded_public_addresses_is_allowed() -> None:
    assert _resolve("hooks.example.test", ["64:ff9b::808:808"]) == "64:ff9b::808:808"
    assert _resolve("hooks.example.test", ["2002:808:808::1", "64:ff9b::808:404"]) == "2002:808:808::1"


@pytest.mark.parametrize("inside", ["64:ff9b::7f00:1", "192.0.0.8"])
def test_one_embedded_private_answer_refuses_the_name(inside: str) -> None:
    # Any non-public answer refuses the name, whatever else it resolves to (docs/jobs.md).
    with pytest.raises(WebhookURLError):
        _resolve("hooks.example.test", [inside, "64:ff9b::808:808"])
