"""Loudness promises docs/api.md and docs/jobs.md make that had no test (issue 30): the gain is bounded to
±30 dB; the server's `--loudness` is the default a request's `"loudness": null` turns off; jobs and
uploaded voices are gained at a loudness. In-process apps on the real engine (tiny checkpoint); loudness
measured on the decoded response with pyloudnorm (BS.1770)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pyloudnorm
import pytest
import soundfile

from tests.conftest import make_settings
from tests.waiting import until
from voxport.app import create_app

BODY = {"model": "tts-1", "voice": "alloy", "input": "How loud is this?", "response_format": "wav",
        "stream": False, "seed": 5}  # fmt: skip


def lufs(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float64")
    return pyloudnorm.Meter(rate).integrated_loudness(audio)


@pytest.fixture(scope="module")
async def default_minus_20(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    application = create_app(make_settings(tiny_model, tmp_path_factory.mktemp("loud"), loudness=-20.0))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://voxport.test", timeout=300
        ) as http:
            yield http


async def test_the_gain_is_bounded_to_30_db(http: httpx.AsyncClient) -> None:
    plain = lufs(await http.post("/v1/audio/speech", json=BODY))
    for target in (-50.0, -5.0):
        wanted = target - plain
        served = lufs(await http.post("/v1/audio/speech", json={**BODY, "loudness": target}))
        expected = plain + float(np.clip(wanted, -30.0, 30.0))
        assert abs(served - expected) <= 1.0, (plain, target, served)
    # The bound was exercised: at least one of the targets is more than 30 dB away from the plain level.
    assert max(abs(-50.0 - plain), abs(-5.0 - plain)) > 31.0, plain


async def test_the_servers_loudness_is_the_default_and_null_turns_it_off(default_minus_20, http) -> None:
    by_default = lufs(await http_post(default_minus_20, BODY))
    assert abs(by_default - -20.0) <= 1.0
    off = lufs(await http_post(default_minus_20, {**BODY, "loudness": None}))
    as_made = lufs(await http_post(http, BODY))  # the session app: no --loudness
    assert abs(off - as_made) <= 0.1 and abs(off - -20.0) > 1.0, (off, as_made)
    chosen = lufs(await http_post(default_minus_20, {**BODY, "loudness": -30}))
    assert abs(chosen - -30.0) <= 1.0


async def http_post(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    return await client.post("/v1/audio/speech", json=body)


def level(content: bytes, fmt: str) -> float:
    if fmt == "pcm":
        audio, rate = np.frombuffer(content, "<i2") / 32768, 24000
    else:
        audio, rate = soundfile.read(io.BytesIO(content), dtype="float64")
    return pyloudnorm.Meter(rate).integrated_loudness(audio)


async def job_audio(http: httpx.AsyncClient, body: dict) -> bytes:
    submitted = await http.post("/v1/audio/speech/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]

    async def finished() -> dict | None:
        job = (await http.get(f"/v1/audio/speech/jobs/{job_id}")).json()
        return job if job["status"] not in ("queued", "running") else None

    job = await until(finished, f"job {job_id} to finish", timeout=300, every=0.1)
    assert job["status"] == "succeeded", job
    content = await http.get(f"/v1/audio/speech/jobs/{job_id}/content")
    assert content.status_code == 200
    return content.content


async def test_a_jobs_loudness_is_one_held_gain(http: httpx.AsyncClient) -> None:
    """docs/jobs.md: one gain from the voice's level over the whole job. The same job (voice, text, seed)
    at -40 and at -20 LUFS is the same audio gained twice: 20 dB apart."""
    body = {**BODY, "input": "A job at a chosen loudness. It has two sentences.", "seed": 11}
    quiet = level(await job_audio(http, {**body, "loudness": -40}), "wav")
    loud = level(await job_audio(http, {**body, "loudness": -20}), "wav")
    assert abs((loud - quiet) - 20.0) <= 0.5, (quiet, loud)


async def test_an_uploaded_voice_streams_at_a_loudness(http: httpx.AsyncClient) -> None:
    """docs/api.md: an uploaded voice is measured on its recording; the held gain moves its stream with the
    target (-40 and -20 LUFS: 20 dB apart on the same audio)."""
    t = np.arange(32000) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000, format="WAV")
    levels = []
    for target in (-40, -20):
        data = {"model": "tts-1", "input": "My own voice, at a loudness.", "response_format": "pcm",
                "stream": "true", "seed": "3", "loudness": str(target)}  # fmt: skip
        response = await http.post(
            "/v1/audio/speech", data=data, files={"custom_voice_file": ("me.wav", buffer.getvalue())}
        )
        assert response.status_code == 200 and response.headers["x-cache"] == "ADHOC", response.text
        levels.append(level(response.content, "pcm"))
    assert abs((levels[1] - levels[0]) - 20.0) <= 0.5, levels
