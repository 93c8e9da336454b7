"""Streamed FLAC leaves frame by frame as it is encoded (no 64 KiB bursts), and the access line counts
the audio a cache hit served."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, ServerProcess
from tests.test_voices import running

pytestmark = pytest.mark.timeout(600)


def test_streamed_flac_arrives_as_it_is_generated(server: ServerProcess) -> None:
    body = {"model": "tts-1", "voice": "nova", "input": "One sentence here. And another one.",
            "response_format": "flac", "stream": True, "cache": False}  # fmt: skip
    arrivals: list[tuple[float, int]] = []
    data = b""
    started = time.perf_counter()
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech", json=body, timeout=300) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            arrivals.append((time.perf_counter(), len(piece)))
            data += piece
    # Many small pieces, spread over the generation: not one burst at the end, nor 64 KiB blocks.
    assert len(arrivals) >= 6 and max(size for _, size in arrivals) < 32 * 1024
    # Two sentences generated one after the other: the first audio left well before the last, whatever the
    # machine's speed (a share of the whole response's time, not a fixed number of seconds).
    first, last = arrivals[0][0] - started, arrivals[-1][0] - started
    assert first < 0.75 * last, (first, last)
    audio = decode(data, "flac")
    assert (audio.codec, audio.sample_rate) == ("flac", 48000)
    assert audio.duration == pytest.approx(2 * TEST_MAX_LENGTH * STEP_SECONDS, abs=2 * STEP_SECONDS)


async def test_the_access_line_counts_a_cache_hits_audio(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="voxport.access")
    body = {"model": "tts-1", "voice": "nova", "input": "Hello.", "response_format": "wav", "stream": False}
    async with running(tiny_model, tmp_path) as (_, http):
        for expected in ("MISS", "HIT"):
            response = await http.post("/v1/audio/speech", json=body)
            assert response.headers["x-cache"] == expected
    lines = [r.getMessage() for r in caplog.records if "cache=" in r.getMessage()]
    seconds = [float(re.search(r"audio_s=([\d.]+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert len(seconds) == 2 and seconds[0] == pytest.approx(TEST_MAX_LENGTH * STEP_SECONDS, abs=0.01)
    assert seconds[1] == seconds[0] and "cache=HIT" in lines[1]
