"""Behaviour users hear, pinned at the API with the real engine on the tiny checkpoint: the voice reaches
the engine (two voices, a cloned voice and the default differ at one seed; one voice and seed repeat
exactly), `normalize` changes the text the engine reads, and per-turn dialogue `instructions` reach it.

`RecordingEngine` is a named stand-in that wraps the real reference engine and only records the
`SynthesisRequest`s it is given; the audio is the real engine's. The audio cache is off in this app so
that "the same audio twice" is generated twice, not served from the cache."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import make_settings
from voxport.app import create_app
from voxport.engine import create_engine
from voxport.engine.base import SynthesisRequest

SEED = 1234
TEXT = "The quick brown fox jumps over the lazy dog."


class RecordingEngine:
    """The real engine, with every request it is asked to generate recorded."""

    def __init__(self, inner):
        self._inner = inner
        self.requests: list[SynthesisRequest] = []

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def generate(self, request: SynthesisRequest, stats=None):
        self.requests.append(request)
        return self._inner.generate(request, stats)


@pytest.fixture(scope="module")
async def pinned(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = make_settings(tiny_model, tmp_path_factory.mktemp("pins"), cache_ttl_minutes=0)
    engine = RecordingEngine(create_engine(settings, str(tiny_model)))
    application = create_app(settings, engine=engine)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://voxport.test", timeout=300
        ) as http:
            yield http, engine


async def speech(http: httpx.AsyncClient, **fields) -> np.ndarray:
    body = {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm", "seed": SEED}
    response = await http.post("/v1/audio/speech", json={**body, **fields})
    assert response.status_code == 200, response.text
    samples = np.frombuffer(response.content, dtype="<i2").astype(np.float32) / 32768.0
    assert samples.size > 0 and np.sqrt(np.mean(samples**2)) > 1e-4
    return samples


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    """Different audio: other lengths, or more than 1% of the samples apart by more than 16-bit rounding.
    The tiny random checkpoint is weakly conditioned on its voice (two voices differ in a few percent of
    samples, by up to about 4e-4), but one voice at one seed repeats bit for bit, so any such share is
    the voice's doing; a voice dropped before the engine gives a share of 0."""
    if a.shape != b.shape:
        return True
    return float(np.mean(np.abs(a - b) > 2 / 32768)) > 0.01


async def test_the_same_voice_and_seed_give_identical_audio(pinned) -> None:
    http, _ = pinned
    first, second = await speech(http), await speech(http)
    assert np.array_equal(first, second)


async def test_two_voices_at_one_seed_sound_different(pinned) -> None:
    http, _ = pinned
    assert differ(await speech(http, voice="alloy"), await speech(http, voice="onyx"))


def recording(seconds: float = 2.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(7)
    samples = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    samples += 0.02 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


async def test_a_cloned_voice_differs_from_the_default(pinned) -> None:
    http, _ = pinned
    data = {"model": "tts-1", "input": TEXT, "response_format": "pcm", "seed": str(SEED)}
    response = await http.post(
        "/v1/audio/speech", data=data, files={"custom_voice_file": ("me.wav", recording())}
    )
    assert response.status_code == 200, response.text
    cloned = np.frombuffer(response.content, dtype="<i2").astype(np.float32) / 32768.0
    default = await speech(http, voice=None)  # no voice: --default-voice
    assert differ(cloned, default)


async def sse_usage(http: httpx.AsyncClient, **fields) -> dict:
    body = {"model": "tts-1", "voice": "alloy", "seed": SEED, "stream": True, "stream_format": "sse"}
    response = await http.post("/v1/audio/speech", json={**body, **fields})
    assert response.status_code == 200, response.text
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert events[-1]["type"] == "speech.audio.done", events[-1]
    assert base64.b64decode(events[0]["audio"]) != b""
    return events[-1]["usage"]


async def test_normalize_changes_what_the_engine_reads(pinned) -> None:
    """ "$100" spelled out ("one hundred dollars") is more text tokens than as written."""
    http, engine = pinned
    text = "It costs $100 today."
    plain = await sse_usage(http, input=text, normalize=False)
    spelled = await sse_usage(http, input=text, normalize=True)
    assert spelled["input_tokens"] > plain["input_tokens"], (plain, spelled)
    assert engine.requests[-1].normalize is True


async def test_per_turn_dialogue_instructions_reach_the_engine(pinned) -> None:
    http, engine = pinned
    engine.requests.clear()
    dialogue = [
        {"voice": "alloy", "input": "Did you hear that?"},
        {"voice": "onyx", "input": "Hear what?", "instructions": "puzzled and slow"},
    ]
    body = {"model": "tts-1", "voice": "alloy", "response_format": "pcm", "seed": SEED, "dialogue": dialogue}
    response = await http.post("/v1/audio/speech", json=body)
    assert response.status_code == 200, response.text
    texts = [request.text for request in engine.requests]
    first = [t for t in texts if "Did you hear that?" in t]
    second = [t for t in texts if "Hear what?" in t]
    assert first and second, texts
    assert all("puzzled and slow" in t for t in second), texts
    assert not any("puzzled" in t for t in first), texts
    # The turn's own instructions win over the request's.
    engine.requests.clear()
    response = await http.post("/v1/audio/speech", json={**body, "instructions": "whispering"})
    assert response.status_code == 200, response.text
    texts = [request.text for request in engine.requests]
    assert any("whispering" in t and "Did you hear that?" in t for t in texts), texts
    assert any("puzzled and slow" in t and "whispering" not in t for t in texts if "Hear what?" in t), texts
