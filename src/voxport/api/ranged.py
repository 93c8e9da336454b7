"""A file answered with Range support (Starlette's FileResponse: 206, multipart byteranges, HEAD), whose
Range errors are OpenAI's envelope like every other error: a malformed `Range` is 400 `invalid_range`
naming `Range`, one past the end 416 `range_not_satisfiable` with `Content-Range: bytes */<size>`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from voxport.api.errors import error_response
from voxport.errors import VoxportError, invalid


class RangedFile(FileResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        wanted, if_range = headers.get("range"), headers.get("if-range")
        # Starlette reads a Range only on GET / HEAD, and only while If-Range (if sent) still matches.
        method = scope["method"].upper()
        applies = method in ("GET", "HEAD") and (if_range is None or self._should_use_range(if_range))
        if wanted is not None and applies and self.stat_result is not None:
            size = self.stat_result.st_size
            try:
                self._parse_range_header(wanted, size)
            except MalformedRangeHeader as exc:
                error = invalid(f"The Range header is malformed: {exc.content}", "Range", "invalid_range")
                await error_response(error)(scope, receive, send)
                return
            except RangeNotSatisfiable:
                message = f"The Range asks for bytes past the end of the {size}-byte file."
                error = VoxportError("unsatisfiable", message, param="Range", code="range_not_satisfiable")
                await error_response(error, {"Content-Range": f"bytes */{size}"})(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def ranged_file(path: Path, media_type: str, filename: str) -> RangedFile:
    """The file at `path` (stat'ed in a worker thread), shown inline under `filename`."""
    stat = await asyncio.to_thread(os.stat, path)
    return RangedFile(path, media_type=media_type, filename=filename, stat_result=stat,
                      content_disposition_type="inline")  # fmt: skip
