"""One job segment's work, whichever backend queues it: plan and prepare a job's segments, generate one
at low priority through the live speech service, and join and encode the finished segments once.

Priority: a job takes a generation slot only while nobody waits for one and fewer than
`max_concurrent - reserve` are taken, one segment at a time; so a live request never waits behind a queue
of job segments, at most behind the segments already generating. Jobs run `parallel` at a time: what the
engine generates at once, less the reserve (one at a time on the reference engine).

The final audio is joined from the segments with the live path's cross-fade (`CrossFader`) and encoded
once, so an interrupted and an uninterrupted job with a fixed seed give the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxport.audio import FORMATS, encode, encode_stream, wav_header
from voxport.config import Settings
from voxport.errors import RequestCancelled
from voxport.files import atomic_writer
from voxport.protocol import SpeechCreateParams
from voxport.speech import SpeechJob, SpeechService
from voxport.speech.joiner import CrossFader
from voxport.speech.prepare import PreparedSpeech
from voxport.text import segment

_POLL_S = 0.05  # how often a segment waiting for headroom looks again

SegmentReader = Callable[[int], Awaitable[np.ndarray]]


class SegmentWork:
    def __init__(self, settings: Settings, speech: SpeechService):
        self.settings = settings
        self.speech = speech
        self.waiting = 0  # segments waiting for headroom

    # -- priority ---------------------------------------------------------------------------------

    @property
    def reserve(self) -> int:
        """Slots kept for live requests."""
        return max(1, self.speech.admission.max_concurrent // 4)

    @property
    def parallel(self) -> int:
        """Segments generating at once."""
        width = min(self.speech.admission.max_concurrent, self.speech.engine.capacity)
        return max(1, width - max(1, width // 4)) if width > 1 else 1

    def headroom(self) -> bool:
        a = self.speech.admission
        free = a.queued == 0 and a.generating < max(1, a.max_concurrent - self.reserve)
        return free and self.speech.accepts_requests

    def free_slots(self) -> int:
        """Segments that could start generating now, less those already waiting for a slot."""
        if not self.speech.accepts_requests:
            return 0
        a = self.speech.admission
        free = max(1, a.max_concurrent - self.reserve) - a.generating - a.queued - self.waiting
        return max(0, free)

    @contextlib.asynccontextmanager
    async def low_priority_slot(self, cancel: asyncio.Event) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            while not self.headroom():
                if cancel.is_set():
                    raise RequestCancelled
                await asyncio.sleep(_POLL_S)
        finally:
            self.waiting -= 1
        async with self.speech.admission.slot():
            yield

    # -- segments ---------------------------------------------------------------------------------

    def plan(self, text: str) -> list[str]:
        """The job's segments: sentences packed up to the segment cap, as live long text is split."""
        cap = min(self.settings.segment_max_chars, self.settings.max_input_chars)
        return segment(text, cap, pack=True) or [text]

    async def prepare(self, params: SpeechCreateParams, text: str) -> PreparedSpeech:
        """One segment as a live request for that text would be prepared (voice, limits, prefix)."""
        update = {"input": text, "stream": False, "stream_format": "audio"}
        preparer = self.speech.preparer
        return await preparer.complete(await preparer.plan(params.model_copy(update=update)))

    async def generate(
        self, job_id: str, index: int, params: SpeechCreateParams, text: str, cancel: asyncio.Event
    ) -> np.ndarray:
        """Segment `index` of a job (float32, the engine's rate), generated at low priority."""
        prepared = await self.prepare(params, text)
        ticket = SpeechJob(f"{job_id}/{index}", cancel=cancel)
        async with self.low_priority_slot(cancel):
            chunks = [chunk async for chunk in self.speech.joiner.audio(prepared.segments, ticket)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    # -- the final audio --------------------------------------------------------------------------

    async def _joined(self, read: SegmentReader, total: int, rate: int) -> AsyncIterator[np.ndarray]:
        fader = CrossFader(rate, total)
        for index in range(total):
            joined = fader.push(index, await read(index), True)
            if len(joined):
                yield joined
        tail = fader.flush()
        if len(tail):
            yield tail

    async def encode(
        self, path: Path, prepared: PreparedSpeech, read: SegmentReader, total: int, rate: int
    ) -> dict[str, Any]:
        """Join the segments and encode them once into `path` (written atomically): the job's result."""
        fmt, out_rate, speed = prepared.response_format, prepared.sample_rate, prepared.speed
        samples = 0

        async def counted() -> AsyncIterator[np.ndarray]:
            nonlocal samples
            async for chunk in self._joined(read, total, rate):
                samples += len(chunk)
                yield chunk

        writer = atomic_writer(path)
        handle = await asyncio.to_thread(writer.__enter__)
        try:
            if fmt == "flac":  # its header needs the whole signal (see audio.encode)
                whole = [chunk async for chunk in counted()]
                audio = np.concatenate(whole) if whole else np.zeros(0, dtype=np.float32)
                data = await asyncio.to_thread(encode, audio, rate, fmt, out_rate, speed)
                await asyncio.to_thread(handle.write, data)
            else:
                async for data in encode_stream(counted(), rate, fmt, out_rate, speed):
                    await asyncio.to_thread(handle.write, data)
            if fmt == "wav":  # the streamed header said "length unknown": the file knows it now

                def fix_header() -> None:
                    size = handle.seek(0, 2)
                    handle.seek(0)
                    handle.write(wav_header(out_rate, size - 44))

                await asyncio.to_thread(fix_header)
        except BaseException as exc:
            await asyncio.to_thread(writer.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await asyncio.to_thread(writer.__exit__, None, None, None)
        size = (await asyncio.to_thread(path.stat)).st_size
        return {
            "content_type": FORMATS[fmt].content_type,
            "bytes": size,
            "duration_seconds": round(samples / rate / speed, 3),
            "sample_rate": out_rate,
        }
