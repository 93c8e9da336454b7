"""Telephony formats: raw G.711 (mulaw, alaw) at 8 kHz or a stated rate, on HTTP and SSE, decoded with
ffmpeg's own G.711 decoders and compared with the same seeded speech as 16-bit pcm."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ServerProcess
from voxport.audio import ffmpeg_binary

TEXT = "Press one for sales."


def decode_g711(data: bytes, fmt: str, rate: int) -> np.ndarray:
    """Raw G.711 to float32 with ffmpeg's decoder (headerless: the format and rate are told)."""
    proc = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-f", fmt, "-ar", str(rate),
         "-ac", "1", "-i", "pipe:", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:"],
        input=data, capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return np.frombuffer(proc.stdout, dtype="<f4")


def _speech(server: ServerProcess, **body) -> httpx.Response:
    payload = {"model": "tts-1", "voice": "alloy", "input": TEXT, "seed": 7, "cache": False, **body}
    return httpx.post(f"{server.base_url}/v1/audio/speech", json=payload, timeout=120)


def _pcm(server: ServerProcess, rate: int) -> np.ndarray:
    response = _speech(server, response_format="pcm", sample_rate=rate, stream=False)
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2").astype(np.float32) / 32768.0


def assert_same_speech(g711: np.ndarray, pcm: np.ndarray) -> None:
    """The same seeded speech: same length (a few samples of resampler delay aside), highly correlated
    (G.711 quantises to 8 bits; a wrong law or rate would decorrelate it)."""
    assert abs(len(g711) - len(pcm)) <= 64, (len(g711), len(pcm))
    n = min(len(g711), len(pcm))
    assert np.sqrt(np.mean(np.square(pcm[:n]))) > 1e-4, "the reference audio is silent"
    corr = float(np.corrcoef(g711[:n], pcm[:n])[0, 1])
    assert corr > 0.9, corr


@pytest.mark.parametrize("fmt,content_type", [("mulaw", "audio/basic"), ("alaw", "audio/x-alaw-basic")])
def test_g711_over_http_at_8k_by_default(server: ServerProcess, fmt: str, content_type: str) -> None:
    response = _speech(server, response_format=fmt, stream=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    assert response.headers["x-sample-rate"] == "8000"
    # One byte per sample, no header.
    assert abs(len(response.content) / 8000 - float(response.headers["x-audio-duration"])) < 0.02
    assert_same_speech(decode_g711(response.content, fmt, 8000), _pcm(server, 8000))


def test_g711_stream_at_a_stated_rate(server: ServerProcess) -> None:
    response = _speech(server, response_format="alaw", sample_rate=16000, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["x-sample-rate"] == "16000"
    assert_same_speech(decode_g711(response.content, "alaw", 16000), _pcm(server, 16000))


def test_g711_over_sse_names_its_rate_in_the_first_event(server: ServerProcess) -> None:
    response = _speech(server, response_format="mulaw", stream_format="sse")
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas[0]["sample_rate"] == 8000
    assert all("sample_rate" not in e for e in deltas[1:])
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert_same_speech(decode_g711(audio, "mulaw", 8000), _pcm(server, 8000))


@pytest.mark.parametrize("fmt", ["mulaw", "alaw"])
def test_g711_at_a_rate_it_cannot_serve_is_400_naming_sample_rate(server: ServerProcess, fmt: str) -> None:
    response = _speech(server, response_format=fmt, sample_rate=22050)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "sample_rate"
    assert "8000" in error["message"] and "16000" in error["message"]


def _job_audio(server: ServerProcess, **body) -> tuple[dict, bytes]:
    payload = {"model": "tts-1", "voice": "alloy", "input": TEXT, "seed": 7, **body}
    created = httpx.post(f"{server.base_url}/v1/audio/speech/jobs", json=payload, timeout=60)
    assert created.status_code == 202, created.text
    url = f"{server.base_url}/v1/audio/speech/jobs/{created.json()['id']}"
    deadline = time.monotonic() + 180
    while (job := httpx.get(url, timeout=30).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    return job, httpx.get(f"{url}/content", timeout=30).content


def test_g711_speech_job_at_8k(server: ServerProcess) -> None:
    job, audio = _job_audio(server, response_format="mulaw")
    assert job["result"]["sample_rate"] == 8000
    _, pcm = _job_audio(server, response_format="pcm", sample_rate=8000)
    reference = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    assert_same_speech(decode_g711(audio, "mulaw", 8000), reference)
