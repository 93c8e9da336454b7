"""Issue 29, item 2: a job of abbreviation-dense text (the worst case of sentence splitting) is planned
off the event loop in linear time: /health keeps answering while it is submitted, and live speech works
right after, on a real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.conftest import TEST_MAX_LENGTH, ServerProcess

BODY = {"model": "tts-1", "voice": "alloy", "response_format": "wav"}


def test_abbreviation_dense_job_leaves_the_server_responsive(tiny_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length",
                            str(TEST_MAX_LENGTH)])  # fmt: skip
    try:
        server.wait_ready()
        slowest, answers, stop = [0.0], [], threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.base_url, timeout=60) as health:
                while not stop.is_set():
                    started = time.monotonic()
                    answers.append(health.get("/health").status_code)
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                    time.sleep(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        with httpx.Client(base_url=server.base_url, timeout=120) as api:
            prober.start()
            time.sleep(0.5)
            for text in ("a. " * 20000, "Mr. " * 15000, "e.g. " * 12000):
                answer = api.post(
                    "/v1/audio/speech/jobs",
                    json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"},
                )
                assert answer.status_code == 202, answer.text
                job = answer.json()
                assert api.post(f"/v1/audio/speech/jobs/{job['id']}/cancel").status_code in (200, 409)
            time.sleep(1)
            stop.set()
            prober.join(timeout=60)
            live = api.post("/v1/audio/speech", json={**BODY, "input": "Hello there."})
        assert live.status_code == 200 and live.content[:4] == b"RIFF"
        assert len(answers) > 10 and set(answers) == {200}, answers
        assert slowest[0] < 1.0, f"/health took {slowest[0]:.2f} s"
    finally:
        server.stop()
