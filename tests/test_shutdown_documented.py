"""Shutdown promises docs/configuration.md and docs/api.md make that had no test (issue 30): a buffered
request that has sent nothing when `--shutdown-grace-s` ends gets 503 `shutting_down`, and a second
SIGTERM ends a `--drain-s` drain at once. Real `voxport serve` processes on the tiny checkpoint."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import ServerProcess
from tests.waiting import until


def in_flight(server: ServerProcess) -> bool:
    return httpx.get(f"{server.base_url}/health", timeout=10).json()["requests_in_flight"] >= 1


async def test_a_buffered_request_still_running_at_the_grace_limit_gets_503_shutting_down(
    tiny_model: Path, tmp_path: Path
) -> None:
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length", "2048",
                            "--shutdown-grace-s", "1"])  # fmt: skip
    try:
        server.wait_ready()
        result: dict = {}

        def request() -> None:
            body = {"model": "tts-1", "input": "Longer than the grace period.", "response_format": "wav",
                    "stream": False, "cache": False}  # fmt: skip
            result["response"] = httpx.post(f"{server.base_url}/v1/audio/speech", json=body, timeout=180)

        worker = threading.Thread(target=request)
        worker.start()
        await until(lambda: in_flight(server), "the request to be in flight", every=0.05)
        server.proc.send_signal(signal.SIGTERM)
        worker.join(180)
        assert not worker.is_alive(), "the request was not answered"
        server.proc.wait(timeout=60)
        response = result["response"]
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "shutting_down"
        assert server.proc.returncode == 0, server.output()
    finally:
        server.stop()  # a no-op signal if it already exited; closes its log


async def test_a_second_sigterm_ends_the_drain_at_once(tiny_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path), "--drain-s", "600"])
    try:
        server.wait_ready()
        server.proc.send_signal(signal.SIGTERM)
        ready = lambda: httpx.get(f"{server.base_url}/ready", timeout=10)  # noqa: E731
        await until(lambda: ready().status_code == 503, "/ready to answer 503 while draining", every=0.05)
        assert "draining" in ready().text
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=120)  # far below the 600 s drain
        assert server.proc.returncode == 0, server.output()
        assert time.monotonic() - started < 120
    finally:
        server.stop()  # a no-op signal if it already exited; closes its log
