"""Issue 29, item 4: a batch body is capped before it is parsed (request count × per-request size): a
36 MiB batch is refused 413 naming `requests`, declared or streamed, without the server's memory
growing by its size, on a real server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess

ITEM = {"model": "tts-1", "voice": "alloy", "input": "Hello there, this is one of many batch requests. " * 80}
BODY_BYTES = 36 * 2**20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def batch_chunks(total: int) -> Iterator[bytes]:
    """A syntactically valid batch body of `total` bytes (about), in 1 MiB pieces."""
    item = json.dumps(ITEM).encode()
    yield b'{"requests": [' + item
    sent = len(item) + 14
    piece = (b"," + item) * (2**20 // (len(item) + 1))
    while sent + len(piece) < total:
        yield piece
        sent += len(piece)
    yield b"]}"


def post_raw(port: int, head: bytes, chunks: Iterator[bytes], chunked: bool) -> bytes:
    """Sends as much of the body as the server takes, then reads its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is already on the way
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
        return answer


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path_factory.mktemp("batch-cap")),
                          "--max-length", str(TEST_MAX_LENGTH)])  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_36_mib_batch_is_refused_before_parsing(server: ServerProcess, chunked: bool) -> None:
    before = rss_bytes(server.proc.pid)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % BODY_BYTES
    head = (b"POST /v1/audio/speech/batches HTTP/1.1\r\nHost: voxport.test\r\n"
            b"Content-Type: application/json\r\n%s\r\n\r\n" % framing)  # fmt: skip
    answer = post_raw(server.port, head, batch_chunks(BODY_BYTES), chunked)
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:300]
    error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "request_too_large",
        "requests",
        "invalid_request_error",
    )
    grown = rss_bytes(server.proc.pid) - before
    assert grown < 300 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200


def test_a_batch_within_the_cap_is_taken(server: ServerProcess) -> None:
    body = {"requests": [{**ITEM, "input": "Short one."}] * 3}
    answer = httpx.post(f"{server.base_url}/v1/audio/speech/batches", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
