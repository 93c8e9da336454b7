"""Loudness: output brought to a target integrated loudness (LUFS, ITU-R BS.1770, measured by pyloudnorm).

- Buffered audio is measured whole and gained once to the target.
- A stream cannot be measured before it is sent, so its gain is chosen before the first chunk from the
  voice's own level and held for the whole stream: every chunk gets the same gain, nothing pumps. A
  voice's level is measured once (then kept in memory, by the voice's content key) on a calibration
  passage the engine speaks in that voice; an uploaded voice, used once, is measured on its recording.

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
import soxr

from voxport.engine.base import Engine, SynthesisRequest
from voxport.voices import Voice, VoiceRegistry

log = logging.getLogger("voxport.speech")

MAX_GAIN_DB = 30.0
_BLOCK_SECONDS = 0.4  # BS.1770's gating block: shorter audio is measured repeated to one block
# What a voice says, once, to have its level measured: a few plain sentences at an even pace.
CALIBRATION_TEXT = (
    "Here is a short passage, read at an even pace. It has a question, doesn't it? And it ends calmly."
)
CALIBRATION_STEPS = 50  # at most 8 s of audio
# The rates a voice's level is measured at (every rate mp3, aac and opus take).
OUTPUT_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
Levels = dict[int, float | None]  # output rate -> LUFS


@functools.lru_cache(maxsize=8)
def _meter(rate: int) -> pyloudnorm.Meter:
    return pyloudnorm.Meter(rate)


def measure(audio: np.ndarray, rate: int, out_rate: int | None = None) -> float | None:
    """Integrated loudness of mono float audio, LUFS, as it will sound at `out_rate` (resampled to it
    first: what a lower rate cuts off no longer counts); None for silence or no audio (blocking)."""
    if len(audio) == 0:
        return None
    if out_rate is not None and out_rate != rate:
        audio, rate = soxr.resample(audio, rate, out_rate), out_rate
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


def normalize(audio: np.ndarray, rate: int, target: float, out_rate: int) -> np.ndarray:
    """Buffered audio at `target` LUFS once resampled to `out_rate` (blocking: run it in a thread)."""
    return apply_gain(audio, gain_for(measure(audio, rate, out_rate), target))


async def normalized(audio: np.ndarray, rate: int, target: float | None, out_rate: int) -> np.ndarray:
    """`normalize` in a worker thread, when there is a target."""
    if target is None:
        return audio
    return await asyncio.to_thread(normalize, audio, rate, target, out_rate)


async def held(chunks: AsyncIterator[np.ndarray], gain: float) -> AsyncIterator[np.ndarray]:
    """Every chunk of a stream with one gain, chosen before the first."""
    try:
        async for chunk in chunks:
            yield apply_gain(chunk, gain)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


class VoiceLevels:
    """Each voice's level (LUFS), by its content key: measured once, on a calibration passage the engine
    speaks in that voice (its own output, not its reference recording: what a stream will sound like)."""

    def __init__(self, engine: Engine, voices: VoiceRegistry, max_steps: int):
        self.engine = engine
        self.voices = voices
        self.steps = min(CALIBRATION_STEPS, max_steps)
        self._levels: dict[str, Levels] = {}
        self._pending: dict[str, asyncio.Task[Levels]] = {}

    async def gain(self, voice: object, target: float | None, out_rate: int) -> float:
        """A stream's held gain: from a named voice's measured level, or an upload's (`.level`)."""
        if target is None:
            return 1.0
        if isinstance(voice, Voice):
            levels = await self.levels(voice)
            # At the nearest measured rate at or below the output's (any rate for pcm, wav and flac).
            level = levels[max((r for r in levels if r <= out_rate), default=min(levels))]
        else:
            level = getattr(voice, "level", None)
        return gain_for(level, target)

    async def levels(self, voice: Voice) -> Levels:
        if voice.key in self._levels:
            return self._levels[voice.key]
        task = self._pending.get(voice.key)
        if task is None:  # one calibration per voice, shared; a caller that goes away does not stop it
            task = asyncio.create_task(self._calibrate(voice), name=f"voxport-level-{voice.id}")
            self._pending[voice.key] = task
            task.add_done_callback(lambda done: self._settled(voice.key, done))
        return await asyncio.shield(task)

    def _settled(self, key: str, task: asyncio.Task[Levels]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled():
            task.exception()  # its callers have it; no "never retrieved" warning when they all left

    async def _calibrate(self, voice: Voice) -> Levels:
        prompt = await self.voices.prompt(voice)
        request = SynthesisRequest(CALIBRATION_TEXT, prompt, max_length=self.steps, seed=voice.seed or 0)
        chunks = [chunk async for chunk in self.engine.generate(request)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        rate = self.engine.info.sample_rate

        def measured() -> Levels:
            return {out: measure(audio, rate, out) for out in OUTPUT_RATES}

        levels = self._levels[voice.key] = await asyncio.to_thread(measured)
        shown = "n/a" if levels[48000] is None else f"{levels[48000]:.1f} LUFS"
        log.info("voice %s: level %s at 48 kHz (calibration, %.1f s)", voice.id, shown, len(audio) / rate)
        return levels
