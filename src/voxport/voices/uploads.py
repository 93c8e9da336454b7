"""Uploaded recordings (a library voice's sample, an adhoc voice, a consent recording): decoded from a
private scratch file with a random name, checked (decodable, 1 to 30 s), mixed to mono and resampled to
the encoder's 16 kHz. Nothing a client sends becomes a file name."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxport.audio import AudioDecodeError, decode_file, write_wav
from voxport.engine.base import Engine, VoicePrompt
from voxport.errors import VoxportError, invalid
from voxport.voices.catalog import content_key

ENCODER_RATE = 16000  # VoxCPM2's audio encoder reads 16 kHz mono
MIN_SECONDS, MAX_SECONDS = 1.0, 30.0


@dataclass
class Upload:
    """A validated, normalised recording: mono float32 at 16 kHz, 1 to 30 s."""

    samples: np.ndarray
    key: str

    @property
    def duration(self) -> float:
        return len(self.samples) / ENCODER_RATE

    @property
    def wav_bytes(self) -> int:
        """Its size as the 16-bit WAV file the library keeps."""
        return len(self.samples) * 2 + 44


def _decode(data: bytes, scratch: Path) -> np.ndarray:
    scratch.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix="upload-", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return decode_file(raw, ENCODER_RATE, MAX_SECONDS)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(raw)


async def read_upload(data: bytes, transcript: str | None, param: str, scratch: Path) -> Upload:
    """Validate an uploaded recording: decodable, 1-30 s; mixed to mono and resampled to 16 kHz."""
    try:
        samples = await asyncio.to_thread(_decode, data, scratch)
    except AudioDecodeError:
        raise invalid(f"'{param}' is not audio that can be decoded.", param, "invalid_audio") from None
    seconds = len(samples) / ENCODER_RATE
    if seconds < MIN_SECONDS or seconds > MAX_SECONDS:
        raise invalid(
            f"'{param}' is {seconds:.2f}s long; "
            f"recordings must last {MIN_SECONDS:.0f} to {MAX_SECONDS:.0f}s.",
            param,
            "invalid_audio_duration",
        )
    return Upload(samples, content_key(samples.tobytes(), transcript))


def allowed_path(allowed_dir: Path | None, relative: str, param: str) -> Path:
    """`relative` resolved inside `allowed_dir` (blocking: a worker thread), or `forbidden` / `invalid`."""
    if allowed_dir is None:
        message = "Reading recordings from server paths is off (no allowed_prompt_dir)."
        raise VoxportError("forbidden", message, code="forbidden")
    path = (allowed_dir / relative).resolve()
    try:
        path.relative_to(allowed_dir.resolve())
    except ValueError:
        raise VoxportError("forbidden", f"'{param}' is outside the allowed directory.", param=param,
                           code="forbidden") from None  # fmt: skip
    if not path.is_file():
        raise invalid(f"'{param}' does not name a file in the allowed directory.", param)
    return path


async def adhoc_prompt(engine: Engine, upload: Upload, transcript: str | None, scratch: Path) -> VoicePrompt:
    """Encode an upload for one request (a scratch file, removed after); nothing is kept on disk."""
    fd, path = await asyncio.to_thread(tempfile.mkstemp, prefix="adhoc-", suffix=".wav", dir=scratch)
    os.close(fd)
    try:
        await asyncio.to_thread(write_wav, path, upload.samples, ENCODER_RATE)
        return await engine.encode_voice(path, transcript, upload.key)
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.unlink, path)
