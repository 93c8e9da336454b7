"""A FileResponse whose refusals of a bad `Range` header (400, 416) are in the error envelope. Starlette's
answers them itself, in plain text, with no `code`."""

from __future__ import annotations

import os

import anyio
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import Headers
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from voxport.api.errors import error_body, error_type


class RangeFileResponse(FileResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        http_range, if_range = headers.get("range"), headers.get("if-range")
        if (
            http_range is not None
            and scope["type"] == "http"
            and scope["method"].upper() in ("GET", "HEAD")
            and (if_range is None or self._should_use_range(if_range))
        ):
            size = (self.stat_result or await anyio.to_thread.run_sync(os.stat, self.path)).st_size
            refusal = None
            try:
                self._parse_range_header(http_range, size)
            except MalformedRangeHeader as exc:
                refusal = (400, f"Invalid Range header: {exc.content}.", "invalid_range", {})
            except RangeNotSatisfiable:
                message = f"The Range header asks for bytes outside the file ({size} bytes)."
                refusal = (416, message, "range_not_satisfiable", {"Content-Range": f"bytes */{size}"})
            if refusal is not None:
                status, message, code, headers = refusal
                body = error_body(message, error_type(status), "Range", code)
                return await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
        await super().__call__(scope, receive, send)
