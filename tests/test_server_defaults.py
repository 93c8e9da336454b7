"""Server-side defaults for the fields clients cannot send: applied when the request leaves a field out,
never over one it sets, and part of the cache key."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.test_voices import running

pytestmark = pytest.mark.timeout(600)


def _speech(**extra) -> dict:
    return {"model": "tts-1", "voice": "nova", "input": "Hello there.", "response_format": "wav",
            "stream": False, **extra}  # fmt: skip


def _rate(wav: bytes) -> int:
    return sf.info(io.BytesIO(wav)).samplerate


async def test_defaults_fill_what_the_request_leaves_out(tiny_model: Path, tmp_path: Path) -> None:
    defaults = {"default_sample_rate": "wav=16000,pcm=16000", "default_seed": 7, "default_language": "en",
                "default_normalize": True}  # fmt: skip
    async with running(tiny_model, tmp_path / "data", **defaults) as (_, http):
        plain = await http.post("/v1/audio/speech", json=_speech())
        assert plain.status_code == 200 and plain.headers["x-cache"] == "MISS"
        assert _rate(plain.content) == 16000 and plain.headers["x-sample-rate"] == "16000"
        # The same values sent explicitly: the very same request, so the same cache entry.
        explicit = _speech(sample_rate=16000, seed=7, language="en", normalize=True)
        same = await http.post("/v1/audio/speech", json=explicit)
        assert same.headers["x-cache"] == "HIT" and same.content == plain.content
        # Each field the request sets wins over its default.
        for field, value in (("sample_rate", 24000), ("seed", 8), ("language", "fr"), ("normalize", False)):
            own = await http.post("/v1/audio/speech", json=_speech(**{field: value}))
            assert own.status_code == 200 and own.headers["x-cache"] == "MISS", field
            if field == "sample_rate":
                assert _rate(own.content) == 24000
        # Formats without a default keep their own rate.
        flac = await http.post("/v1/audio/speech", json=_speech(response_format="flac"))
        assert _rate(flac.content) == 48000
    # Another default on the same cache: audio made under the old one is never served.
    async with running(tiny_model, tmp_path / "data", default_sample_rate="wav=22050") as (_, http):
        changed = await http.post("/v1/audio/speech", json=_speech(seed=7, language="en", normalize=True))
        assert changed.headers["x-cache"] == "MISS" and _rate(changed.content) == 22050


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--default-sample-rate", "opus=44100", "opus cannot be encoded at 44100"),
        ("--default-sample-rate", "ogg=16000", "unknown format"),
        ("--default-sample-rate", "wav:16000", "FORMAT=RATE"),
        ("--default-language", "xx", "does not speak"),
    ],
)
def test_a_bad_default_stops_start_up(tmp_path: Path, flag: str, value: str, says: str) -> None:
    command = [sys.executable, "-m", "voxport", "serve", "--data-dir", str(tmp_path), flag, value]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr
