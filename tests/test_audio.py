"""The encoder's building blocks, against independent decoding."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from tests.audio_check import decode
from voxport.audio import FORMATS, atempo_factors, encode, wav_header


@pytest.mark.parametrize("speed", [0.25, 0.3, 0.5, 0.75, 1.0, 1.7, 2.0, 3.0, 4.0])
def test_atempo_factors_multiply_to_speed_within_filter_range(speed: float) -> None:
    factors = atempo_factors(speed)
    assert all(0.5 <= f <= 2.0 for f in factors)
    assert math.prod(factors) == pytest.approx(speed)


def test_wav_header_sizes() -> None:
    header = wav_header(24000, 1000)
    assert len(header) == 44
    assert struct.unpack("<I", header[4:8])[0] == 1036
    assert struct.unpack("<I", header[40:44])[0] == 1000
    assert struct.unpack("<I", header[24:28])[0] == 24000
    streaming = wav_header(48000, None)
    assert struct.unpack("<I", streaming[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", streaming[40:44])[0] == 0xFFFFFFFF


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sine_round_trip_keeps_pitch_and_length(fmt: str) -> None:
    rate = 48000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out_rate = FORMATS[fmt].default_rate
    audio = decode(encode(tone, rate, fmt, out_rate, speed=2.0), fmt, pcm_rate=out_rate)
    # Codec framing adds a little (mp3: encoder delay and frame padding, at most ~60 ms).
    assert audio.duration == pytest.approx(0.5, abs=0.06)
    # Pitch is kept: the dominant frequency is still 440 Hz.
    spectrum = np.abs(np.fft.rfft(audio.samples))
    peak = np.argmax(spectrum) * audio.sample_rate / len(audio.samples)
    assert peak == pytest.approx(440, abs=10)


def test_clipping_instead_of_wrapping() -> None:
    loud = np.array([2.0, -2.0, 0.0], dtype=np.float32)
    pcm = np.frombuffer(encode(loud, 48000, "pcm", 48000), dtype="<i2")
    assert pcm.tolist() == [32767, -32767, 0]


async def test_without_ffmpeg_binary_only_in_process_formats_at_normal_speed_are_served(
    app, http, monkeypatch
) -> None:
    """pcm and wav (soxr), mp3, opus, aac and flac (FFmpeg's libraries in-process; buffered flac:
    libsndfile) need no ffmpeg binary; speed changes do."""
    from voxport import audio

    monkeypatch.setattr(audio.shutil, "which", lambda _name: None)
    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)  # import fails
    audio.ffmpeg_binary.cache_clear()
    try:
        slow = await http.post(
            "/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "speed": 2, "response_format": "pcm"}
        )
        assert slow.status_code == 503 and slow.json()["error"]["code"] == "ffmpeg_unavailable"
        for fmt in ("pcm", "mp3", "opus", "flac"):
            ok = await http.post(
                "/v1/audio/speech",
                json={"model": "tts-1", "input": "Hi.", "response_format": fmt, "cache": False},
            )
            assert ok.status_code == 200 and len(ok.content) > 0
    finally:
        audio.ffmpeg_binary.cache_clear()


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_buffered_flac_declares_its_length(speed: float) -> None:
    """STREAMINFO carries the total sample count, so players and ffprobe know the duration."""
    import io

    import soundfile

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
    data = encode(tone, 48000, "flac", 24000, speed=speed)
    info = soundfile.info(io.BytesIO(data))
    assert info.samplerate == 24000
    assert info.frames == pytest.approx(24000 / speed, abs=480)  # atempo adds a few ms
    assert struct.unpack(">Q", b"\0\0\0" + data[21:26])[0] & (2**36 - 1) == info.frames


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_without_pyav_compressed_formats_are_encoded_by_ffmpeg(monkeypatch, fmt: str) -> None:
    """A host without PyAV (the GPU session's carried set) still answers every format."""
    from voxport import audio

    monkeypatch.setattr(audio, "pyav_available", lambda: False)
    assert audio.needs_ffmpeg(fmt, 1.0)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
    decoded = decode(encode(tone, 48000, fmt, 48000), fmt, pcm_rate=48000)
    assert decoded.duration == pytest.approx(1.0, abs=0.06)
