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

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.exceptions import ExceptionMiddleware
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
    ours = {getattr(route, "path", None) for route in app.router.routes}
    app.router.routes.extend(r for r in FastAPIOffline(**kwargs).router.routes if r.path not in ours)
    return app
