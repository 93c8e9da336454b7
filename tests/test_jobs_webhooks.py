"""Webhooks on their own: Standard Webhooks signatures (checked with the standardwebhooks library),
the SSRF policy at submission and at delivery, a real delivery to a loopback receiver, and retries
recorded in the store."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import httpcore
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.waiting import until
from tests.webhook_receiver import Receiver
from voxport.jobs.store import JobStore
from voxport.jobs.webhooks import (
    Allowlist,
    PinnedBackend,
    WebhookDispatcher,
    WebhookSender,
    WebhookURLError,
    check_url,
    event_payload,
    load_secret,
    public,
    resolve,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOOPBACK = Allowlist.parse(["127.0.0.1"])


def test_signature_verifies_with_the_library() -> None:
    sender = WebhookSender(SECRET, Allowlist(), timeout_s=5)
    payload = event_payload("speech.job.succeeded", {"id": "speechjob_1"})
    headers = sender.headers("msg_1", payload)
    assert Webhook(SECRET).verify(payload, headers)["type"] == "speech.job.succeeded"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(payload.replace("1", "2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==").verify(payload, headers)


def test_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    made = load_secret(None, tmp_path)
    assert made.startswith("whsec_") and load_secret(None, tmp_path) == made
    assert (tmp_path / "jobs" / "webhook_secret").stat().st_mode & 0o077 == 0
    Webhook(made)  # a valid Standard Webhooks secret
    assert load_secret("whsec_configured", tmp_path) == "whsec_configured"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "http://user:pw@example.com/",
        "http://127.0.0.1/", "http://10.0.0.5/", "http://192.168.1.1:8080/", "http://169.254.169.254/latest",
        "http://[::1]/", "http://[fd00::1]/", "http://0.0.0.0/", "http://224.0.0.1/", "http://100.64.0.1/",
        "http://[::ffff:127.0.0.1]/", "http://240.0.0.1/", "http://example.com:notaport/",
    ],
)  # fmt: skip
def test_refused_at_submission(url: str) -> None:
    with pytest.raises(WebhookURLError):
        check_url(url, Allowlist())


def test_allowed_at_submission() -> None:
    check_url("https://example.com/hooks", Allowlist())
    check_url("http://8.8.8.8/x", Allowlist())
    check_url("http://localhost/x", Allowlist())  # a name: judged by its addresses at delivery
    check_url("http://127.0.0.1:9/x", LOOPBACK)
    check_url("http://10.1.2.3/x", Allowlist.parse(["10.0.0.0/8"]))
    assert not public(ipaddress.ip_address("fe80::1")) and public(ipaddress.ip_address("2606:4700::1"))


async def test_name_resolving_to_loopback_is_refused_at_delivery() -> None:
    with pytest.raises(WebhookURLError):
        await resolve("localhost", 80, Allowlist())
    assert str(await resolve("localhost", 80, Allowlist.parse(["localhost"]))) in ("127.0.0.1", "::1")
    with Receiver() as receiver:
        sender = WebhookSender(SECRET, Allowlist(), timeout_s=5)
        outcome = await sender.send("msg_x", f"http://localhost:{receiver.port}/hook", "{}")
        assert outcome.refused and not outcome.ok
        assert receiver.received == []  # nothing was sent


async def test_delivery_to_an_allowed_receiver_is_signed() -> None:
    with Receiver() as receiver:
        sender = WebhookSender(SECRET, LOOPBACK, timeout_s=5)
        payload = event_payload("speech.job.failed", {"id": "speechjob_2"})
        outcome = await sender.send("msg_y", receiver.url, payload)
        assert outcome.ok and outcome.status == 204
        got = receiver.received[0]
        assert got.path == "/hook" and got.headers["Host"] == f"127.0.0.1:{receiver.port}"
        assert Webhook(SECRET).verify(got.body, got.headers)["data"] == {"id": "speechjob_2"}


async def test_redirects_are_not_followed() -> None:
    with Receiver() as target, Receiver(redirect_to=target.url) as redirector:
        sender = WebhookSender(SECRET, LOOPBACK, timeout_s=5)
        outcome = await sender.send("msg_r", redirector.url, "{}")
        assert not outcome.ok and outcome.status == 302
        assert target.received == []


async def test_retries_until_delivered_and_attempts_are_recorded(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    await store.open()
    outcomes: list[str] = []
    with Receiver(fail_first=2) as receiver:
        dispatcher = WebhookDispatcher(store, WebhookSender(SECRET, LOOPBACK, timeout_s=5), retry_s=600,
                                       on_outcome=outcomes.append)  # fmt: skip
        dispatcher.start()
        delivery = await dispatcher.enqueue("speechjob_3", "speech.job.succeeded", receiver.url, {"id": "x"})
        for _ in range(200):
            (row,) = await store.deliveries("speechjob_3")
            if row.status != "pending":
                break
            await asyncio.sleep(0.1)
        await dispatcher.close()
    assert (row.id, row.status, row.attempts, row.last_status) == (delivery.id, "delivered", 3, 204)
    assert outcomes == ["retry", "retry", "delivered"]
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {delivery.id}  # the same message id on every attempt: receivers can deduplicate
    assert json.loads(receiver.accepted()[0].body)["type"] == "speech.job.succeeded"
    await store.close()


async def test_retries_stop_after_the_bounded_time(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    await store.open()
    with Receiver(fail_first=100) as receiver:
        dispatcher = WebhookDispatcher(store, WebhookSender(SECRET, LOOPBACK, timeout_s=5), retry_s=0.5)
        dispatcher.start()
        await dispatcher.enqueue("speechjob_4", "speech.job.failed", receiver.url, {})
        for _ in range(100):
            (row,) = await store.deliveries("speechjob_4")
            if row.status != "pending":
                break
            await asyncio.sleep(0.1)
        await dispatcher.close()
    assert (row.status, row.attempts, row.last_status) == ("failed", 1, 500)
    await store.close()


async def test_a_name_that_does_not_resolve_is_retried_not_refused() -> None:
    sender = WebhookSender(SECRET, Allowlist(), timeout_s=5)
    outcome = await sender.send("msg_z", "http://no-such-host.invalid/hook", "{}")
    assert not outcome.ok and not outcome.refused


async def test_the_connection_goes_to_the_pinned_address_not_a_new_lookup() -> None:
    """The backend connects to the checked address whatever the URL's host resolves to now (here: to
    nothing at all), and the request still names the URL's host."""
    with Receiver() as receiver:
        backend = PinnedBackend(ipaddress.ip_address("127.0.0.1"))
        async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
            response = await pool.request(
                "POST", f"http://rebinding.invalid:{receiver.port}/hook", content=b"{}"
            )
        assert response.status == 204
        assert receiver.received[0].headers["Host"] == f"rebinding.invalid:{receiver.port}"


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_delivery_checks_the_certificate_against_the_url_host(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "localhost")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    with Receiver(tls=server_tls) as receiver:
        sender = WebhookSender(SECRET, Allowlist.parse(["localhost"]), timeout_s=5, ssl_context=trusting)
        payload = event_payload("speech.job.succeeded", {"id": "speechjob_tls"})
        outcome = await sender.send("msg_tls", f"https://localhost:{receiver.port}/hook", payload)
        assert outcome.ok, outcome
        assert Webhook(SECRET).verify(receiver.received[0].body, receiver.received[0].headers)
        # The same server reached by its address: the certificate does not name 127.0.0.1, so no delivery.
        by_address = WebhookSender(SECRET, LOOPBACK, timeout_s=5, ssl_context=trusting)
        outcome = await by_address.send("msg_tls2", f"https://127.0.0.1:{receiver.port}/hook", payload)
        assert not outcome.ok and len(receiver.received) == 1


async def test_pending_deliveries_survive_a_restart(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    await store.open()
    with Receiver(fail_first=1) as receiver:
        first = WebhookDispatcher(store, WebhookSender(SECRET, LOOPBACK, timeout_s=5), retry_s=600)
        first.start()
        await first.enqueue("speechjob_5", "speech.job.succeeded", receiver.url, {"id": "speechjob_5"})
        await until(lambda: receiver.received, "the first (failing) delivery", every=0.05)
        await first.close()  # the process ends after one failed attempt
        await store.close()
        reopened = JobStore(tmp_path / "jobs")
        await reopened.open()
        (pending,) = await reopened.deliveries("speechjob_5")
        assert (pending.status, pending.attempts) == ("pending", 1)
        second = WebhookDispatcher(reopened, WebhookSender(SECRET, LOOPBACK, timeout_s=5), retry_s=600)
        second.start()
        await until(receiver.accepted, "the retried delivery", every=0.05)
        await second.close()
        (row,) = await reopened.deliveries("speechjob_5")
    assert (row.status, row.attempts) == ("delivered", 2)
    await reopened.close()
