"""OpenAI's error envelope, the one table from error kind to HTTP status, and the handlers that put
every non-2xx answer into the envelope: one per error base (ours, the engine's, FastAPI's)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from voxport.engine.base import EngineInputError, EngineUnavailable
from voxport.errors import VoxportError, from_validation, invalid, unavailable

log = logging.getLogger("voxport.api")
_OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

STATUS: dict[str, int] = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "unsatisfiable": 416,
    "busy": 429,
    "cancelled": 499,  # nginx's "client closed request"
    "internal": 500,
    "unavailable": 503,
    "timeout": 504,
}


def error_type(status: int) -> str:
    """OpenAI's `type` for a status: its SDK reads 429 as "requests", any 5xx as a server error."""
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def as_error(exc: BaseException) -> VoxportError | None:
    """Our error for an exception the API answers in the envelope; engine errors are mapped here, once."""
    if isinstance(exc, VoxportError):
        return exc
    if isinstance(exc, EngineInputError):
        return invalid(str(exc), exc.param)
    if isinstance(exc, EngineUnavailable):
        return unavailable(str(exc))
    return None


def status_of(error: VoxportError) -> int:
    return STATUS[error.kind]


def headers_of(error: VoxportError) -> dict[str, str]:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.kind == "unauthorized":
        headers["WWW-Authenticate"] = 'Bearer realm="voxport"'
    return headers


def envelope(error: VoxportError) -> dict[str, Any]:
    return error_body(error.message, error_type(status_of(error)), error.param, error.code)


def error_response(error: VoxportError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        envelope(error), status_code=status_of(error), headers={**headers_of(error), **(headers or {})}
    )


def validation_error(exc: ValidationError | RequestValidationError) -> VoxportError:
    """Turn pydantic's first complaint into a 400 naming the offending request field."""
    return from_validation(list(exc.errors()))


async def _ours(_request: Request, exc: Exception) -> JSONResponse:
    error = as_error(exc)
    assert error is not None
    return error_response(error)


def install_error_handlers(app: FastAPI) -> None:
    for base in (VoxportError, EngineInputError, EngineUnavailable):
        app.add_exception_handler(base, _ours)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        policy = getattr(request.app.state, "policy", None)
        if policy is not None and request.url.path not in _OPEN_PATHS:
            try:  # no route matched, so no router's key check ran: a client without a key learns nothing
                policy.check_api_key(request)
            except VoxportError as refusal:
                return error_response(refusal)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message, code = f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            code = "method_not_allowed"
            headers["Allow"] = ", ".join(allowed_methods(request))
        else:  # every 4xx has a code: the status's name (413 request_entity_too_large, ...)
            message, code = str(exc.detail), HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        body = error_body(message, error_type(exc.status_code), None, code)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path. Starlette's own `Allow` names only the first route
    that matched the path (`GET` for /v1/audio/voices, where POST works too)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
