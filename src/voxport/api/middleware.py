"""The one request layer: request ids, client-error retry hints, request metrics, one log line per
request, 500s in OpenAI's envelope, and the probes answered without entering the router.

A plain ASGI middleware (not BaseHTTPMiddleware) so that streamed bodies pass through untouched. The
request's record (`api/context.py`) is set here for the request's task; the routes add to it. It also
stands in for what FastAPI's default stack did and voxport uses (api/stack.py): the per-request
AsyncExitStack FastAPI's routes expect, and the last-resort 500.

Probes (`fast`: (method, path) -> an answer) are for routes whose answer needs no parsing, no
dependency and no auth (`/health`, `/ready`): answered here, with the same request id, metrics and
access line as any other request, at a fraction of the router's cost. The router keeps the same routes,
for the OpenAPI document, with the same answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxport.api.context import RequestRecord, current
from voxport.api.errors import envelope, status_of
from voxport.errors import VoxportError, unavailable
from voxport.metrics import Metrics

log = logging.getLogger("voxport.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ASTACK = "fastapi_middleware_astack"  # FastAPI's routes close uploaded files on it

# A probe's answer: status, headers (without the request id) and body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
Probe = Callable[[], Awaitable[Answer]]


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _SAFE_ID.match(candidate) else None
    return None


async def _send_error(send: Send, error: VoxportError, request_id: str) -> None:
    body = json.dumps(envelope(error)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": status_of(error), "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, log_request_text: bool = False,
                 fast: Mapping[tuple[str, str], Probe] | None = None):  # fmt: skip
        self.app = app
        self.metrics = metrics
        self.log_request_text = log_request_text
        self.fast = dict(fast or {})
        # Labelled metric children, looked up once per (route, status) rather than on every request.
        self._counted: dict[tuple[str, int], Callable[[], None]] = {}
        self._timed: dict[str, Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(_incoming_id(scope) or "req_" + os.urandom(16).hex())  # uuid4's randomness
        request_id = record.request_id.encode()
        scope.setdefault("state", {})["request_id"] = record.request_id  # request.state.request_id
        token = current.set(record)
        status = 0
        body_done = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, body_done
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id))
                if 400 <= status < 500 and status not in (408, 409, 429):
                    headers.append((b"x-should-retry", b"false"))
                message["headers"] = headers
            elif not message.get("more_body", False):
                body_done = True
            await send(message)

        probe = self.fast.get((scope["method"], scope["path"]))
        template = scope["path"] if probe is not None else None
        try:
            if probe is not None:
                code, headers, body = await probe()
                await send_with_headers({"type": "http.response.start", "status": code, "headers": headers})
                await send_with_headers({"type": "http.response.body", "body": body})
            else:
                async with AsyncExitStack() as stack:
                    scope[_ASTACK] = stack
                    await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            # Only the server cancels a request's task: at the end of the shutdown grace period. That is a
            # planned stop, not a crash: end what was sent cleanly (a stream is cut short, as a client that
            # stops reading would see it) and let the shutdown go on.
            log.warning("request_id=%s cut short by the shutdown grace period", record.request_id)
            with contextlib.suppress(Exception):
                if not status:
                    status = 503
                    stopping = unavailable("The server is shutting down.", code="shutting_down")
                    await _send_error(send, stopping, record.request_id)
                elif not body_done:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientDisconnect:
            status = status or 499  # the client left before its body arrived: nobody to answer
        except Exception:
            log.exception("request_id=%s failed: %s %s", record.request_id, scope["method"], scope["path"])
            if status:  # the response had started: all we can do is end it
                raise
            status = 500
            message = f"Internal server error (request id {record.request_id})."
            await _send_error(
                send, VoxportError("internal", message, code="internal_error"), record.request_id
            )
        finally:
            current.reset(token)
            self._account(scope, record, status, template)

    def _account(self, scope: Scope, record: RequestRecord, status: int, template: str | None) -> None:
        elapsed = time.perf_counter() - record.started
        if template is None:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
        counted = self._counted.get((template, status))
        if counted is None:
            counted = self.metrics.requests.labels(template, str(status)).inc
            self._counted[(template, status)] = counted
        timed = self._timed.get(template)
        if timed is None:
            timed = self._timed[template] = self.metrics.request_seconds.labels(template).observe
        counted()
        timed(elapsed)
        if log.isEnabledFor(logging.INFO):
            self._access_line(scope, record, status, template, elapsed)

    def _access_line(self, scope: Scope, record: RequestRecord, status: int, template: str,
                     elapsed: float) -> None:  # fmt: skip
        fields = {
            "request_id": record.request_id,
            "method": scope["method"],
            "route": template,
            "status": status,
            "ms": round(elapsed * 1000, 1),
        }
        job = record.speech
        if job is not None and job.opened:
            fields.update(job.log_fields())
            if self.log_request_text:
                fields["text"] = json.dumps(job.text, ensure_ascii=False)
        log.info(" ".join(f"{k}={v}" for k, v in fields.items()))
