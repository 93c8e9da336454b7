"""Shared fixtures: one tiny random-weight checkpoint per run, the app in-process, and a real server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from voxport.app import create_app
from voxport.config import Settings
from voxport.engine.dummy import build_checkpoint

# Every server the tests start shares one numba cache (librosa's compiled kernels), compiled once per run:
# a server's own default is under its data directory, which is new for each test server.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "voxport-tests-numba-cache"))
# Test servers start without designing all 13 built-in voices first (--warm-voices, on by default, costs
# seconds per voice); tests/test_warm_voices.py turns it on.
os.environ.setdefault("VOXPORT_WARM_VOICES", "false")

# Every test request runs to this many 0.16 s steps at most: the tiny checkpoint never stops by itself.
TEST_MAX_LENGTH = 12
STEP_SECONDS = 0.16
SERVER_START_TIMEOUT = 120
# The engine the API tests run on: the reference engine everywhere, or nanovllm on a GPU machine
# (`VOXPORT_TEST_ENGINE=nanovllm pytest`), so that both engines pass the same API tests.
TEST_ENGINE = os.environ.get("VOXPORT_TEST_ENGINE", "reference")
# The HTTP worker processes of the session's `server` (`VOXPORT_TEST_WORKERS=2 pytest tests/test_server.py`
# runs the suites that use it against the process topology, docs/configuration.md#workers).
TEST_WORKERS = os.environ.get("VOXPORT_TEST_WORKERS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-voxcpm2")
    build_checkpoint(out, size="tiny", seed=0)
    return out


def make_settings(model: Path, data_dir: Path, **overrides) -> Settings:
    defaults = {
        "model": str(model),
        "data_dir": data_dir,
        "max_length": TEST_MAX_LENGTH,
        "design_clip_seconds": 1.0,
    }
    return Settings(**{**defaults, **overrides})


@pytest.fixture(scope="session")
async def app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    application = create_app(make_settings(tiny_model, tmp_path_factory.mktemp("data")))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def http(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://voxport.test") as client:
        yield client


@pytest.fixture(scope="session")
async def aclient(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="unused", base_url="http://voxport.test/v1", http_client=http, max_retries=0
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A real `voxport serve` subprocess on a free loopback port."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the life of the server, closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voxport",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],
            # A file, not a pipe: nobody reads a pipe while the server runs, and a full one would hang it.
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"voxport serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).json().get("ready"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("voxport serve did not become ready")

    def output(self) -> str:
        """Everything the server has logged so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out = self.output()
        self.log.close()
        return out


@contextlib.contextmanager
def tiny_server(tiny_model: Path, data: Path, *extra: str) -> Iterator[ServerProcess]:
    """A real server on the tiny checkpoint with `data` as its data dir (plus `extra` flags), stopped on
    exit: what a test module's own server fixture starts."""
    proc = ServerProcess(["--model", str(tiny_model), "--data-dir", str(data), "--max-length",
                          str(TEST_MAX_LENGTH), "--design-clip-seconds", "1", *extra])  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("server-data")
    proc = ServerProcess(
        [
            "--model",
            str(tiny_model),
            "--data-dir",
            str(data),
            "--max-length",
            str(TEST_MAX_LENGTH),
            "--design-clip-seconds",
            "1",
            "--workers",
            TEST_WORKERS,
        ]
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=f"{server.base_url}/v1", max_retries=0)
