"""Loudness: output brought to a target integrated loudness (LUFS, ITU-R BS.1770, measured by pyloudnorm).

- Buffered audio is measured whole and gained once to the target.
- A stream cannot be measured before it is sent, so its gain is chosen before the first chunk from the
  voice's own level (its reference recording, or a designed voice's clip: measured once per voice and
  kept) and held for the whole stream: every chunk gets the same gain, nothing pumps.

The gain is bounded (±`MAX_GAIN_DB`) so that near-silence is not blown up into noise, and samples are
clipped to [-1, 1] as every encoder would. Silence (no gated block) is left as it is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator

import numpy as np
import pyloudnorm

from voxport.audio import AudioDecodeError, decode_file, ffmpeg_available
from voxport.voices import Voice, VoiceRegistry

log = logging.getLogger("voxport.speech")

MAX_GAIN_DB = 30.0
_BLOCK_SECONDS = 0.4  # BS.1770's gating block: shorter audio is measured repeated to one block


@functools.lru_cache(maxsize=8)
def _meter(rate: int) -> pyloudnorm.Meter:
    return pyloudnorm.Meter(rate)


def measure(audio: np.ndarray, rate: int) -> float | None:
    """Integrated loudness of mono float audio, LUFS; None for silence or no audio (blocking)."""
    if len(audio) == 0:
        return None
    block = int(_BLOCK_SECONDS * rate) + 1
    if len(audio) < block:
        audio = np.tile(audio, -(-block // len(audio)))
    level = float(_meter(rate).integrated_loudness(audio.astype(np.float64)))
    return level if math.isfinite(level) else None


def gain_for(level: float | None, target: float) -> float:
    """The linear gain that takes `level` to `target`, within ±MAX_GAIN_DB (1.0 when unmeasurable)."""
    if level is None:
        return 1.0
    db = max(-MAX_GAIN_DB, min(MAX_GAIN_DB, target - level))
    return 10 ** (db / 20)


def apply_gain(audio: np.ndarray, gain: float) -> np.ndarray:
    if gain == 1.0:
        return audio
    return np.clip(audio * np.float32(gain), -1.0, 1.0).astype(np.float32, copy=False)


def normalize(audio: np.ndarray, rate: int, target: float) -> np.ndarray:
    """Buffered audio at `target` LUFS (blocking: run it in a worker thread)."""
    return apply_gain(audio, gain_for(measure(audio, rate), target))


async def held(chunks: AsyncIterator[np.ndarray], gain: float) -> AsyncIterator[np.ndarray]:
    """Every chunk of a stream with one gain, chosen before the first."""
    try:
        async for chunk in chunks:
            yield apply_gain(chunk, gain)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


class VoiceLevels:
    """Each voice's measured level (LUFS), by its content key: measured once, from its reference."""

    rate = 48000  # a reference is decoded at this rate to be measured

    def __init__(self, voices: VoiceRegistry):
        self.voices = voices
        self._levels: dict[str, float | None] = {}

    async def gain(self, voice: object, target: float | None) -> float:
        """A stream's held gain: from a named voice's measured level, or an upload's (`.level`)."""
        if target is None:
            return 1.0
        level = await self.level(voice) if isinstance(voice, Voice) else getattr(voice, "level", None)
        return gain_for(level, target)

    async def level(self, voice: Voice) -> float | None:
        if voice.key in self._levels:
            return self._levels[voice.key]
        path = await self.voices.reference_audio(voice)
        level = None
        if path is not None and ffmpeg_available():
            try:
                audio = await asyncio.to_thread(decode_file, str(path), self.rate, 60.0)
                level = await asyncio.to_thread(measure, audio, self.rate)
            except AudioDecodeError:
                log.warning("voice %s: its reference could not be decoded to measure its level", voice.id)
        self._levels[voice.key] = level
        return level
