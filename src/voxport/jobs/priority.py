"""Job segments yield to live requests.

A job segment takes a generation slot only while nobody waits for one and fewer than
`max_concurrent - reserve` are taken, and only when the engine has room beside the live requests it is
serving. Jobs run `parallel` at a time: what the engine generates at once, less the reserve (one at a
time on the reference engine, which generates one sequence at a time).

On an engine that is full of job segments (the reference engine, with one), a live request that arrives
would wait for the segment in progress to finish: seconds of audio generated on a CPU. So the segment is
pre-empted instead: its generation is cancelled (the engine stops within one step), what it made is
dropped, and the segment is generated again, whole, once the live requests are served. The cost is the
dropped partial segment; a fixed seed gives the same audio on the retry, so a job's bytes do not depend
on how often it was pre-empted. A batching engine has room for live requests beside the jobs and never
pre-empts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np

from voxport.errors import RequestCancelled
from voxport.speech import RequestTicket, SpeechService
from voxport.speech.prepare import PreparedSpeech
from voxport.speech.timings import Timeline

_POLL_S = 0.05  # how often a waiting or generating job segment looks at the live load again


class JobPriority:
    def __init__(self, speech: SpeechService, on_preempted: Callable[[], None] = lambda: None):
        self.speech = speech
        self.generating = 0  # job segments holding a generation slot now
        self.waiting = 0  # job segments waiting for headroom
        self.preempted = 0  # segment generations abandoned for a live request
        self._on_preempted = on_preempted
        self._watching: set[asyncio.Event] = set()  # one per segment generating: woken by each arrival
        speech.admission.on_arrival.append(self._arrived)

    def _arrived(self) -> None:
        for woken in self._watching:
            woken.set()

    @property
    def reserve(self) -> int:
        """Slots kept for live requests."""
        return max(1, self.speech.admission.max_concurrent // 4)

    @property
    def parallel(self) -> int:
        """Jobs generating at once."""
        width = min(self.speech.admission.max_concurrent, self.speech.engine.capacity)
        return max(1, width - max(1, width // 4)) if width > 1 else 1

    @property
    def live(self) -> int:
        """Live requests generating or waiting for a slot (job segments hold slots too)."""
        a = self.speech.admission
        return max(0, a.generating - self.generating) + a.queued

    def _engine_full(self) -> bool:
        return self.live + self.generating > self.speech.engine.capacity

    def _headroom(self) -> bool:
        a = self.speech.admission
        free = a.queued == 0 and a.generating < max(1, a.max_concurrent - self.reserve)
        # Beside live requests, only where the engine has a place left for one more sequence.
        room = not self.live or self.live + self.generating < self.speech.engine.capacity
        return free and room and self.speech.accepts_requests

    def free_slots(self) -> int:
        """Segments that could start generating now, less those already waiting for a slot (a queue
        consumer takes no more work than this)."""
        if not self.speech.accepts_requests or (
            self.live and self.live + self.generating >= self.speech.engine.capacity
        ):
            return 0
        a = self.speech.admission
        return max(0, max(1, a.max_concurrent - self.reserve) - a.generating - a.queued - self.waiting)

    @contextlib.asynccontextmanager
    async def _slot(self, cancel: asyncio.Event) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            while not self._headroom():
                if cancel.is_set():
                    raise RequestCancelled
                await asyncio.sleep(_POLL_S)
        finally:
            self.waiting -= 1
        async with self.speech.admission.slot():
            self.generating += 1
            try:
                yield
            finally:
                self.generating -= 1

    async def _preempt_when_crowded(self, cancel: asyncio.Event, attempt: asyncio.Event) -> None:
        woken = asyncio.Event()
        self._watching.add(woken)
        try:
            while not cancel.is_set():
                if self.live and self._engine_full():
                    self.preempted += 1
                    self._on_preempted()
                    break
                woken.clear()
                # Woken by a request's arrival; the timeout catches the rest (a cancel, the engine's width).
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), _POLL_S)
        finally:
            self._watching.discard(woken)
        attempt.set()

    async def generate(self, prepared: PreparedSpeech, name: str, cancel: asyncio.Event) -> np.ndarray:
        """One job segment's joined audio, generated at low priority, pre-empted (and retried) while live
        requests need the engine. Raises RequestCancelled when the job is cancelled."""
        while True:
            attempt = asyncio.Event()
            ticket = RequestTicket(name, cancel=attempt)
            async with self._slot(cancel):
                watcher = asyncio.create_task(self._preempt_when_crowded(cancel, attempt))
                try:
                    # The spans' pauses and speeds (an SSML segment's) apply as they do live.
                    timeline = Timeline(prepared.spans, self.speech.engine.info.sample_rate)
                    audio = self.speech.joiner.audio(prepared.segments, ticket, timeline, prepared.speed)
                    chunks = [chunk async for chunk in audio]
                except RequestCancelled:
                    chunks = None
                finally:
                    watcher.cancel()
            if cancel.is_set():
                raise RequestCancelled
            if chunks is not None:  # finished (even if pre-empted in its last step: nothing to drop)
                return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
            await asyncio.sleep(0)
