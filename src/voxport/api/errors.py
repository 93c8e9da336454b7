"""OpenAI's error envelope, and the handlers that put every non-2xx answer into it."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("voxport.api")


class APIError(Exception):
    """An answer other than success, in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def invalid(message: str, param: str | None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status, headers=exc.headers
    )


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """Turn pydantic's first complaint into a 400 naming the offending request field."""
    first = exc.errors()[0]
    loc = [part for part in first.get("loc", ()) if part != "body"]
    param = str(loc[0]) if loc else None
    kind = first.get("type", "")
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: '{param}'.", param, "unknown_parameter")
    if kind == "json_invalid":
        return invalid("The request body is not valid JSON.", None, "invalid_json")
    if param is None:
        return invalid(f"The request body is invalid: {first.get('msg')}.", None, "invalid_body")
    return invalid(f"Invalid value for '{param}': {first.get('msg')}.", param)


async def parse_json_body(request: Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON object body, answering 400s that name the field at fault."""
    raw = await request.body()
    if not raw.strip():
        raise invalid("The request body is empty; send a JSON object.", None, "invalid_body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}.", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.", None, "invalid_body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message, code = f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url"
        elif exc.status_code == 405:
            message, code = (
                f"Method {request.method} is not allowed on {request.url.path}.",
                "method_not_allowed",
            )
        else:
            message, code = str(exc.detail), None
        return error_response(APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {})))
