"""From segments to one stream of audio: each segment through the engine, raced against the request's
cancel switch and against an engine that stops answering, consecutive segments cross-faded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np

from voxport.engine.base import Engine, GenerationStats, SynthesisRequest
from voxport.errors import RequestCancelled
from voxport.metrics import Metrics
from voxport.speech.stall import EngineWatch
from voxport.speech.tickets import RequestTicket
from voxport.speech.timings import Timeline
from voxport.tempo import Tempo

# Consecutive segments are cross-faded over this long to join without a click.
CROSSFADE_SECONDS = 0.01


class CrossFader:
    """Joins consecutive segments' audio without a click: the last CROSSFADE_SECONDS of every segment but
    the last are held back and faded into the start of the next. Fed chunk by chunk (live synthesis) or
    a whole segment at a time (jobs, from their segment files): the joins are the same."""

    def __init__(self, rate: int, segments: int):
        self.overlap = max(1, int(rate * CROSSFADE_SECONDS))
        self.last = segments - 1
        self.held = np.zeros(0, dtype=np.float32)
        self.emitted = 0  # samples returned so far
        self.starts: list[int] = []  # where each segment's first sample lands in the joined audio

    def push(self, index: int, chunk: np.ndarray, fresh: bool) -> np.ndarray:
        """The audio that is final once `chunk` (of segment `index`; `fresh`: its first) is known."""
        held = self.held
        if fresh:
            self.starts.append(self.emitted + len(held) - min(len(held), len(chunk)))
        if fresh and len(held):
            n = min(len(held), len(chunk))
            ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
            chunk = chunk.copy()
            chunk[:n] = held[len(held) - n :] * (1.0 - ramp) + chunk[:n] * ramp
            held = held[: len(held) - n]
        joined = np.concatenate([held, chunk]) if len(held) else chunk
        if index < self.last:
            joined, self.held = joined[: -self.overlap], joined[-self.overlap :]
        else:
            self.held = held[:0]
        self.emitted += len(joined)
        return joined

    def flush(self) -> np.ndarray:
        """What is still held back once every segment has been pushed."""
        held, self.held = self.held, self.held[:0]
        self.emitted += len(held)
        return held


class Joiner:
    def __init__(self, engine: Engine, watch: EngineWatch, metrics: Metrics):
        self.engine = engine
        self.watch = watch
        self.metrics = metrics

    async def _until_cancelled(
        self, chunks: AsyncIterator[np.ndarray], cancel: asyncio.Event
    ) -> AsyncIterator[np.ndarray]:
        """Pass the engine's chunks through until `cancel` is set; then abandon them at once (the
        engine stops within one step) and raise RequestCancelled. An engine that stops moving while
        work waits on it turns into `unavailable` (see EngineWatch)."""
        waiter = asyncio.ensure_future(cancel.wait())
        step: asyncio.Future[np.ndarray] | None = None
        try:
            while True:
                step = asyncio.ensure_future(chunks.__anext__())
                with self.watch.waiting_for_engine():
                    await self.watch.wait(step, waiter)
                if not step.done():
                    raise RequestCancelled
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    return
                step = None
                self.watch.progress()
                yield chunk
        finally:
            # Whatever ends this (cancel, our own consumer leaving, an error), the pending step is
            # cancelled first: the engine's iterator cannot be closed while a step is running in it.
            waiter.cancel()
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _stretched(self, chunks: AsyncIterator[np.ndarray], speed: float) -> AsyncIterator[np.ndarray]:
        """One segment's audio at `speed` (voxport.tempo: segment by segment, so boundaries are exact)."""
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            if speed == 1.0:
                async for chunk in chunks:
                    yield chunk
                return
            tempo = Tempo(self.engine.info.sample_rate, speed)
            async for chunk in chunks:
                out = await asyncio.to_thread(tempo.push, chunk)
                if len(out):
                    yield out
            out = await asyncio.to_thread(tempo.flush)
            if len(out):
                yield out

    async def audio(
        self, segments: Sequence[SynthesisRequest], job: RequestTicket, timeline: Timeline | None = None,
        speed: float = 1.0,
    ) -> AsyncIterator[np.ndarray]:  # fmt: skip
        """The joined float32 audio of every segment, at the engine's rate and `speed`, as it is generated.

        The last few milliseconds of each segment are held back and cross-faded into the next one. With
        a `timeline`, each segment's place is noted in it, and its spans' silence follows each segment.
        """
        rate = self.engine.info.sample_rate
        job.sample_rate = rate
        fader = CrossFader(rate, len(segments))
        pads = [span.pad for span in timeline.spans] if timeline else [0] * len(segments)
        speeds = [speed * span.speed for span in timeline.spans] if timeline else [speed] * len(segments)
        generation_started = time.perf_counter()
        try:
            for index, request in enumerate(segments):
                stats = GenerationStats()
                fresh = True
                chunks = self._until_cancelled(self.engine.generate(request, stats), job.cancel)
                async for chunk in self._stretched(chunks, speeds[index]):
                    joined = fader.push(index, chunk, fresh)
                    if timeline is not None:
                        if fresh:
                            timeline.begin(index, fader.starts[-1])
                        timeline.grew(index, len(chunk))
                    fresh = False
                    if len(joined):
                        yield self._count(job, joined)
                if timeline is not None:
                    timeline.finish(index)
                if pads[index]:  # a pause after a dialogue turn or SSML block: not part of the segment
                    joined = fader.push(index, np.zeros(pads[index] + fader.overlap, np.float32), fresh)
                    if len(joined):
                        yield self._count(job, joined)
                job.input_tokens += stats.input_tokens
                job.output_steps += stats.steps
            tail = fader.flush()
            if len(tail):
                yield self._count(job, tail)
        finally:
            seconds = job.samples / rate
            if seconds > 0:
                self.metrics.audio_seconds.inc(seconds)
                if not job.cancel.is_set():
                    self.metrics.rtf.observe((time.perf_counter() - generation_started) / seconds)

    def _count(self, job: RequestTicket, chunk: np.ndarray) -> np.ndarray:
        if job.first_audio is None:
            job.first_audio = time.perf_counter() - job.started
            self.metrics.first_audio_seconds.observe(job.first_audio)
        job.samples += len(chunk)
        return chunk
