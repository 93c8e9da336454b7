"""How uvicorn serves the app: its fastest event loop and HTTP parser where installed (uvloop, httptools),
with a limit on the size of a request's head that httptools itself does not have.

uvicorn's h11 parser refuses a head beyond `h11_max_incomplete_event_size`; its httptools protocol
accumulates the request line and headers without bound. `bounded_httptools(limit)` is that protocol with
the head counted as it is parsed (the URL and every header name and value, plus their separators): past
`limit` bytes the request is answered 431 and the connection closed, before the rest of the head is read.
Without httptools (or uvloop) installed, uvicorn's h11 (or asyncio's loop) serves, with h11's limit.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

log = logging.getLogger("voxport.serving")

_BODY = b"Request header fields too large."


def uvicorn_options(max_head_bytes: int) -> dict[str, Any]:
    """The `http` and `loop` options for uvicorn.run (and h11's head limit, should h11 serve)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if importlib.util.find_spec("httptools") is None:
        return {"http": "h11", "loop": loop, "h11_max_incomplete_event_size": max_head_bytes}
    return {"http": bounded_httptools(max_head_bytes), "loop": loop}


def bounded_httptools(max_head_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, refusing a request head beyond `max_head_bytes` with a 431."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class BoundedHead(HttpToolsProtocol):
        _head_bytes = 0
        _head_too_large = False

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)  # ": " and CRLF
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_head_bytes:
                self._head_too_large = True
                raise _HeadTooLarge  # httptools stops parsing; uvicorn answers with send_400_response

        def send_400_response(self, msg: str) -> None:
            if not self._head_too_large:
                super().send_400_response(msg)
                return
            log.info("refused a request head over %d bytes (431)", max_head_bytes)
            defaults = self.server_state.default_headers
            head = [STATUS_LINE[431], *(name + b": " + value + b"\r\n" for name, value in defaults)]
            head += [b"content-type: text/plain; charset=utf-8\r\n", b"content-length: %d\r\n" % len(_BODY)]
            self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", _BODY]))
            self.transport.close()

    return BoundedHead


class _HeadTooLarge(Exception):
    pass
