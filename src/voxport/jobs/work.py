"""One job segment's work, whichever backend queues it: plan and prepare a job's segments, generate one
at low priority through the live speech service (`priority.JobPriority`), and join and encode the finished
segments once.

The final audio is joined from the segments with the live path's cross-fade (`CrossFader`) and encoded
once, so an interrupted and an uninterrupted job with a fixed seed give the same bytes. Segments are at
`speed` already (applied per segment, as live speech is); their times in the joined audio are the job's
captions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxport.audio import FORMATS, encode, encode_stream, wav_header
from voxport.config import Settings
from voxport.files import atomic_writer
from voxport.jobs.priority import JobPriority
from voxport.protocol import SpeechCreateParams
from voxport.speech import SpeechService
from voxport.speech.joiner import CrossFader
from voxport.speech.loudness import held
from voxport.speech.prepare import PreparedSpeech
from voxport.speech.ssml import fragments
from voxport.speech.timings import Span, Timeline
from voxport.text import normalize, segment

SegmentReader = Callable[[int], Awaitable[np.ndarray]]


class SegmentWork:
    def __init__(
        self, settings: Settings, speech: SpeechService, on_preempted: Callable[[], None] = lambda: None
    ):
        self.settings = settings
        self.speech = speech
        self.priority = JobPriority(speech, on_preempted)

    @property
    def parallel(self) -> int:
        """Segments generating at once."""
        return self.priority.parallel

    def free_slots(self) -> int:
        """Segments that could start generating now, less those already waiting for a slot."""
        return self.priority.free_slots()

    # -- segments ---------------------------------------------------------------------------------

    def plan(self, text: str, language: str | None = None, input_format: str = "text") -> list[str]:
        """The job's segments: sentences packed up to the segment cap, as live long text is split, by the
        rules of its `language`. An SSML document: one document per block (speech/ssml.py `fragments`)."""
        if input_format == "ssml":
            return fragments(text, language)
        cap = min(self.settings.segment_max_chars, self.settings.max_input_chars)
        language = language or self.settings.default_language  # as the preparer fills it in
        return segment(normalize(text, language), cap, pack=True, language=language) or [text]

    async def prepare(self, params: SpeechCreateParams, text: str, tenant: str = "") -> PreparedSpeech:
        """One segment as a live request for that text would be prepared (voice, limits, prefix); `tenant`:
        whose voices it may use (checked when the job is submitted)."""
        update = {"input": text, "stream": False, "stream_format": "audio"}
        preparer = self.speech.preparer
        return await preparer.complete(await preparer.plan(params.model_copy(update=update), tenant=tenant))

    async def generate(
        self, job_id: str, index: int, params: SpeechCreateParams, text: str, cancel: asyncio.Event
    ) -> np.ndarray:
        """Segment `index` of a job (float32, the engine's rate, at speed), generated at low priority."""
        prepared = await self.prepare(params, text)
        return await self.priority.generate(prepared, f"{job_id}/{index}", cancel)

    # -- the final audio --------------------------------------------------------------------------

    async def _joined(
        self, read: SegmentReader, total: int, rate: int, times: Timeline
    ) -> AsyncIterator[np.ndarray]:
        fader = CrossFader(rate, total)
        for index in range(total):
            audio = await read(index)
            joined = fader.push(index, audio, True)
            times.add(index, fader.starts[-1], len(audio))
            if len(joined):
                yield joined
        tail = fader.flush()
        if len(tail):
            yield tail

    async def encode(
        self, path: Path, prepared: PreparedSpeech, read: SegmentReader, total: int, rate: int
    ) -> dict[str, Any]:
        """Join the segments and encode them once into `path` (written atomically): the job's result."""
        fmt, out_rate = prepared.response_format, prepared.sample_rate  # segments are at speed already
        samples, timeline = 0, Timeline([Span("")] * total, rate)

        async def counted() -> AsyncIterator[np.ndarray]:
            nonlocal samples
            # `loudness`: as for a stream, one gain from the voice's level, held over the whole job.
            gain = await self.speech.levels.gain(prepared.voice, prepared.loudness, out_rate)
            async for chunk in held(self._joined(read, total, rate, timeline), gain):
                samples += len(chunk)
                yield chunk

        writer = atomic_writer(path)
        handle = await asyncio.to_thread(writer.__enter__)
        try:
            if fmt == "flac":  # its header needs the whole signal (see audio.encode)
                whole = [chunk async for chunk in counted()]
                audio = np.concatenate(whole) if whole else np.zeros(0, dtype=np.float32)
                data = await asyncio.to_thread(encode, audio, rate, fmt, out_rate)
                await asyncio.to_thread(handle.write, data)
            else:
                async for data in encode_stream(counted(), rate, fmt, out_rate):
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
            "duration_seconds": round(samples / rate, 3),
            "sample_rate": out_rate,
            "timings": [[s["start"], s["end"]] for s in timeline.segments()],  # for jobs/captions.py
        }
