"""Fault injection around a real engine, for the failures no healthy engine produces on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from voxport.engine.base import EngineInfo, EngineUnavailable, GenerationStats, SynthesisRequest, VoicePrompt


class FaultInjectingEngine:
    """Delegates to a real engine until told to fail:

    - `kill()`: the engine dies like a crashed worker: not ready, every generation fails at once.
    - `stall()`: the engine stops answering: generations hang without producing anything;
    - `recover()`: after a stall, the engine answers again (the hanging generations go on);
    - `pace(seconds)`: each chunk is handed over that long after the last, on the event loop, as an
      engine whose progress runs through the event loop does (nano-vllm's async stream).
    """

    def __init__(self, inner):
        self.inner = inner
        self.killed = False
        self.stalled = asyncio.Event()
        self.recovered = asyncio.Event()
        self.pace_s = 0.0

    @property
    def info(self) -> EngineInfo:
        return self.inner.info

    @property
    def ready(self) -> bool:
        return self.inner.ready and not self.killed

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def encode_voice(self, wav_path: str, transcript: str | None, key: str) -> VoicePrompt:
        return await self.inner.encode_voice(wav_path, transcript, key)

    async def release_voice(self, voice: VoicePrompt) -> None:
        await self.inner.release_voice(voice)

    def kill(self) -> None:
        self.killed = True

    def stall(self) -> None:
        self.recovered.clear()
        self.stalled.set()

    def pace(self, seconds: float) -> None:
        self.pace_s = seconds

    def recover(self) -> None:
        self.stalled.clear()
        self.recovered.set()

    async def generate(
        self, request: SynthesisRequest, stats: GenerationStats | None = None
    ) -> AsyncIterator[np.ndarray]:
        if self.stalled.is_set():
            await self.recovered.wait()  # no answer until recover()
        async for chunk in self.inner.generate(request, stats):
            if self.killed:
                raise EngineUnavailable("the engine died")
            if self.stalled.is_set():
                await self.recovered.wait()
            if self.pace_s:
                await asyncio.sleep(self.pace_s)
            yield chunk
