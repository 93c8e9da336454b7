"""How uvicorn serves the app: its fastest event loop and HTTP parser where installed (uvloop, httptools),
with a limit on the size of a request's head that httptools itself does not have.

uvicorn's h11 parser refuses a head beyond `h11_max_incomplete_event_size`; its httptools protocol
accumulates the request line and headers without bound. `bounded_httptools(limit)` is that protocol with
the head counted as it is parsed (the URL and every header name and value, plus their separators): past
`limit` bytes the request is answered 431 and the connection closed, before the rest of the head is read.
Without httptools (or uvloop) installed, uvicorn's h11 (or asyncio's loop) serves, with h11's limit.

Every connection has deadlines too (`Deadlines`, from the settings): `idle_s` for its first byte (a
connection that sends nothing is closed), `head_s` for each request's head from its first byte (past it:
408 and the connection closed, however slowly the head trickles in), and `body_s` for the body from the
end of the head (past it: the connection is closed; the app sees a disconnect). Between requests on a
kept-alive connection, uvicorn's own keep-alive timeout applies. The h11 fallback has none of these.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("voxport.serving")

_BODY = b"Request header fields too large."
_TIMEOUT = b"The request head did not arrive in time."


@dataclass(frozen=True)
class Deadlines:
    idle_s: float = 10.0  # from a connection's opening to its first byte
    head_s: float = 10.0  # from a request's first byte to the end of its head
    body_s: float = 120.0  # from the end of a request's head to the end of its body


def uvicorn_options(max_head_bytes: int, deadlines: Deadlines | None = None) -> dict[str, Any]:
    """The `http` and `loop` options for uvicorn.run (and h11's head limit, should h11 serve)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if importlib.util.find_spec("httptools") is None:
        return {"http": "h11", "loop": loop, "h11_max_incomplete_event_size": max_head_bytes}
    return {"http": bounded_httptools(max_head_bytes, deadlines or Deadlines()), "loop": loop}


def bounded_httptools(max_head_bytes: int, deadlines: Deadlines | None = None) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, refusing a request head beyond `max_head_bytes` with a 431, and
    closing a connection past its deadlines (module docstring)."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    limits = deadlines or Deadlines()

    class BoundedHead(HttpToolsProtocol):
        _head_bytes = 0
        _head_too_large = False
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, expired: Any) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, expired) if seconds > 0 else None

        def _close(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def _head_late(self) -> None:
            log.info("closed a connection whose request head took over %gs (408)", limits.head_s)
            if not self.transport.is_closing():
                head = [
                    STATUS_LINE[408],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(_TIMEOUT),
                    b"connection: close\r\n\r\n",
                    _TIMEOUT,
                ]
                self.transport.write(b"".join(head))  # fmt: skip
            self._close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(limits.idle_s, self._close)

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(0, None)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            self._arm(limits.head_s, self._head_late)
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            upgrade = self.parser.should_upgrade()  # another protocol takes the connection over
            self._arm(0 if upgrade else limits.body_s, self._close)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._arm(0, None)
            super().on_message_complete()

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
