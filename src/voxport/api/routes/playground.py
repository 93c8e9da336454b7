"""The playground: one page and its script and style, shipped as package data (src/voxport/static/).

The page holds nothing secret, so it is served without a key (no auth dependency here); the API calls it
makes carry the key the user types in. With `--no-playground` every route here answers 404."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Depends, Request, Response

from voxport.errors import VoxportError

# Everything the page loads comes from this server; the browser refuses anything else.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": _CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_FILES = {"playground.js": "text/javascript", "playground.css": "text/css"}


async def _enabled(request: Request) -> None:
    if not request.app.state.settings.playground:
        raise VoxportError("not_found", "The playground is turned off (--no-playground).",
                           code="not_found")  # fmt: skip


router = APIRouter(dependencies=[Depends(_enabled)], tags=["playground"], include_in_schema=False)


@cache
def _static(name: str) -> bytes:
    return resources.files("voxport").joinpath("static", name).read_bytes()


def _file(name: str, media_type: str) -> Response:
    return Response(_static(name), media_type=media_type, headers=_HEADERS)


@router.get("/")
@router.get("/playground")
async def page() -> Response:
    return _file("playground.html", "text/html; charset=utf-8")


@router.get("/playground/{name}")
async def asset(name: str) -> Response:
    if name not in _FILES:
        raise VoxportError("not_found", f"No playground file '{name}'.", code="not_found")
    return _file(name, _FILES[name] + "; charset=utf-8")
