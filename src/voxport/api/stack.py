"""The app: FastAPI serving through only the layers voxport uses, with fastapi-offline's docs pages.

FastAPI's default stack wraps every request in ServerErrorMiddleware, ExceptionTelemetryMiddleware (and
a per-request check whether OpenTelemetry is configured), AppBodyLimitMiddleware, the user middlewares,
ExceptionMiddleware and AsyncExitStackMiddleware. voxport has its own last-resort 500 and per-request
AsyncExitStack (api/middleware.py), its own body limits (api/limits.py) and no OpenTelemetry, so the
stack here is: the user middlewares (CORS when configured, the request layer, the body limits), then
Starlette's ExceptionMiddleware (it turns the router's 404/405 and every handled error into the
envelope, through the handlers api/errors.py installs), then the router. Built once, at the first call.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send


class VoxportAPI(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        app: ASGIApp = ExceptionMiddleware(self.router, handlers=handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)


def create_api(**kwargs: Any) -> VoxportAPI:
    """A VoxportAPI with /docs and /redoc whose scripts and styles come from the fastapi-offline package (no
    CDN). fastapi-offline builds those pages on a FastAPI app of its own, made with the same arguments:
    its routes that this app lacks (the pages, their static files) are taken over."""
    app = VoxportAPI(**{**kwargs, "docs_url": None, "redoc_url": None})
    app.add_route(REDOC_JS, _redoc_js, include_in_schema=False)  # before fastapi-offline's static mount
    ours = {getattr(route, "path", None) for route in app.router.routes}
    app.router.routes.extend(r for r in FastAPIOffline(**kwargs).router.routes if r.path not in ours)
    return app


REDOC_JS = "/static-offline-docs/redoc.standalone.js"
# ReDoc's side menu shows Redocly's logo from their CDN: an empty picture instead, so that /redoc loads
# nothing from another host.
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@functools.cache
def _redoc_bundle() -> bytes:
    return (
        (Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js")
        .read_bytes()
        .replace(_REDOC_LOGO, _EMPTY_SVG)
    )


async def _redoc_js(_request: Request) -> Response:
    return Response(_redoc_bundle(), media_type="text/javascript", headers={"cache-control": "max-age=3600"})
