"""Loudness promises docs/api.md makes that had no test (issue 30): the gain is bounded to ±30 dB, and the
server's `--loudness` is the default a request's `"loudness": null` turns off. In-process apps on the real
engine (tiny checkpoint); loudness measured on the decoded response with pyloudnorm (BS.1770)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pyloudnorm
import pytest
import soundfile

from tests.conftest import make_settings
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
