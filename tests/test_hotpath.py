"""The request hot path: hot cache entries served from memory (never a corrupt one), probes answered by the
request layer, the lean middleware stack, and the serving options (httptools with our head limit)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.middleware.exceptions import ExceptionMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tests.asgi_driver import ASGIRequest
from tests.conftest import ServerProcess
from tests.test_serving import SPEECH, cache_files, running
from tests.waiting import until
from voxport.api.limits import BodyLimitMiddleware
from voxport.api.middleware import RequestContextMiddleware
from voxport.api.serving import uvicorn_options


def _corrupt(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the payload: same size, wrong checksum
    entry.write_bytes(bytes(data))


async def test_a_hit_from_memory_is_the_checked_copy_and_never_the_corrupt_file(
    tiny_model: Path, tmp_path: Path
) -> None:
    async with running(tiny_model, tmp_path) as (app, http):
        first = await http.post("/v1/audio/speech", json=SPEECH)
        (entry,) = cache_files(tmp_path)
        _corrupt(entry)
        again = await http.post("/v1/audio/speech", json=SPEECH)
        assert again.headers["x-cache"] == "HIT" and again.content == first.content
        assert again.headers["content-length"] == str(len(first.content))
        assert app.state.speech.cache.memory_entries == 1


async def test_without_memory_a_corrupt_file_is_a_miss(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path, cache_memory_mb=0) as (app, http):
        first = await http.post("/v1/audio/speech", json=SPEECH)
        hit = await http.post("/v1/audio/speech", json=SPEECH)
        assert hit.headers["x-cache"] == "HIT" and hit.content == first.content  # read from disk
        (entry,) = cache_files(tmp_path)
        _corrupt(entry)
        again = await http.post("/v1/audio/speech", json=SPEECH)
        assert again.headers["x-cache"] == "MISS"
        assert app.state.speech.cache.stats.corrupt == 1 and app.state.speech.cache.memory_entries == 0


async def test_an_entry_read_from_disk_enters_memory_once_checked(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        first = await http.post("/v1/audio/speech", json=SPEECH)
    async with running(tiny_model, tmp_path) as (app, http):  # a new process: memory starts empty
        cache = app.state.speech.cache
        assert cache.memory_entries == 0
        from_disk = await http.post("/v1/audio/speech", json=SPEECH)
        assert cache.memory_entries == 1
        (entry,) = cache_files(tmp_path)
        _corrupt(entry)  # memory holds the copy that passed the check
        from_memory = await http.post("/v1/audio/speech", json=SPEECH)
        assert from_disk.content == from_memory.content == first.content
        assert from_memory.headers["x-cache"] == "HIT"


async def test_clearing_the_cache_empties_memory_too(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (app, http):
        await http.post("/v1/audio/speech", json=SPEECH)
        assert (await http.post("/admin/cache/clear")).json() == {"removed": 1}
        assert app.state.speech.cache.memory_entries == 0
        assert (await http.post("/v1/audio/speech", json=SPEECH)).headers["x-cache"] == "MISS"
        health = (await http.get("/health")).json()
        assert (
            health["cache"]["entries"] == 1
            and health["cache"]["bytes"] == cache_files(tmp_path)[0].stat().st_size
        )


async def test_the_sweep_records_hits_from_memory_on_disk(tiny_model: Path, tmp_path: Path) -> None:
    """The file's atime orders entries for the size cap after a restart: memory hits must reach it."""
    async with running(tiny_model, tmp_path) as (app, http):
        await http.post("/v1/audio/speech", json=SPEECH)
        (entry,) = cache_files(tmp_path)
        created = entry.stat().st_mtime
        os.utime(entry, (created - 3600, created))
        assert (await http.post("/v1/audio/speech", json=SPEECH)).headers["x-cache"] == "HIT"
        assert entry.stat().st_atime < created - 3000  # a memory hit touches no file
        await asyncio.to_thread(app.state.speech.cache.sweep)
        after = entry.stat()
        assert after.st_atime > created - 60  # the hit's time, not the hour-old one
        assert after.st_mtime == pytest.approx(created, abs=1)  # mtime stays the entry's creation


async def test_a_buffered_request_whose_client_leaves_is_cancelled(tiny_model: Path, tmp_path: Path) -> None:
    """The disconnect watcher starts only once the request waits (a hit from memory never does): a client
    that leaves while its audio is generated still cancels the generation."""
    async with running(tiny_model, tmp_path, max_length=2048) as (app, _):
        speech = app.state.speech
        cancelled = speech.tickets.cancelled_total
        body = {**SPEECH, "input": "A request long enough to be abandoned on the way."}
        request = ASGIRequest(app, "/v1/audio/speech", body, headers={"x-request-id": "leaves"})
        await until(lambda: "leaves" in speech.tickets.active, "the request to start generating")
        request.disconnect()
        await asyncio.wait_for(request.finish(), 120)
        assert speech.tickets.cancelled_total == cancelled + 1 and speech.tickets.in_flight == 0


async def test_probes_are_answered_with_a_request_id_and_counted(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        health = await http.get("/health", headers={"x-request-id": "probe-1"})
        assert health.headers["x-request-id"] == "probe-1"
        assert health.headers["content-length"] == str(len(health.content))
        assert health.json()["rss_bytes"] > 0  # sampled at start-up, before the first request
        head = await http.head("/health")
        assert head.status_code == 200 and head.content == b"" and head.headers["x-request-id"]
        assert (await http.get("/ready")).json() == {"ready": True}
        text = (await http.get("/metrics")).text
    counts = {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "voxport_requests_total"
    }
    assert counts[("/health", "200")] == 2 and counts[("/ready", "200")] == 1


async def test_the_middleware_stack_holds_only_what_voxport_uses(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (app, _):
        layers, layer = [], app.build_middleware_stack()
        while not isinstance(layer, type(app.router)):
            layers.append(type(layer))
            layer = layer.app
    assert layers == [RequestContextMiddleware, BodyLimitMiddleware, ExceptionMiddleware]


def test_serving_uses_httptools_and_uvloop_with_a_head_limit() -> None:
    options = uvicorn_options(32 * 1024)
    assert options["loop"] == "uvloop"
    assert issubclass(options["http"], HttpToolsProtocol)


def _ask(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):  # both answers close the connection
            answer += chunk
        return answer


@pytest.fixture(scope="module")
def sim_server(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("hotpath-data")
    server = ServerProcess(["--engine", "sim", "--data-dir", str(data), "--max-header-kb", "8"])
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_a_head_over_the_limit_gets_431_and_one_under_it_is_served(sim_server: ServerProcess) -> None:
    under = f"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: {'a' * 7000}\r\nConnection: close\r\n\r\n".encode()
    answer = _ask(sim_server.port, under)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    over = f"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: {'a' * 9000}\r\n\r\n".encode()
    answer = _ask(sim_server.port, over)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"connection: close" in answer.lower()
    # Many small headers add up the same way as one large one.
    many = "".join(f"X-H{i}: {'b' * 90}\r\n" for i in range(100))
    answer = _ask(sim_server.port, f"GET /health HTTP/1.1\r\nHost: t\r\n{many}\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert httpx.get(f"{sim_server.base_url}/ready", timeout=10).status_code == 200  # the server is unharmed
