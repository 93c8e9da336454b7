"""SSRF at delivery time with a test resolver that gives chosen answers: a name with any non-public answer
is refused unless allowlisted, whatever public addresses it also has, and the address returned (the one
the connection is pinned to) is one that was checked. Public answers are only compared, never connected
to: every connection in this file goes to a loopback receiver."""

from __future__ import annotations

import ipaddress

import pytest

from tests.webhook_receiver import Receiver
from voxport.jobs.webhooks import Allowlist, WebhookSender, WebhookURLError, resolve

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PUBLIC_A, PUBLIC_B = "8.8.8.8", "1.1.1.1"  # globally routable; never connected to here


def answers(*addresses: str):
    """A resolver that answers every name with these addresses, in this order, and records the names."""
    asked: list[str] = []

    async def lookup(host: str, port: int) -> list[str]:
        asked.append(host)
        return list(addresses)

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


@pytest.mark.parametrize(
    "mixed",
    [
        ("127.0.0.1", PUBLIC_A),
        (PUBLIC_A, "127.0.0.1"),
        ("10.1.2.3", PUBLIC_A),
        (PUBLIC_B, "192.168.0.9"),
        ("169.254.169.254", PUBLIC_A),  # cloud metadata
        ("::ffff:127.0.0.1", PUBLIC_A),  # loopback as an IPv4-mapped IPv6 address
        ("::1", PUBLIC_A),
    ],
)
async def test_a_name_with_any_private_answer_is_refused(mixed: tuple[str, str]) -> None:
    lookup = answers(*mixed)
    with pytest.raises(WebhookURLError, match="non-public"):
        await resolve("hooks.example", 443, Allowlist(), lookup)
    assert lookup.asked == ["hooks.example"]


async def test_only_public_answers_give_the_first_checked_address() -> None:
    got = await resolve("hooks.example", 443, Allowlist(), answers(PUBLIC_A, PUBLIC_B))
    assert got == ipaddress.ip_address(PUBLIC_A)
    got = await resolve("hooks.example", 443, Allowlist(), answers(PUBLIC_B, PUBLIC_A))
    assert got == ipaddress.ip_address(PUBLIC_B)


async def test_an_allowlisted_private_answer_is_let_through() -> None:
    by_network = Allowlist.parse(["10.0.0.0/8"])
    assert await resolve("hooks.example", 443, by_network, answers("10.1.2.3", PUBLIC_A)) == (
        ipaddress.ip_address("10.1.2.3")
    )
    # The network allows 10/8 only: a loopback answer next to it is still refused.
    with pytest.raises(WebhookURLError, match="127.0.0.1"):
        await resolve("hooks.example", 443, by_network, answers("10.1.2.3", "127.0.0.1"))
    by_name = Allowlist.parse(["hooks.example"])
    assert await resolve("hooks.example", 443, by_name, answers("192.168.0.9", PUBLIC_A)) == (
        ipaddress.ip_address("192.168.0.9")
    )
    with pytest.raises(WebhookURLError):
        await resolve("other.example", 443, by_name, answers("192.168.0.9", PUBLIC_A))


async def test_a_literal_address_is_not_looked_up() -> None:
    lookup = answers(PUBLIC_A)
    with pytest.raises(WebhookURLError):
        await resolve("127.0.0.1", 80, Allowlist(), lookup)
    assert lookup.asked == []


async def test_a_refused_name_is_never_connected_to() -> None:
    """Loopback plus a public answer: the sender refuses before any connection, so the loopback receiver
    (which the first answer points at) gets nothing."""
    with Receiver() as receiver:
        sender = WebhookSender(SECRET, Allowlist(), timeout_s=5, lookup=answers("127.0.0.1", PUBLIC_A))
        outcome = await sender.send("msg_s", f"http://hooks.example:{receiver.port}/hook", "{}")
        assert outcome.refused and not outcome.ok
        assert "non-public" in (outcome.error or "")
        assert receiver.received == []


async def test_the_delivery_goes_to_the_checked_address_under_the_urls_name() -> None:
    """An allowlisted name resolving to loopback: the request reaches the loopback receiver (the address
    that was checked; nothing else is looked up) and still names the URL's host."""
    with Receiver() as receiver:
        lookup = answers("127.0.0.1")
        sender = WebhookSender(SECRET, Allowlist.parse(["127.0.0.1/32"]), timeout_s=5, lookup=lookup)
        outcome = await sender.send("msg_t", f"http://hooks.example:{receiver.port}/hook", "{}")
        assert outcome.ok, outcome.error
        assert lookup.asked == ["hooks.example"]
        assert receiver.received[0].headers["Host"] == f"hooks.example:{receiver.port}"
