"""Hostile and careless input: every answer is a 2xx or a 4xx in OpenAI's envelope, never a 5xx."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess
from voxport.engine.compat import normalize_text


@pytest.mark.parametrize("text", ["¨0", "0\u0006", "1¨", "\u00a8\u00a8"])
def test_the_normaliser_never_raises(text: str) -> None:
    assert normalize_text(text).strip()


@pytest.mark.parametrize("text", ["¨0", "0\u0006", "\u0000", "Pay $5 on 3/4 at 10:30."])
async def test_normalize_true_never_answers_5xx(http: httpx.AsyncClient, text: str) -> None:
    response = await http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": text, "normalize": True, "response_format": "pcm", "cache": False},
    )
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.json()["error"]["param"] == "input"


# -- limits, through the real server process -------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tiny_model, tmp_path_factory):
    """A server with small limits, whose inherited TMPDIR is watched: nothing may be written there."""
    data = tmp_path_factory.mktemp("limited-data")
    outside = tmp_path_factory.mktemp("outside-tmp")
    proc = ServerProcess(
        ["--model", str(tiny_model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH),
         "--design-clip-seconds", "1", "--max-upload-mb", "1", "--body-read-timeout-s", "1"],
        env={"TMPDIR": str(outside)},
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc, data, outside
    finally:
        proc.stop()


def _exchange(port: int, head: bytes, body_chunks=(), pause: float = 0.0) -> tuple[int, bytes, float]:
    """Send a raw request (the body as HTTP/1.1 chunks when given) and read the answer: status, body,
    seconds until the answer arrived. Sending stops as soon as the server has answered."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(5)  # a send the server stops reading ends there: it has answered, or will
        answer = b""
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                with contextlib.suppress(OSError):
                    answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break
        time.sleep(pause)
        sock.settimeout(60)  # blocking again, with a bound: a recv that gets nothing raises TimeoutError
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1], time.monotonic() - started


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _head(path: str, content_type: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n{extra}\r\n").encode()


def test_a_declared_oversize_body_is_refused_before_it_is_read(limited) -> None:
    server, _, _ = limited
    head = _head("/v1/audio/speech", "application/json", "Content-Length: 1073741824\r\n")
    status, body, seconds = _exchange(server.port, head)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert seconds < 5


def test_a_chunked_json_body_is_cut_at_the_cap_and_memory_stays_flat(limited) -> None:
    server, _, _ = limited
    before = httpx.get(f"{server.base_url}/health").json()["rss_bytes"]
    head = _head("/v1/audio/speech", "application/json", "Transfer-Encoding: chunked\r\n")
    chunks = (b'{"input": "' + b"a" * 2**20 for _ in range(200))  # 200 MiB offered
    status, body, _ = _exchange(server.port, head, chunks)
    assert status == 413, body
    after = httpx.get(f"{server.base_url}/health").json()["rss_bytes"]
    assert after - before < 64 * 2**20


def test_a_chunked_upload_is_cut_and_leaves_no_file_anywhere(limited) -> None:
    server, data, outside = limited
    boundary = "b0undary"
    content_type = f"multipart/form-data; boundary={boundary}"
    head = _head("/v1/audio/voices", content_type, "Transfer-Encoding: chunked\r\n")
    first = (f'--{boundary}\r\nContent-Disposition: form-data; name="audio_sample"; filename="a.wav"\r\n'
             "Content-Type: audio/wav\r\n\r\n").encode()  # fmt: skip
    chunks = [first, *(b"\0" * 2**20 for _ in range(64))]
    status, body, _ = _exchange(server.port, head, chunks)
    assert status == 413, body
    assert list(outside.iterdir()) == []
    assert list((data / "tmp").iterdir()) == []


def test_a_stalled_body_is_cut_after_the_read_timeout(limited) -> None:
    server, _, _ = limited
    head = _head("/v1/audio/speech", "application/json", "Content-Length: 100\r\n")
    status, body, seconds = _exchange(server.port, head + b'{"model": "tts-1",', pause=0)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert seconds < 10


def test_an_oversize_request_head_is_refused(limited) -> None:
    """Refused with a 4xx, or the connection is dropped while the client is still sending: either way it
    is never served (with no limit, this got a 200)."""
    server, _, _ = limited
    head = f"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {'a' * 2**20}\r\n\r\n".encode()
    answer = b""
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock,
        contextlib.suppress(ConnectionResetError, BrokenPipeError),
    ):
        sock.sendall(head)
        answer = sock.recv(65536)
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    if answer:
        assert answer.startswith((b"HTTP/1.1 4",)), answer[:200]
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # the server is unharmed
