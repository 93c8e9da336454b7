"""The built-in Wyoming server, end to end: a real `voxport serve --wyoming-port` process on the tiny
checkpoint, driven by the `wyoming` library's own client."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeTextFormat,
    SynthesizeVoice,
)

from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, TEST_WORKERS, ServerProcess, free_port

pytestmark = pytest.mark.timeout(600)

PCM_RATE = 24000  # the pcm format's rate: what Wyoming clients get
UTTERANCE_SAMPLES = round(TEST_MAX_LENGTH * STEP_SECONDS * PCM_RATE)  # the tiny model runs to its cap
MAX_CHARS = 300


@pytest.fixture(scope="module")
def wyoming(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("wyoming-data")
    port = free_port()
    proc = ServerProcess(
        ["--model", str(tiny_model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH),
         "--design-clip-seconds", "1", "--wyoming-port", str(port), "--max-input-chars", str(MAX_CHARS),
         "--workers", TEST_WORKERS]
    )  # fmt: skip
    proc.wyoming_port = port  # type: ignore[attr-defined]
    try:
        proc.wait_ready()
        _wait_for_port(port)  # with --workers, /health may answer before worker 0 (Wyoming's) is up
        yield proc
    finally:
        proc.stop()


def _wait_for_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def _read(client: AsyncTcpClient, timeout: float = 300) -> Event:
    event = await asyncio.wait_for(client.read_event(), timeout)
    assert event is not None, "the server closed the connection"
    return event


async def _utterance(client: AsyncTcpClient) -> tuple[AudioStart, bytes] | Error:
    """One answer: audio-start, audio-chunk..., audio-stop (checked consistent), or an error event."""
    event = await _read(client)
    if Error.is_type(event.type):
        return Error.from_event(event)
    assert AudioStart.is_type(event.type), event.type
    start = AudioStart.from_event(event)
    audio = bytearray()
    while not AudioStop.is_type((event := await _read(client)).type):
        assert AudioChunk.is_type(event.type), event.type
        chunk = AudioChunk.from_event(event)
        assert (chunk.rate, chunk.width, chunk.channels) == (start.rate, start.width, start.channels)
        audio += chunk.audio
    return start, bytes(audio)


async def _describe(client: AsyncTcpClient) -> list[str]:
    await client.write_event(Describe().event())
    info = Info.from_event(await _read(client, 60))
    (program,) = info.tts
    assert program.supports_synthesize_streaming
    for voice in program.voices:
        assert "en" in voice.languages and "zh" in voice.languages and voice.description
    return [voice.name for voice in program.voices]


def _tone_wav(seconds: float = 3.0) -> bytes:
    t = np.arange(int(44100 * seconds)) / 44100
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), 44100, format="WAV")
    return buffer.getvalue()


def _client(server: ServerProcess) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", server.wyoming_port)  # type: ignore[attr-defined]


async def test_describe_lists_a_new_library_voice_without_a_restart(wyoming: ServerProcess) -> None:
    async with _client(wyoming) as client:
        before = await _describe(client)
        assert {"alloy", "nova", "cedar"} <= set(before)
        assert "Kitchen Helper" not in before
        async with httpx.AsyncClient(base_url=wyoming.base_url, timeout=120) as http:
            response = await http.post(
                "/v1/audio/voices", data={"name": "Kitchen Helper", "consent": "true"},
                files={"audio_sample": ("helper.wav", _tone_wav())},
            )  # fmt: skip
            assert response.status_code == 201, response.text
        assert "Kitchen Helper" in await _describe(client)  # same connection, no restart
        # An alias is one more name there, and speaks with its voice.
        async with httpx.AsyncClient(base_url=wyoming.base_url, timeout=60) as http:
            alias = await http.put("/v1/audio/voice_aliases/kitchen", json={"voice": "Kitchen Helper"})
            assert alias.status_code == 200, alias.text
        assert "kitchen" in await _describe(client)
        await client.write_event(Synthesize("Hello there.", voice=SynthesizeVoice("kitchen")).event())
        by_alias = await _utterance(client)
        assert not isinstance(by_alias, Error), by_alias
        # And it speaks by that name.
        await client.write_event(Synthesize("Hello there.", voice=SynthesizeVoice("Kitchen Helper")).event())
        answer = await _utterance(client)
        assert not isinstance(answer, Error), answer
        assert len(answer[1]) == UTTERANCE_SAMPLES * 2
        assert answer[1] == by_alias[1]  # the same voice: the alias's audio, from the cache


async def test_synthesize_streams_pcm_of_the_stated_format_and_length(wyoming: ServerProcess) -> None:
    async with _client(wyoming) as client:
        await client.write_event(Synthesize("Good morning.", voice=SynthesizeVoice("nova")).event())
        answer = await _utterance(client)
        assert not isinstance(answer, Error), answer
        start, audio = answer
        assert (start.rate, start.width, start.channels) == (PCM_RATE, 2, 1)
        assert len(audio) == UTTERANCE_SAMPLES * 2
        samples = np.frombuffer(audio, dtype="<i2")
        assert np.abs(samples).max() > 0  # sound, not silence


async def test_streaming_synthesis_speaks_each_sentence(wyoming: ServerProcess) -> None:
    async with _client(wyoming) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice("alloy")).event())
        for piece in ["The first ", "sentence ends here. The sec", "ond one "]:
            await client.write_event(SynthesizeChunk(piece).event())
        # The first sentence is spoken while the text is still coming.
        first = await _utterance(client)
        assert not isinstance(first, Error), first
        await client.write_event(SynthesizeChunk("is here.").event())
        # Home Assistant also sends the whole text for older servers: it must not be spoken twice.
        text = "The first sentence ends here. The second one is here."
        await client.write_event(Synthesize(text, voice=SynthesizeVoice("alloy")).event())
        await client.write_event(SynthesizeStop().event())
        second = await _utterance(client)
        assert not isinstance(second, Error), second
        assert SynthesizeStopped.is_type((await _read(client)).type)
        for start, audio in (first, second):
            assert (start.rate, start.width, start.channels) == (PCM_RATE, 2, 1)
            assert len(audio) == UTTERANCE_SAMPLES * 2


async def test_errors_are_events_and_the_connection_stays_usable(wyoming: ServerProcess) -> None:
    async with _client(wyoming) as client:
        cases = [
            (Synthesize("Hello.", voice=SynthesizeVoice("no-such-voice")), "voice_not_found"),
            (Synthesize("   "), "empty_text"),
            (Synthesize("word " * MAX_CHARS), "string_too_long"),
        ]
        for request, code in cases:
            await client.write_event(request.event())
            answer = await _utterance(client)
            assert isinstance(answer, Error), answer
            assert answer.code == code and answer.text
        # A streaming session with an unknown voice: an error at once, then the session closes normally.
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice("no-such-voice")).event())
        error = await _read(client)
        assert Error.is_type(error.type) and Error.from_event(error).code == "voice_not_found"
        await client.write_event(SynthesizeChunk("Nothing to say.").event())
        await client.write_event(SynthesizeStop().event())
        assert SynthesizeStopped.is_type((await _read(client)).type)
        # Still the same connection: it describes and speaks.
        assert "alloy" in await _describe(client)
        await client.write_event(Synthesize("Still here.").event())
        answer = await _utterance(client)
        assert not isinstance(answer, Error) and len(answer[1]) == UTTERANCE_SAMPLES * 2
    # And the server itself is fine.
    assert httpx.get(f"{wyoming.base_url}/health", timeout=10).json()["ready"]


async def test_ssml_text_format_is_read_through_the_ssml_mapping(wyoming: ServerProcess) -> None:
    """`text_format: "ssml"`: a `<break>` becomes that much silence (not words read aloud), on `synthesize`
    and in a streamed session (held until stop); malformed SSML is an `error` event."""
    voice = SynthesizeVoice("echo")
    document = '<speak>Turn the lights on.<break time="500ms"/>Then lock the door.</speak>'
    async with _client(wyoming) as client:
        await client.write_event(Synthesize("Turn the lights on. Then lock the door.", voice=voice).event())
        plain = await _utterance(client)
        await client.write_event(
            Synthesize(document, voice=voice, text_format=SynthesizeTextFormat.SSML).event()
        )
        ssml = await _utterance(client)
        assert not isinstance(plain, Error) and not isinstance(ssml, Error), (plain, ssml)
        # Two sentences either way (one segment each, cross-faded); the SSML adds 0.5 s of silence.
        assert abs(len(plain[1]) / 2 - 2 * UTTERANCE_SAMPLES) < 0.05 * PCM_RATE
        added = (len(ssml[1]) - len(plain[1])) / 2 / PCM_RATE
        assert abs(added - 0.5) < 0.02, added
        # Streamed in pieces that are not well-formed XML on their own: one utterance, on stop.
        await client.write_event(SynthesizeStart(voice=voice, text_format="ssml").event())
        for start in range(0, len(document), 7):
            await client.write_event(SynthesizeChunk(document[start : start + 7]).event())
        await client.write_event(SynthesizeStop().event())
        streamed = await _utterance(client)
        assert not isinstance(streamed, Error), streamed
        assert SynthesizeStopped.is_type((await _read(client)).type)
        assert len(streamed[1]) == len(ssml[1])
        # Malformed: an error event naming the problem; the connection goes on.
        await client.write_event(Synthesize("<speak>Hi <s>there</speak>", text_format="ssml").event())
        error = await _utterance(client)
        assert isinstance(error, Error) and error.code == "invalid_ssml" and "line 1" in error.text
        await client.write_event(Synthesize("<speak>Hello.</speak>", text_format="text").event())
        literal = await _utterance(client)  # plain text: the markup is just characters
        assert not isinstance(literal, Error), literal
