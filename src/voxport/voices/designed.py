"""A designed voice's reference clip: the engine speaks a fixed passage in the voice's description and
seed, once; the clip is kept under the data directory and encoded as the voice's prompt."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxport.audio import encode
from voxport.engine.base import Engine, SynthesisRequest
from voxport.files import atomic_write
from voxport.voices.catalog import Voice, design_prefix

if TYPE_CHECKING:
    from voxport.voices.registry import VoiceRegistry

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


async def warm(registry: VoiceRegistry) -> None:
    """--warm-voices: every designed voice's reference clip and prompt made now, one after the other, with
    a progress line per voice, so that no request after /ready pays for a voice's first use. A voice that
    fails is logged and left to its first use."""
    designed = [voice for voice in registry.builtin.values() if voice.kind == "designed"]
    started = time.perf_counter()
    for number, voice in enumerate(designed, 1):
        began = time.perf_counter()
        try:
            await registry.prompt(voice)
        except Exception:
            log.exception("warming voice %s (%d/%d) failed; it is made on first use", voice.id, number,
                          len(designed))  # fmt: skip
            continue
        log.info("voice %s warm (%d/%d, %.1fs)", voice.id, number, len(designed), time.perf_counter() - began)
    log.info("%d designed voices warm in %.1fs", len(designed), time.perf_counter() - started)
