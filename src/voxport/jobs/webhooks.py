"""Webhooks: Standard Webhooks signatures, SSRF-safe delivery, and retries that survive a restart.

Every event is a row in the job store first (`deliveries`), then sent by the `WebhookDispatcher`; each
attempt and its outcome are recorded there, so a restart picks up where the last process stopped.

SSRF: a webhook URL is the client's, the connection is the server's. Only http/https; the host is resolved
at delivery time and every address is refused that is not globally routable (loopback, private, link-local
— cloud metadata lives there — shared, multicast, reserved, unspecified) unless `webhook_allow_hosts`
names the host or a network holding the address. The connection goes to the checked address and nowhere
else (the name is not resolved a second time); TLS still verifies the certificate against, and sends SNI
for, the URL's host name. Redirects are never followed and every delivery has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
from standardwebhooks import Webhook

from voxport.faultlog import OncePerCause
from voxport.files import atomic_write
from voxport.jobs.addresses import (
    Allowlist,
    Lookup,
    PinnedBackend,
    ResolveError,
    WebhookURLError,
    check_url,
    public,
    resolve,
    system_lookup,
)
from voxport.jobs.store import Delivery, JobStore

__all__ = ["Allowlist", "PinnedBackend", "WebhookDispatcher", "WebhookSender", "WebhookURLError", "check_url",
           "event_payload", "load_secret", "next_gap", "public", "resolve"]  # fmt: skip

log = logging.getLogger("voxport.webhooks")

# Exponential backoff between attempts: 1 s, 2 s, 4 s, ... at most this long, for webhook_retry_s in all.
FIRST_RETRY_S = 1.0
MAX_RETRY_GAP_S = 600.0
# Most of a receiver's answer body read; the rest is never read (the connection is closed).
ANSWER_CAP = 64 * 1024
# Attempts at once to one receiver (scheme, host, port): a receiver that hangs holds back only its own.
PER_RECEIVER = 2


@dataclass
class Outcome:
    ok: bool
    status: int | None = None
    error: str | None = None
    refused: bool = False  # SSRF policy: retrying will not help


def load_secret(configured: str | None, data_dir: Path) -> str:
    """The signing secret: the configured one, else one made once and kept in <data-dir>/jobs/webhook_secret
    (0600), in Standard Webhooks' `whsec_<base64>` form."""
    if configured:
        return configured
    path = data_dir / "jobs" / "webhook_secret"
    if path.exists():
        return path.read_text().strip()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    atomic_write(path, secret.encode() + b"\n")
    path.chmod(0o600)
    return secret


def event_payload(event: str, data: dict[str, Any], at: float | None = None) -> str:
    """Standard Webhooks' recommended body: {type, timestamp, data}."""
    stamp = datetime.fromtimestamp(time.time() if at is None else at, timezone.utc)
    return json.dumps({"type": event, "timestamp": stamp.isoformat().replace("+00:00", "Z"), "data": data},
                      separators=(",", ":"))  # fmt: skip


class WebhookSender:
    """One delivery attempt: sign, resolve and check, connect to the checked address, POST, no redirects."""

    def __init__(self, secret: str, allow: Allowlist, timeout_s: float, user_agent: str = "voxport-webhooks",
                 ssl_context: ssl.SSLContext | None = None, lookup: Lookup = system_lookup):  # fmt: skip
        self.lookup = lookup  # the resolver: the system's, or a test's with chosen answers
        self.signer = Webhook(secret)
        self.allow = allow
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._ssl = ssl_context or ssl.create_default_context()  # the system's CAs, hostname checked

    def headers(self, msg_id: str, payload: str, at: datetime | None = None) -> dict[str, str]:
        at = at or datetime.now(timezone.utc)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self.signer.sign(msg_id, at, payload),
            "content-type": "application/json",
            "user-agent": self.user_agent,
        }

    async def send(self, msg_id: str, url: str, payload: str) -> Outcome:
        """Never raises (but for cancellation): any failure is the outcome of this attempt."""
        try:
            return await self._send(msg_id, url, payload)
        except Exception as exc:  # whatever it is, it is one failed attempt, retried after a backoff
            return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:300])

    async def _send(self, msg_id: str, url: str, payload: str) -> Outcome:
        try:
            check_url(url, self.allow)
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = await asyncio.wait_for(resolve(host, port, self.allow, self.lookup), self.timeout_s)
        except WebhookURLError as exc:
            return Outcome(False, error=f"refused: {exc}", refused=True)
        except (asyncio.TimeoutError, ResolveError) as exc:
            return Outcome(False, error=str(exc) or "timed out resolving the host")
        timeout = {"connect": self.timeout_s, "read": self.timeout_s, "write": self.timeout_s,
                   "pool": self.timeout_s}  # fmt: skip
        async with httpcore.AsyncConnectionPool(
            ssl_context=self._ssl, network_backend=PinnedBackend(address), max_connections=1, retries=0
        ) as pool:
            try:
                posting = self._post(pool, url, msg_id, payload, timeout)
                status = await asyncio.wait_for(posting, self.timeout_s)
            except asyncio.TimeoutError:
                return Outcome(False, error="timed out")
            except httpcore.TimeoutException as exc:
                return Outcome(False, error=f"timed out: {type(exc).__name__}")
            except (httpcore.NetworkError, httpcore.ProtocolError, OSError, ssl.SSLError) as exc:
                return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= status < 300:
            return Outcome(True, status)
        # 3xx included: a redirect is not followed, so it is not a delivery.
        return Outcome(False, status, f"HTTP {status}")

    async def _post(self, pool: httpcore.AsyncConnectionPool, url: str, msg_id: str, payload: str,
                    timeout: dict[str, float]) -> int:  # fmt: skip
        """The POST's answer status. Of its body, at most ANSWER_CAP bytes are read (nothing is done with
        them) before the connection is dropped: a receiver answering a gigabyte costs nothing."""
        async with pool.stream("POST", url, headers=self.headers(msg_id, payload), content=payload.encode(),
                               extensions={"timeout": timeout}) as response:  # fmt: skip
            read = 0
            async for chunk in response.aiter_stream():
                read += len(chunk)
                if read >= ANSWER_CAP:
                    break
            return response.status


