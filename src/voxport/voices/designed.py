"""A designed voice's reference clip: the engine speaks a fixed passage in the voice's description and
seed, once; the clip is kept under the data directory and encoded as the voice's prompt."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from voxport.audio import encode
from voxport.engine.base import Engine, SynthesisRequest
from voxport.files import atomic_write
from voxport.voices.catalog import Voice, design_prefix

log = logging.getLogger("voxport.voices")

# What a designed voice says in its reference clip.
DESIGN_CLIP_TEXT = "Hello there. This is how I sound when I read a few ordinary sentences aloud."


async def design_clip(
    engine: Engine, voice: Voice, directory: Path, seconds: float, designed: list[str]
) -> Path:
    """The clip's path: made once from the voice's description and seed, then kept. `designed` lists
    the designed voices' ids, for the progress log line."""
    info = engine.info
    steps = max(1, round(seconds / info.step_seconds))
    path = directory / f"{voice.id}-{voice.key}-{steps}.wav"
    if await asyncio.to_thread(path.is_file):
        return path
    number = designed.index(voice.id) + 1 if voice.id in designed else len(designed)
    log.info("designing voice %s (%d/%d)…", voice.id, number, len(designed))
    text = design_prefix(voice.description, None) + DESIGN_CLIP_TEXT
    request = SynthesisRequest(text=text, max_length=steps, seed=voice.seed)
    audio = np.concatenate([chunk async for chunk in engine.generate(request)])
    wav = await asyncio.to_thread(encode, audio, info.sample_rate, "wav", info.sample_rate)
    await asyncio.to_thread(atomic_write, path, wav)
    log.info("designed voice %s: reference clip of %.1fs stored", voice.id, len(audio) / info.sample_rate)
    return path
