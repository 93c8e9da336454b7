"""Request ids, API keys, client-error retry hints, request metrics, one log line per request, and
500s in OpenAI's envelope.

A plain ASGI middleware (not BaseHTTPMiddleware) so that streamed bodies pass through untouched.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxport.api.errors import APIError, error_body
from voxport.metrics import Metrics

log = logging.getLogger("voxport.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_OPEN_PATHS = frozenset({"/health", "/ready"})


@dataclass(frozen=True)
class AccessPolicy:
    api_keys: tuple[str, ...] = ()
    admin_key: str | None = None
    metrics_require_key: bool = False
    log_request_text: bool = False
    _encoded: tuple[bytes, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_encoded", tuple(k.encode() for k in self.api_keys))

    @staticmethod
    def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
        # Compare against every key, in constant time each, without stopping at the first match.
        found = False
        for key in keys:
            found |= hmac.compare_digest(token, key)
        return found

    def check(self, scope: Scope) -> APIError | None:
        path: str = scope["path"]
        if path in _OPEN_PATHS or (path == "/metrics" and not self.metrics_require_key):
            return None
        token = _bearer(scope)
        admin = path.startswith("/admin/") or (
            scope["method"] == "DELETE" and path.startswith("/v1/audio/voices/")
        )
        if admin:
            if self.admin_key is not None:
                if token is not None and self._matches(token, (self.admin_key.encode(),)):
                    return None
                return _unauthorized("This route needs the admin API key.")
            if not _from_loopback(scope):
                return APIError(
                    403,
                    "Admin routes are reachable from loopback only while no admin key is configured.",
                    type="invalid_request_error",
                    code="forbidden",
                )
        if self._encoded and (token is None or not self._matches(token, self._encoded)):
            return _unauthorized("Incorrect or missing API key: send `Authorization: Bearer <key>`.")
        return None


def _unauthorized(message: str) -> APIError:
    return APIError(
        401, message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="voxport"'}
    )


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


def _from_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _SAFE_ID.match(candidate) else None
    return None


async def _send_error(send: Send, error: APIError, request_id: str) -> None:
    body = json.dumps(error_body(error.message, error.type, error.param, error.code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if 400 <= error.status < 500:
        headers.append((b"x-should-retry", b"false"))
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, policy: AccessPolicy, metrics: Metrics):
        self.app = app
        self.policy = policy
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if 400 <= status < 500 and status not in (408, 409, 429):
                    headers.append((b"x-should-retry", b"false"))
                message["headers"] = headers
            await send(message)

        try:
            refusal = self.policy.check(scope)
            if refusal is not None:
                status = refusal.status
                await _send_error(send, refusal, request_id)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("request_id=%s failed: %s %s", request_id, scope["method"], scope["path"])
            if status:  # the response had started: all we can do is end it
                raise
            status = 500
            error = APIError(
                500,
                f"Internal server error (request id {request_id}).",
                type="server_error",
                code="internal_error",
            )
            await _send_error(send, error, request_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(elapsed)
            fields = {
                "request_id": request_id,
                "method": scope["method"],
                "route": template,
                "status": status,
                "ms": round(elapsed * 1000, 1),
            }
            job = state.get("speech_job")
            if job is not None:
                fields.update(job.log_fields())
                if self.policy.log_request_text:
                    fields["text"] = json.dumps(job.text, ensure_ascii=False)
            log.info(" ".join(f"{k}={v}" for k, v in fields.items()))
