"""Request body limits, enforced while the body is read rather than after it was buffered.

A declared `Content-Length` beyond the cap is refused before a byte of the body is read; a chunked body is
cut the moment it passes the cap; a body that stops arriving is cut after `read_timeout_s`. The app behind
sees a disconnect, whatever it then tries to answer is replaced by the 413 or 408, and the connection is
closed so that the client stops sending. Multipart bodies (uploads) get the upload cap, every other body
the JSON cap.

A plain ASGI middleware: it sits inside the request-context middleware (so requests are authenticated and
logged first) and passes streamed responses through untouched.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxport.api.errors import error_body

T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def _within(awaitable: Awaitable[T], seconds: float) -> T:
        # A deadline on the running task: unlike wait_for before 3.12, no task is made per call.
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10
    _within = asyncio.wait_for

# No route reads the body of these: nothing to limit, and no wrapper on the probes' path.
_UNREAD = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class BodyLimits:
    json_bytes: int
    upload_bytes: int
    read_timeout_s: float
    # Routes whose JSON bodies may be larger than a speech request's (jobs, batches): path -> cap.
    json_bytes_by_path: tuple[tuple[str, int], ...] = ()
    # The field a too-large body is blamed on, where one is (a batch's `requests`): path -> param.
    param_by_path: tuple[tuple[str, str], ...] = ()


class _Cut(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app = app
        self.limits = limits
        self._json_caps = dict(limits.json_bytes_by_path)
        self._params = dict(limits.param_by_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _UNREAD:
            await self.app(scope, receive, send)
            return
        content_type, declared = b"", None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-length":
                declared = value
        upload = content_type.startswith(b"multipart/form-data")
        json_cap = self._json_caps.get(scope["path"], self.limits.json_bytes)
        cap = self.limits.upload_bytes if upload else json_cap
        what = "upload" if upload else "request body"
        too_large = _Cut(413, f"The {what} exceeds this server's limit of {_mib(cap)}.", "request_too_large",
                         None if upload else self._params.get(scope["path"]))  # fmt: skip
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await _answer(send, too_large)
            return

        cut: _Cut | None = None
        received = 0
        body_done = False
        started = False

        async def limited_receive() -> Message:
            nonlocal cut, received, body_done
            if cut is not None:
                return {"type": "http.disconnect"}
            if body_done:  # afterwards the app only listens for a disconnect: no deadline on that
                return await receive()
            try:
                message = await _within(receive(), self.limits.read_timeout_s)
            except asyncio.TimeoutError:
                cut = _Cut(
                    408,
                    f"The request body did not arrive within {self.limits.read_timeout_s:g}s.",
                    "request_timeout",
                )
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > cap:
                    cut = too_large
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut is not None and not started:
                return  # the app's own answer to the disconnect it saw is replaced by ours (below)
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if cut is None or started:
                raise
        if cut is not None and not started:
            await _answer(send, cut)


async def _answer(send: Send, cut: _Cut) -> None:
    body = json.dumps(error_body(cut.message, "invalid_request_error", cut.param, cut.code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": cut.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
