"""/v1/audio/speech through the official async SDK, in-process over ASGI, on the tiny checkpoint."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, TEST_ENGINE, TEST_MAX_LENGTH

FORMATS = {
    # format: (codec ffmpeg reports, content type, default sample rate)
    "mp3": ("mp3", "audio/mpeg", 48000),
    "opus": ("opus", "audio/ogg", 48000),
    "aac": ("aac", "audio/aac", 48000),
    "flac": ("flac", "audio/flac", 48000),
    "wav": ("pcm_s16le", "audio/wav", 48000),
    "pcm": ("pcm_s16le", "audio/pcm", 24000),
}
# The tiny checkpoint never stops by itself, so every request here generates exactly this much audio.
ENGINE_SECONDS = TEST_MAX_LENGTH * STEP_SECONDS
TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_every_format_decodes_to_the_engine_output(aclient: openai.AsyncOpenAI, fmt: str) -> None:
    codec, content_type, rate = FORMATS[fmt]
    response = await aclient.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt, extra_body={"stream": False}
    )
    assert response.headers["content-type"] == content_type
    assert int(response.headers["content-length"]) == len(response.content)
    assert int(response.headers["x-sample-rate"]) == rate
    assert float(response.headers["x-audio-duration"]) == pytest.approx(ENGINE_SECONDS, abs=1e-3)
    assert response.headers["x-request-id"]
    audio = decode(response.content, fmt, pcm_rate=rate)
    assert audio.codec == codec
    assert audio.sample_rate == rate
    assert audio.channels == 1
    assert audio.duration == pytest.approx(ENGINE_SECONDS, abs=STEP_SECONDS)
    assert audio.rms > 1e-4, "audio is silent"


async def test_default_format_is_mp3(aclient: openai.AsyncOpenAI) -> None:
    response = await aclient.audio.speech.with_raw_response.create(model="voxcpm2", voice="nova", input=TEXT)
    assert response.headers["content-type"] == "audio/mpeg"
    assert decode(response.content, "mp3").codec == "mp3"


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
async def test_speed_scales_duration(aclient: openai.AsyncOpenAI, speed: float) -> None:
    response = await aclient.audio.speech.create(
        model="tts-1", voice="echo", input=TEXT, response_format="wav", speed=speed
    )
    audio = decode(response.content, "wav")
    assert audio.sample_rate == 48000
    assert audio.duration == pytest.approx(ENGINE_SECONDS / speed, abs=STEP_SECONDS)


@pytest.mark.parametrize(("fmt", "rate"), [("wav", 16000), ("pcm", 48000), ("flac", 22050), ("opus", 24000)])
async def test_sample_rate_extension(aclient: openai.AsyncOpenAI, fmt: str, rate: int) -> None:
    response = await aclient.audio.speech.create(
        model="tts-1", voice="sage", input=TEXT, response_format=fmt, extra_body={"sample_rate": rate}
    )
    audio = decode(response.content, fmt, pcm_rate=rate)
    if fmt != "opus":  # Ogg Opus always decodes at 48 kHz, whatever it was encoded from
        assert audio.sample_rate == rate
    assert audio.duration == pytest.approx(ENGINE_SECONDS, abs=STEP_SECONDS)


async def _pcm(aclient: openai.AsyncOpenAI, **extra) -> bytes:
    response = await aclient.audio.speech.create(
        model="tts-1", voice="coral", input=TEXT, response_format="pcm", extra_body=extra
    )
    return response.content


async def test_seed_makes_output_repeatable(aclient: openai.AsyncOpenAI) -> None:
    first = await _pcm(aclient, seed=7)
    assert await _pcm(aclient, seed=7) == first
    assert await _pcm(aclient, seed=8) != first
    # No seed: the voice's own seed from voices.json (coral: 104), so the voice sounds the same each time.
    assert await _pcm(aclient) == await _pcm(aclient, seed=104)


async def test_max_length_bounds_audio(aclient: openai.AsyncOpenAI) -> None:
    response = await aclient.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav", extra_body={"max_length": 3}
    )
    assert decode(response.content, "wav").duration == pytest.approx(3 * STEP_SECONDS, abs=1e-3)


async def test_voice_object_and_instructions(aclient: openai.AsyncOpenAI) -> None:
    response = await aclient.audio.speech.create(
        model="gpt-4o-mini-tts",
        voice={"id": "onyx"},
        input=TEXT,
        instructions="Speak slowly (like a sleepy cat).",
        response_format="flac",
    )
    assert decode(response.content, "flac").duration == pytest.approx(ENGINE_SECONDS, abs=STEP_SECONDS)


async def test_normalize_extension(aclient: openai.AsyncOpenAI) -> None:
    response = await aclient.audio.speech.create(
        model="tts-1",
        voice="alloy",
        input="It costs $5 on 2024-01-02.",
        response_format="wav",
        extra_body={"normalize": True},
    )
    assert decode(response.content, "wav").rms > 1e-4


BAD_REQUESTS = [
    ({"input": TEXT}, "model"),
    ({"model": "tts-1"}, "input"),
    ({"model": "tts-1", "input": ""}, "input"),
    ({"model": "tts-1", "input": "   \n "}, "input"),
    ({"model": "tts-1", "input": "x" * 4097}, "input"),
    ({"model": "tts-1", "input": 42}, "input"),
    ({"model": "tts-1", "input": TEXT, "voice": "nobody"}, "voice"),
    ({"model": "tts-1", "input": TEXT, "voice": {"name": "alloy"}}, "voice"),
    ({"model": "tts-1", "input": TEXT, "voice": 3}, "voice"),
    ({"model": "tts-1", "input": TEXT, "instructions": "y" * 4097}, "instructions"),
    ({"model": "tts-1", "input": TEXT, "response_format": "ogg"}, "response_format"),
    ({"model": "tts-1", "input": TEXT, "speed": 0.1}, "speed"),
    ({"model": "tts-1", "input": TEXT, "speed": 4.5}, "speed"),
    ({"model": "tts-1", "input": TEXT, "speed": "fast"}, "speed"),
    ({"model": "tts-1", "input": TEXT, "stream_format": "video"}, "stream_format"),
    ({"model": "tts-1", "input": TEXT, "cfg_value": -0.5}, "cfg_value"),
    ({"model": "tts-1", "input": TEXT, "cfg_value": 10.5}, "cfg_value"),
    ({"model": "tts-1", "input": TEXT, "inference_timesteps": 0}, "inference_timesteps"),
    ({"model": "tts-1", "input": TEXT, "inference_timesteps": 101}, "inference_timesteps"),
    ({"model": "tts-1", "input": TEXT, "max_length": 0}, "max_length"),
    ({"model": "tts-1", "input": TEXT, "max_length": 2049}, "max_length"),
    ({"model": "tts-1", "input": TEXT, "max_length": TEST_MAX_LENGTH + 1}, "max_length"),
    ({"model": "tts-1", "input": TEXT, "seed": -1}, "seed"),
    ({"model": "tts-1", "input": TEXT, "seed": "abc"}, "seed"),
    ({"model": "tts-1", "input": TEXT, "normalize": "perhaps"}, "normalize"),
    ({"model": "tts-1", "input": TEXT, "sample_rate": 7999}, "sample_rate"),
    ({"model": "tts-1", "input": TEXT, "sample_rate": 96000}, "sample_rate"),
    ({"model": "tts-1", "input": TEXT, "sample_rate": 44000, "response_format": "mp3"}, "sample_rate"),
    ({"model": "tts-1", "input": TEXT, "sample_rate": 44100, "response_format": "opus"}, "sample_rate"),
    ({"model": "tts-1", "input": TEXT, "colour": "blue"}, "colour"),
]


async def _still_serving(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": "Still here.", "response_format": "wav", "max_length": 1},
    )
    assert response.status_code == 200
    assert decode(response.content, "wav").duration == pytest.approx(STEP_SECONDS, abs=1e-3)


def _assert_envelope(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]
    assert response.headers["x-should-retry"] == "false"
    return error


@pytest.mark.parametrize(
    ("body", "param"), BAD_REQUESTS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_REQUESTS)]
)
async def test_bad_request_gets_400_naming_the_field(http: httpx.AsyncClient, body: dict, param: str) -> None:
    error = _assert_envelope(await http.post("/v1/audio/speech", json=body), 400, param)
    assert error["type"] == "invalid_request_error"
    await _still_serving(http)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2, 3]", b'"just a string"', b"", b"\xff\xfe\x00"],
    ids=["malformed", "array", "string", "empty", "binary"],
)
async def test_unparseable_body_gets_400(http: httpx.AsyncClient, raw: bytes) -> None:
    response = await http.post("/v1/audio/speech", content=raw, headers={"content-type": "application/json"})
    _assert_envelope(response, 400, None)
    await _still_serving(http)


async def test_unknown_model_is_404_model_not_found(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await aclient.audio.speech.create(model="gpt-5-tts", voice="alloy", input=TEXT)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


async def test_sdk_surfaces_param_of_a_400(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, speed=9.0)
    assert caught.value.param == "speed"


async def test_unknown_route_and_method_use_the_envelope(http: httpx.AsyncClient) -> None:
    _assert_envelope(await http.get("/v1/audio/nothing"), 404, None)
    _assert_envelope(await http.get("/v1/audio/speech"), 405, None)


async def test_models_list_and_retrieve(aclient: openai.AsyncOpenAI) -> None:
    ids = [model.id async for model in aclient.models.list()]
    assert ids == ["voxcpm2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-03-20",
                   "gpt-4o-mini-tts-2025-12-15"]  # fmt: skip
    assert (await aclient.models.retrieve("tts-1-hd")).id == "tts-1-hd"
    with pytest.raises(openai.NotFoundError):
        await aclient.models.retrieve("whisper-1")


async def test_health(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["ready"] is True and body["status"] == "ok"
    assert body["engine"] == TEST_ENGINE
    if TEST_ENGINE == "reference":
        assert body["device"] == "cpu"
    assert body["model"] == "voxcpm2"
    assert body["requests_in_flight"] == 0
    assert "/" not in body["checkpoint"], "server paths are never shown"
    head = await http.head("/health")
    assert head.status_code == 200 and head.content == b""


async def test_request_id_is_echoed_or_generated(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health", headers={"x-request-id": "abc-123"})).headers[
        "x-request-id"
    ] == "abc-123"
    generated = (await http.get("/health", headers={"x-request-id": "bad id with spaces"})).headers[
        "x-request-id"
    ]
    assert generated.startswith("req_")
