"""Drive an ASGI app message by message, to observe the order of events inside one request
(httpx's ASGITransport buffers whole bodies, which hides exactly that)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class ASGIRequest:
    def __init__(self, app: Any, path: str, body: dict, headers: dict[str, str] | None = None):
        raw = json.dumps(body).encode()
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
            + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        self._incoming: asyncio.Queue[dict] = asyncio.Queue()
        self._incoming.put_nowait({"type": "http.request", "body": raw, "more_body": False})
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self.task = asyncio.create_task(app(self.scope, self._incoming.get, self.messages.put))

    def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "http.disconnect"})

    async def start(self) -> dict:
        message = await self.messages.get()
        assert message["type"] == "http.response.start", message
        return message

    async def body_part(self) -> bytes | None:
        """The next body message's bytes, or None once the body has ended."""
        message = await self.messages.get()
        assert message["type"] == "http.response.body", message
        if not message.get("more_body", False) and not message.get("body"):
            return None
        return message.get("body", b"")

    async def finish(self) -> None:
        await self.task
