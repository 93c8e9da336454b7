"""Issue 29, item 7: every connection has deadlines, on a real server: an idle limit before its first
byte, a deadline for each request's head and one for its body (docs/configuration.md: 10 s, 10 s,
120 s by default; the body's is set lower here to keep the test short)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, tiny_server
from voxport.config import Settings

IDLE_S = Settings.model_fields["connection_idle_s"].default
HEAD_S = Settings.model_fields["request_head_timeout_s"].default
BODY_S = 6


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with tiny_server(
        tiny_model, tmp_path_factory.mktemp("deadlines"), "--request-body-timeout-s", str(BODY_S)
    ) as proc:
        yield proc


def _closed_after(
    sock: socket.socket, send: bytes = b"", every_s: float = 0, limit_s: float = 120
) -> tuple[float, bytes]:
    """Sends `send` a byte every `every_s` (all at once without), reading; (seconds until the server
    closed the connection, what it answered)."""
    started, answer = time.monotonic(), b""
    sock.settimeout(every_s or limit_s)
    pending = send
    while time.monotonic() - started < limit_s:
        if pending and every_s:
            try:
                sock.sendall(pending[:1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, answer
            pending = pending[1:]
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            data = b""
        if not data:
            return time.monotonic() - started, answer
        answer += data
    raise AssertionError(f"still open after {limit_s}s")


def test_an_idle_connection_is_closed_within_its_deadline(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        seconds, answer = _closed_after(sock)
    assert answer == b"" and IDLE_S - 1 < seconds < IDLE_S + 10, seconds


def test_a_trickled_head_is_closed_by_its_deadline(server: ServerProcess) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: voxport.test\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        seconds, answer = _closed_after(sock, head, every_s=2)
    assert HEAD_S - 1 < seconds < HEAD_S + 10, seconds  # the whole head would have taken 4 minutes
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_trickled_body_is_closed_by_its_deadline(server: ServerProcess) -> None:
    head = (b"POST /v1/audio/speech HTTP/1.1\r\nHost: voxport.test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        seconds, _ = _closed_after(sock, b"{" + b" " * 998 + b"}", every_s=1)
    assert seconds < BODY_S + 10, seconds  # the whole body would have taken 17 minutes


def test_an_ordinary_request_on_a_kept_alive_connection_still_works(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(1)
