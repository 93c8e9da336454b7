"""What a worker's SpeechService runs on: `RemoteEngine` (engine/base.py's Engine over the wire) and
`RemoteAdmission` (speech/admission.py's interface, counted by the engine host for every worker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from voxport.config import Settings
from voxport.engine.base import (
    EngineInfo,
    EngineUnavailable,
    GenerationStats,
    SynthesisRequest,
    VoicePrompt,
    collapse_whitespace,
)
from voxport.errors import VoxportError
from voxport.topology import wire
from voxport.topology.client import HostLink


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """VoxCPM2's text token count without loading the model (or torch): its tokenizer reads a token made
    of several CJK ideographs as one token per character."""
    ideographs = {t for t in tokenizer.vocab if len(t) >= 2 and all("\u4e00" <= c <= "\u9fff" for c in t)}

    def count(text: str) -> int:
        tokens = (t.replace("\u2581", "") for t in tokenizer.tokenize(collapse_whitespace(text)))
        return sum(len(t) if t in ideographs else 1 for t in tokens)

    return count


class RemoteEngine:
    def __init__(self, link: HostLink, settings: Settings, model_dir: str):
        self.link = link
        self._settings = settings
        self._model_dir = model_dir
        self._count: Callable[[str], int] | None = None
        self._sources: dict[str, tuple[str, str | None]] = {}  # key -> how to encode it again

    @property
    def info(self) -> EngineInfo:
        if self.link.info is None:
            raise EngineUnavailable("the engine is not loaded")
        return self.link.info

    @property
    def ready(self) -> bool:
        return self.link.ready

    @property
    def capacity(self) -> int:
        return self.link.capacity

    async def start(self) -> None:
        while not self.link.ready:  # the engine host loads the engine meanwhile
            await asyncio.sleep(wire.PING_S)
        self._count = await asyncio.to_thread(self._counter, self.info.name)

    def _counter(self, name: str) -> Callable[[str], int]:
        """The engine's own token count, here (the tokenizer only; `count_tokens` is called on the loop)."""
        if name == "sim":
            from voxport.engine.sim import SimEngine

            return SimEngine().count_tokens
        from transformers import LlamaTokenizerFast

        return token_counter(LlamaTokenizerFast.from_pretrained(self._model_dir))

    def count_tokens(self, text: str) -> int:
        if self._count is None:
            raise EngineUnavailable("the engine is not loaded")
        return self._count(text)

    async def encode_voice(self, wav_path: str, transcript: str | None, key: str) -> VoicePrompt:
        reply = await self._encode(wav_path, transcript, key)
        self._sources[key] = (wav_path, transcript)
        return VoicePrompt(key=key, mode=reply.mode, positions=reply.positions, handle=key)

    async def _encode(self, wav_path: str, transcript: str | None, key: str) -> wire.Encoded:
        link = self.link
        id_ = link.new_id()
        reply = await link.call(id_, wire.Encode(id_, link.epoch, wav_path, transcript, key))
        if isinstance(reply, wire.Failed):
            raise wire.raised(reply)
        link.voices.add(key)
        return reply

    async def release_voice(self, voice: VoicePrompt) -> None:
        self._sources.pop(voice.key, None)
        self.link.voices.discard(voice.key)
        if self.link.up:
            self.link.send(wire.Forget(voice.key))

    def generate(
        self, request: SynthesisRequest, stats: GenerationStats | None = None
    ) -> AsyncIterator[np.ndarray]:
        return self._stream(request, stats if stats is not None else GenerationStats())

    async def _stream(self, request: SynthesisRequest, stats: GenerationStats) -> AsyncIterator[np.ndarray]:
        link = self.link
        if not link.ready:
            raise EngineUnavailable("the engine host is not ready")
        voice = request.voice.key if request.voice is not None else None
        if voice is not None and voice not in link.voices:
            source = self._sources.get(voice)  # the engine host was replaced since it was encoded
            if source is None:
                raise EngineUnavailable("the voice is not encoded on the engine host")
            await self._encode(*source, voice)
        id_ = link.new_id()
        collector = link.open(id_, stats)
        link.send(wire.Generate(id_, link.epoch, request.text, voice, request.cfg_value,
                                request.inference_timesteps, request.max_length, request.seed,
                                request.normalize))  # fmt: skip
        try:
            while (chunk := await collector.take()) is not None:
                yield chunk
        finally:
            link.closed(id_)
            if not collector.done and link.up:
                link.send(wire.Cancel(id_))  # left early: the host frees its place within one step

    async def close(self) -> None:
        await self.link.close()


class RemoteSlot:
    def __init__(self, admission: RemoteAdmission, id_: int):
        self._admission, self._id, self._held = admission, id_, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release(self._id)


class RemoteAdmission:
    """Slots granted by the engine host, so that the limits hold for all workers together; a refusal
    is the same `busy` error as in one process."""

    def __init__(self, link: HostLink, max_concurrent: int, max_queue: int, engine_batch: int = 1,
                 on_reject: Callable[[], None] | None = None):  # fmt: skip
        self.link = link
        self.max_concurrent, self.max_queue, self.engine_batch = max_concurrent, max_queue, engine_batch
        self._on_reject = on_reject
        self.on_arrival: list[Callable[[], None]] = []
        self.held = 0  # this worker's
        self.waiting = 0

    @property
    def generating(self) -> int:
        return max(self.link.generating, self.held)

    @property
    def queued(self) -> int:
        return max(self.link.queued, self.waiting)

    @property
    def load_score(self) -> float:
        capacity = self.max_concurrent + self.max_queue
        return round(min(1.0, (self.generating + self.queued) / capacity), 3)

    async def acquire(self) -> RemoteSlot:
        link = self.link
        id_ = link.new_id()
        for listener in self.on_arrival:
            listener()
        self.waiting += 1
        try:
            reply = await link.call(id_, wire.Acquire(id_, link.epoch))
        except BaseException:
            if link.up:
                link.send(wire.Release(id_))  # the wait was abandoned (cancelled, deadline)
            raise
        finally:
            self.waiting -= 1
        if isinstance(reply, wire.Refused):
            if self._on_reject is not None:
                self._on_reject()
            raise VoxportError("busy", reply.message, code="rate_limit_exceeded", retry_after=1)
        if isinstance(reply, wire.Failed):
            raise wire.raised(reply)
        self.held += 1
        return RemoteSlot(self, id_)

    def _release(self, id_: int) -> None:
        self.held -= 1
        if self.link.up:
            self.link.send(wire.Release(id_))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Any]:
        held = await self.acquire()
        try:
            yield
        finally:
            held.release()
