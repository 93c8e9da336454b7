"""Streaming speech: chunked audio in every format, SSE, cancellation, long text."""

from __future__ import annotations

import base64
import json
import struct
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.asgi_driver import ASGIRequest
from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, ServerProcess, make_settings
from tests.test_speech_api import FORMATS
from tests.waiting import until
from voxport.app import create_app

ONE_SENTENCE = "A single sentence to stream."
CROSSFADE = 0.01
SEGMENT_SECONDS = TEST_MAX_LENGTH * STEP_SECONDS


def _wait_idle(server: ServerProcess, cancelled_before: int | None = None) -> dict:
    """Poll /health until nothing is in flight (bounded: this is a wait, not a timing assertion)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.base_url}/health", timeout=5).json()
        done = health["requests_in_flight"] == 0
        if cancelled_before is not None:
            done = done and health["requests_cancelled"] > cancelled_before
        if done:
            return health
        time.sleep(0.05)
    raise AssertionError(f"server did not become idle: {health}")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sdk_streams_every_format_to_the_same_audio(client: openai.OpenAI, fmt: str) -> None:
    codec, content_type, rate = FORMATS[fmt]
    whole = client.audio.speech.create(
        model="tts-1", voice="alloy", input=ONE_SENTENCE, response_format=fmt, extra_body={"stream": False}
    )
    assert int(whole.response.headers["content-length"]) == len(whole.content)
    parts: list[bytes] = []
    # OpenAI's documented way to stream, with nothing voxport-specific: /v1/audio/speech streams by default.
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=ONE_SENTENCE, response_format=fmt, extra_body={"cache": False}
    ) as response:
        assert response.headers["content-type"] == content_type
        assert response.headers["x-sample-rate"] == str(rate)
        assert "x-audio-duration" not in response.headers  # unknown until the end
        parts.extend(response.iter_bytes())
    streamed = decode(b"".join(parts), fmt, pcm_rate=rate)
    buffered = decode(whole.content, fmt, pcm_rate=rate)
    assert (streamed.codec, streamed.sample_rate, streamed.channels) == (codec, rate, 1)
    assert streamed.duration == pytest.approx(buffered.duration, abs=STEP_SECONDS)
    assert streamed.duration == pytest.approx(SEGMENT_SECONDS, abs=STEP_SECONDS)
    assert streamed.rms > 1e-4


def test_stream_route_sends_wav_header_of_unknown_length_then_pcm(server: ServerProcess) -> None:
    body = {"model": "tts-1", "input": ONE_SENTENCE, "response_format": "wav", "speed": 2.0}
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech/stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        data = b"".join(response.iter_bytes())
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    samples = (len(data) - 44) // 2
    assert samples / 48000 == pytest.approx(SEGMENT_SECONDS / 2, abs=STEP_SECONDS)


def test_pcm_stream_at_a_chosen_rate(server: ServerProcess) -> None:
    body = {"model": "tts-1", "input": ONE_SENTENCE, "response_format": "pcm", "sample_rate": 16000}
    response = httpx.post(f"{server.base_url}/v1/audio/speech/stream", json=body, timeout=60)
    assert response.headers["x-sample-rate"] == "16000"
    assert decode(response.content, "pcm", pcm_rate=16000).duration == pytest.approx(
        SEGMENT_SECONDS, abs=STEP_SECONDS
    )


def _sse_events(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        block = block.strip()
        if block:
            assert block.startswith("data: "), block
            events.append(json.loads(block[len("data: ") :]))
    return events


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
def test_sse_events_match_openai_shapes(client: openai.OpenAI, fmt: str) -> None:
    text = "First sentence here. And a second one."
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input=text, response_format=fmt, stream_format="sse"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response.read().decode())
    deltas, done = events[:-1], events[-1]
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["output_tokens"] == 2 * TEST_MAX_LENGTH  # two sentences, each runs to max_length
    assert usage["input_tokens"] > len(text) // 4
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    audio = decode(b"".join(base64.b64decode(e["audio"]) for e in deltas), fmt, pcm_rate=FORMATS[fmt][2])
    assert audio.duration == pytest.approx(2 * SEGMENT_SECONDS - CROSSFADE, abs=STEP_SECONDS)


def test_multi_paragraph_stream_is_one_continuous_utterance(client: openai.OpenAI) -> None:
    text = "First paragraph, first sentence. Then its second!\n\nAnother paragraph? Yes.\n\nThe end; really."
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="fable", input=text, response_format="flac", extra_body={"stream": True}
    ) as response:
        audio = decode(response.read(), "flac")
    segments = 6
    expected = segments * SEGMENT_SECONDS - (segments - 1) * CROSSFADE
    assert audio.duration == pytest.approx(expected, abs=STEP_SECONDS)


async def test_long_input_is_split_and_joined_when_not_streaming(aclient: openai.AsyncOpenAI, app) -> None:
    sentence = "This sentence is here to make the input much longer than one window. "
    text = (sentence * 60)[:4000]
    engine = app.state.speech.engine
    tokens = engine.count_tokens(text)
    assert tokens + 1 + min(6 * tokens + 10, TEST_MAX_LENGTH) > engine.info.max_model_len  # truly too long
    response = await aclient.audio.speech.create(
        model="tts-1", voice="alloy", input=text, response_format="wav"
    )
    audio = decode(response.content, "wav")
    segments = round((audio.duration + CROSSFADE) / (SEGMENT_SECONDS - CROSSFADE))
    assert segments >= 4  # 4000 characters in segments of at most 300
    assert audio.duration == pytest.approx(segments * SEGMENT_SECONDS - (segments - 1) * CROSSFADE, abs=1e-3)


async def test_first_audio_is_sent_while_the_engine_is_still_generating(app) -> None:
    engine = app.state.speech.engine
    body = {"model": "tts-1", "input": "One. Two. Three.", "response_format": "pcm"}
    before = engine.steps_generated
    request = ASGIRequest(app, "/v1/audio/speech/stream", body)
    start = await request.start()
    assert start["status"] == 200
    first = await request.body_part()
    assert first  # audio bytes
    assert engine.steps_generated - before < 3 * TEST_MAX_LENGTH  # not all generated yet
    while await request.body_part() is not None:
        pass
    await request.finish()
    assert engine.steps_generated - before == 3 * TEST_MAX_LENGTH


async def test_disconnect_mid_stream_stops_the_generation(app) -> None:
    speech = app.state.speech
    engine = speech.engine
    body = {"model": "tts-1", "input": "One. Two. Three. Four. Five.", "response_format": "mp3"}
    before, cancelled = engine.steps_generated, speech.tickets.cancelled_total
    request = ASGIRequest(app, "/v1/audio/speech/stream", body)
    await request.start()
    await request.body_part()
    request.disconnect()
    await request.finish()
    assert speech.tickets.in_flight == 0
    assert speech.tickets.cancelled_total == cancelled + 1
    # The next request runs only once the engine has let go of the abandoned one.
    assert (await engine_steps(engine, "Next.")) == 1
    assert engine.steps_generated - before < 5 * TEST_MAX_LENGTH


async def engine_steps(engine, text: str) -> int:
    from voxport.engine.base import SynthesisRequest

    return len([c async for c in engine.generate(SynthesisRequest(text=text, max_length=1))])


def test_killed_client_frees_the_server(server: ServerProcess) -> None:
    cancelled = httpx.get(f"{server.base_url}/health").json()["requests_cancelled"]
    body = {"model": "tts-1", "input": "One. Two. Three. Four. Five. Six.", "response_format": "wav"}
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech/stream", json=body, timeout=60) as response:
        next(response.iter_bytes())
    # Leaving the block closes the connection mid-body.
    _wait_idle(server, cancelled)
    after = httpx.post(
        f"{server.base_url}/v1/audio/speech",
        json={"model": "tts-1", "input": "Hi.", "response_format": "pcm"},
    )
    assert after.status_code == 200


def test_cancel_by_request_id(server: ServerProcess) -> None:
    cancelled = httpx.get(f"{server.base_url}/health").json()["requests_cancelled"]
    text = " ".join(f"Sentence number {i}." for i in range(8))
    body = {"model": "tts-1", "input": text, "response_format": "wav"}
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech/stream", json=body, timeout=60) as response:
        request_id = response.headers["x-request-id"]
        chunks = response.iter_bytes()
        received = next(chunks)
        answer = httpx.post(f"{server.base_url}/v1/audio/speech/cancel", json={"request_id": request_id})
        assert answer.status_code == 200 and answer.json() == {"request_id": request_id, "cancelled": True}
        received += b"".join(chunks)  # the stream ends early, cleanly
    full = 8 * SEGMENT_SECONDS
    assert (len(received) - 44) / 2 / 48000 < full - SEGMENT_SECONDS
    _wait_idle(server, cancelled)


def test_cancel_unknown_id_is_404(server: ServerProcess) -> None:
    answer = httpx.post(f"{server.base_url}/v1/audio/speech/cancel", json={"request_id": "req_nope"})
    assert answer.status_code == 404
    assert answer.json()["error"]["param"] == "request_id"
    assert answer.json()["error"]["code"] == "request_not_found"
    bad = httpx.post(f"{server.base_url}/v1/audio/speech/cancel", json={})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "request_id"


@pytest.fixture(scope="module")
async def slow_app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    application = create_app(make_settings(tiny_model, tmp_path_factory.mktemp("slow"), max_length=2048))
    async with application.router.lifespan_context(application):
        yield application


async def test_cancel_a_buffered_request_answers_499(slow_app) -> None:
    speech = slow_app.state.speech
    body = {
        "model": "tts-1",
        "input": "A request long enough to be cancelled on the way.",
        "response_format": "wav",
    }
    request = ASGIRequest(slow_app, "/v1/audio/speech", body, headers={"x-request-id": "cancel-me"})
    await until(lambda: "cancel-me" in speech.tickets.active, "the request to start generating")
    assert speech.tickets.cancel("cancel-me")
    start = await request.start()
    assert start["status"] == 499
    assert json.loads(await request.body_part())["error"]["code"] == "request_cancelled"
    await request.finish()
    assert speech.tickets.in_flight == 0


def _in_flight_at_first_byte(client: openai.OpenAI, server: ServerProcess, **extra) -> tuple[int, int]:
    """(requests in flight when the first body byte arrived, body size): five sentences of generation, so
    a streamed body starts long before its synthesis ends, and a buffered one only after."""
    text = " ".join(f"Sentence number {i} is here." for i in range(5))
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm", extra_body={"cache": False, **extra}
    ) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        in_flight = httpx.get(f"{server.base_url}/health", timeout=5).json()["requests_in_flight"]
        size = len(first) + sum(len(c) for c in chunks)
    return in_flight, size


def test_sdk_streaming_response_gets_audio_before_the_synthesis_ends(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    in_flight, size = _in_flight_at_first_byte(client, server)
    assert in_flight == 1  # still generating when the first audio arrived
    buffered_in_flight, buffered_size = _in_flight_at_first_byte(client, server, stream=False)
    assert buffered_in_flight == 0  # `stream: false`: nothing is sent before the synthesis ends
    assert size > 0 and buffered_size > 0


def test_a_cache_hit_on_the_streaming_default_is_served_whole(client: openai.OpenAI) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "Stream me once, then serve me whole.",
            "response_format": "wav"}  # fmt: skip
    first = client.audio.speech.with_raw_response.create(**body)
    assert first.headers["x-cache"] == "MISS" and "content-length" not in first.headers
    second = client.audio.speech.with_raw_response.create(**body)
    assert second.headers["x-cache"] == "HIT"
    assert int(second.headers["content-length"]) == len(second.content)
    assert float(second.headers["x-audio-duration"]) > 0
    # The stored wav carries its real sizes (the streamed one said "unknown").
    assert struct.unpack("<I", second.content[40:44])[0] == len(second.content) - 44
    assert second.content[44:] == first.content[44:]
