"""`voxport serve --engine sim`: a real server with no checkpoint, and 256 streams through it at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, ServerProcess

STREAMS = 256
STREAM_STEPS = 10


@pytest.fixture(scope="module")
def sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # No --model: a fresh clone with no weights serves with the sim engine. The default voice is a
    # designed one, so start-up also proves its clip is generated through the sim engine.
    data = tmp_path_factory.mktemp("sim-data")
    # Warnings only: ServerProcess leaves its output pipe unread, and a log line per request for hundreds
    # of requests would fill it and block the server.
    proc = ServerProcess(
        ["--engine", "sim", "--data-dir", str(data), "--design-clip-seconds", "1", "--log-level", "warning"]
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_health_reports_the_sim_engine_and_its_capacity(sim_server: ServerProcess) -> None:
    health = httpx.get(f"{sim_server.base_url}/health", timeout=10).json()
    assert (health["engine"], health["engine_state"], health["ready"]) == ("sim", "ready", True)
    # Admission follows the engine: its whole batch generates, four batches wait.
    assert health["capacity"] == {"engine_batch": 256, "max_concurrent": 256, "max_queue": 1024}


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_speech_has_the_expected_duration(sim_server: ServerProcess, fmt: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello from the simulator.", "max_length": 25,
            "response_format": fmt, "stream": False}  # fmt: skip
    response = httpx.post(f"{sim_server.base_url}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200
    audio = decode(response.content, fmt)
    assert audio.duration == pytest.approx(25 * STEP_SECONDS, abs=0.01)
    assert float(response.headers["x-audio-duration"]) == pytest.approx(25 * STEP_SECONDS, abs=0.01)
    assert audio.rms > 0.05


def test_designed_voices_get_a_clip_from_the_sim_engine(sim_server: ServerProcess) -> None:
    body = {"model": "tts-1", "voice": "onyx", "input": "Another voice.", "max_length": 3,
            "response_format": "pcm"}  # fmt: skip
    response = httpx.post(f"{sim_server.base_url}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200
    assert decode(response.content, "pcm").duration == pytest.approx(3 * STEP_SECONDS, abs=0.01)


def test_256_concurrent_streams_all_complete_with_default_admission(sim_server: ServerProcess) -> None:
    expected_bytes = int(STREAM_STEPS * STEP_SECONDS * 24000) * 2  # pcm: 24 kHz s16le

    async def load() -> list[tuple[int, int]]:
        limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
        async with httpx.AsyncClient(base_url=sim_server.base_url, timeout=300, limits=limits) as http:

            async def one(i: int) -> tuple[int, int]:
                body = {"model": "tts-1", "input": f"Stream number {i}.", "max_length": STREAM_STEPS,
                        "response_format": "pcm", "cache": False}  # fmt: skip
                async with http.stream("POST", "/v1/audio/speech/stream", json=body) as response:
                    size = sum([len(part) async for part in response.aiter_bytes()])
                    return response.status_code, size

            return await asyncio.gather(*(one(i) for i in range(STREAMS)))

    results = asyncio.run(load())
    statuses = [status for status, _ in results]
    assert statuses == [200] * STREAMS, {s: statuses.count(s) for s in set(statuses)}
    assert [size for _, size in results] == [expected_bytes] * STREAMS
    text = httpx.get(f"{sim_server.base_url}/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("voxport_requests_rejected_total", ())] == 0
    assert samples[("voxport_capacity", (("limit", "max_concurrent"),))] == 256
    assert samples[("voxport_audio_seconds_total", ())] >= STREAMS * STREAM_STEPS * STEP_SECONDS