def _receiver(url: str) -> str:
    """Whom a delivery goes to, for the per-receiver limit: scheme, host and port."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port}"
    except ValueError:
        return url[:200]


def next_gap(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt."""
    return min(MAX_RETRY_GAP_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1))


@dataclass
class WebhookDispatcher:
    """Sends the store's pending deliveries as they fall due; records every attempt; retries with
    exponential backoff until `retry_s` after the event, then gives up (status failed)."""

    store: JobStore
    sender: WebhookSender
    retry_s: float
    on_outcome: Callable[[str], None] = lambda outcome: None  # delivered | retry | failed | refused
    clock: Callable[[], float] = time.time
    max_parallel: int = 64  # attempts at once, over every receiver
    per_receiver: int = PER_RECEIVER
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None
    _sending: set[str] = field(default_factory=set)
    _busy: dict[str, int] = field(default_factory=dict)  # receiver (scheme://host:port) -> attempts there
    _hold: dict[str, float] = field(default_factory=dict)  # delivery id -> no attempt before
    _unrecorded: dict[str, int] = field(default_factory=dict)  # delivery id -> attempts the store missed
    _errors: OncePerCause = field(default_factory=lambda: OncePerCause(log))
    _closing: bool = False

    async def enqueue(self, subject: str, event: str, url: str, data: dict[str, Any]) -> Delivery:
        delivery = await self.store.enqueue_delivery(subject, event, url, event_payload(event, data))
        self._wake.set()
        return delivery

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="voxport-webhooks")

    async def close(self) -> None:
        # The flag as well as the cancel: asyncio.wait_for can swallow a cancellation that arrives as
        # the wake-up it waits for completes (Python < 3.12), and the loop must still end.
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        running: set[asyncio.Task] = set()
        failures = 0
        try:
            while not self._closing:
                self._wake.clear()
                try:
                    due, next_at = await self.store.due_deliveries(self.clock())
                    failures = 0
                except Exception as exc:  # e.g. the store is unreachable for now: back off, try again
                    self._errors.report("reading due webhook deliveries", exc)
                    failures += 1
                    due, next_at = [], self.clock() + min(30.0, next_gap(failures))
                now = self.clock()
                for delivery in due:
                    held = self._hold.get(delivery.id)
                    if held is not None and held > now:
                        next_at = held if next_at is None else min(next_at, held)
                        continue
                    receiver = _receiver(delivery.url)
                    if delivery.id in self._sending or self._busy.get(receiver, 0) >= self.per_receiver:
                        continue  # one slow receiver holds back only its own deliveries
                    if len(self._sending) >= self.max_parallel:
                        break  # an attempt that ends wakes the loop
                    self._sending.add(delivery.id)
                    self._busy[receiver] = self._busy.get(receiver, 0) + 1
                    task = asyncio.create_task(self._attempt(delivery, receiver))
                    running.add(task)
                    task.add_done_callback(running.discard)
                wait = 30.0 if next_at is None else max(0.05, min(30.0, next_at - self.clock()))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            for task in running:
                task.cancel()

    def _judge(self, delivery: Delivery, outcome: Outcome) -> tuple[str, str, float]:
        """(stored status, metric label, next attempt at) after this attempt."""
        now = self.clock()
        if outcome.ok:
            return "delivered", "delivered", now
        if outcome.refused:
            return "failed", "refused", now
        next_at = now + next_gap(delivery.attempts + 1)
        if next_at - delivery.created_at > self.retry_s:
            return "failed", "failed", now
        return "pending", "retry", next_at

    async def _attempt(self, delivery: Delivery, receiver: str) -> None:
        # Whatever fails here, the delivery waits its backoff before the next attempt: recorded in the
        # store, or held in memory when the store could not record it.
        try:
            try:
                outcome = await self.sender.send(delivery.id, delivery.url, delivery.payload)
            except Exception as exc:
                self._errors.report("webhook delivery", exc)
                outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}"[:300])
            status, label, next_at = self._judge(delivery, outcome)
            await self.store.record_attempt(delivery.id, status=status, next_attempt_at=next_at,
                                            http_status=outcome.status, error=outcome.error)  # fmt: skip
            self._hold.pop(delivery.id, None)
            self._unrecorded.pop(delivery.id, None)
            self.on_outcome(label)
            if not outcome.ok:
                log.warning("webhook %s (%s) attempt %d: %s -> %s", delivery.id, delivery.event,
                            delivery.attempts + 1, outcome.error, status)  # fmt: skip
        except Exception as exc:
            self._errors.report("recording a webhook attempt", exc)
            missed = self._unrecorded[delivery.id] = self._unrecorded.get(delivery.id, 0) + 1
            self._hold[delivery.id] = self.clock() + next_gap(delivery.attempts + missed)
        finally:
            self._sending.discard(delivery.id)
            if self._busy.get(receiver, 0) > 1:
                self._busy[receiver] -= 1
            else:
                self._busy.pop(receiver, None)
            self._wake.set()
