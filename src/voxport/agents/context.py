"""One context of the speech socket: text in, segments spoken one after another, events out.

Text goes through the context's TextBuffer; each complete segment is queued, and the context's task speaks
the queue in order: it takes an admission slot for the segment (as an HTTP request does; busy: the
context ends with a 429-shaped error), generates it through the service's joiner (cancel race, stalled
engine), and encodes it into the context's one stream. Each segment after the first is generated as a
continuation of the previous one (its text and audio as the prompt) when both fit the model's window.
Each segment event carries the text the engine read (lexicon, dictionaries, language rules applied) and
the caller's own text for it, with its offsets into everything the context was sent. An SSML context
(agents/ssml.py) speaks whole documents, each block in its voice, at its rate, with its pause after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from voxport.agents.buffer import Piece, TextBuffer
from voxport.agents.encoder import LiveEncoder
from voxport.agents.ssml import SsmlBuffer
from voxport.dictionaries import Dictionary, in_force
from voxport.engine.base import Continuation, SynthesisRequest, VoicePrompt
from voxport.errors import invalid
from voxport.protocol import Usage
from voxport.protocol.live import (
    ContextAudioEvent,
    ContextDoneEvent,
    ContextFlushedEvent,
    ContextSegmentEvent,
    ContextWarningsEvent,
)
from voxport.speech import RequestTicket, SpeechService
from voxport.speech.prepare import SpeechPlan
from voxport.tempo import Tempo
from voxport.text import normalize

Emit = Callable[[BaseModel], Awaitable[None]]


@dataclass(frozen=True)
class ContextSetup:
    """What a context's first message settled: the validated plan, the voice's prompt, the design prefix,
    the named dictionaries (over the server's lexicon where they apply, then `pronunciations`), and
    whether its text is SSML."""

    plan: SpeechPlan
    prompt: VoicePrompt | None
    prefix: str
    delay_s: float
    dictionaries: tuple[Dictionary, ...] = ()
    ssml: bool = False


@dataclass(frozen=True)
class _Flush:
    flush_id: str | None


@dataclass(frozen=True)
class _Warnings:
    warnings: tuple[str, ...]


_END = object()


class LiveContext:
    def __init__(self, context_id: str, request_id: str, setup: ContextSetup, speech: SpeechService,
                 emit: Emit, clause_chars: int, max_chars: int):  # fmt: skip
        self.id = context_id
        self.setup = setup
        self.speech = speech
        self.emit = emit
        self.max_chars = max_chars
        language = setup.plan.params.language
        self.buffer = SsmlBuffer(language, clause_chars) if setup.ssml else TextBuffer(language, clause_chars)
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.job = RequestTicket(request_id)  # registered while the context lives: counted, cancellable by id
        self.closing = False
        self.speaking = False
        self.chars = 0
        self.index = 0
        self.samples = 0  # engine-rate samples sent so far: the context's audio clock
        self.previous: Continuation | None = None
        self.voice: str | None = None  # the previous segment's <voice> (None: the context's)
        self.prompts: dict[str, tuple[VoicePrompt, int | None]] = {}  # <voice> names' prompts and seeds
        self._timer: asyncio.TimerHandle | None = None
        self._first_audio = True
        self.task = asyncio.create_task(self._run())

    @property
    def busy(self) -> bool:
        """Text waiting or being spoken (the socket is not idle; an SSML fragment held for its flush is not
        waiting: the client is)."""
        return self.speaking or not self.queue.empty() or (self.buffer.pending and not self.setup.ssml)

    # -- from the client's messages ---------------------------------------------------------------

    def add(self, text: str, delay_ms: int | None = None) -> None:
        if self.chars + len(text) > self.max_chars:
            raise invalid(
                f"A context may be sent at most {self.max_chars} characters of text; this message would "
                f"make it {self.chars + len(text)}.", "text", "context_too_long",
            )  # fmt: skip
        self.chars += len(text)
        if delay_ms is not None:
            self.setup = dataclasses.replace(self.setup, delay_s=delay_ms / 1000)
        self._queue(self.buffer.add(text))
        self._arm()

    def flush(self, flush_id: str | None) -> None:
        self._drain()
        self.queue.put_nowait(_Flush(flush_id))

    def close(self) -> None:
        try:
            self._drain()
        finally:  # closed even when what was held is refused (malformed SSML)
            self.closing = True
            self.queue.put_nowait(_END)

    async def cancel(self) -> None:
        """Stop at once: buffered text is dropped, a generation in progress is abandoned (the engine
        stops within one step). Returns once the context's last audio has been handed out."""
        self._disarm()
        self.job.cancel.set()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    # -- the buffer delay -------------------------------------------------------------------------

    def _drain(self) -> None:
        self._disarm()
        self._queue(self.buffer.drain())

    def _queue(self, pieces: list[Piece]) -> None:
        """Queue complete segments; an SSML document's warnings first, and its voices checked first (an
        unknown one refuses the whole document)."""
        warnings: tuple[str, ...] = ()
        if isinstance(self.buffer, SsmlBuffer):  # taken even when the document is refused
            warnings, self.buffer.warnings = tuple(self.buffer.warnings), []
        for name in {p.voice for p in pieces if p.voice is not None}:
            if self.speech.voices.get(name) is None:
                message = f"Unknown voice '{name}' in <voice name> of the context's SSML."
                raise invalid(f"{message} See GET /v1/audio/voices for the voices available.", "text",
                              "voice_not_found")  # fmt: skip
        if warnings:
            self.queue.put_nowait(_Warnings(warnings))
        for piece in pieces:
            self.queue.put_nowait(piece)

    def _arm(self) -> None:
        self._disarm()
        if self.buffer.pending and not self.setup.ssml:  # a timer does not cut a document
            self._timer = asyncio.get_running_loop().call_later(self.setup.delay_s, self._drain)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the context's task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        plan, rate = self.setup.plan, self.speech.engine.info.sample_rate
        encoder = await asyncio.to_thread(LiveEncoder, plan.response_format, rate, plan.sample_rate)
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    break
                if isinstance(item, _Flush):
                    await self.emit(ContextFlushedEvent(context_id=self.id, flush_id=item.flush_id))
                    continue
                if isinstance(item, _Warnings):
                    await self.emit(ContextWarningsEvent(context_id=self.id, warnings=list(item.warnings)))
                    continue
                assert isinstance(item, Piece)
                self.speaking = True
                await self._speak(item, encoder)
                self.speaking = False
            await self._send(await encoder.finish())
            await self.emit(ContextDoneEvent(context_id=self.id, usage=Usage(**self.job.usage)))
        finally:
            self.speaking = False
            await asyncio.to_thread(encoder.close)

    async def _voice(self, name: str | None) -> tuple[VoicePrompt | None, int | None]:
        """The prompt and seed of a segment's voice: the context's, or an SSML <voice name>'s."""
        plan = self.setup.plan
        if name is None:
            return self.setup.prompt, plan.seed
        if name not in self.prompts:
            voice = self.speech.voices.get(name)
            if voice is None:  # deleted since its document was accepted
                raise invalid(f"Unknown voice '{name}' in <voice name>.", "text", "voice_not_found")
            found = await self.speech.preparer._prompt(voice)
            seed = plan.params.seed if plan.params.seed is not None else found.seed
            self.prompts[name] = (found.prompt, seed)
        return self.prompts[name]

    async def _request(self, piece: Piece) -> tuple[SynthesisRequest, str]:
        """The segment's engine request and the text it reads: the text as shaped for the engine (lexicon,
        dictionaries, language rules), as a continuation of the previous segment when the two fit the
        window and share a voice, else on its own."""
        speech, setup = self.speech, self.setup
        params = setup.plan.params
        entries, _ = in_force(setup.dictionaries, piece.voice or params.voice_id, params.language,
                              params.pronunciations)  # fmt: skip
        spoken, _ = speech.voices.lexicon.apply(piece.text, entries)
        spoken = normalize(spoken, params.language)
        prompt, seed = await self._voice(piece.voice)
        previous = self.previous if self.previous is not None and piece.voice == self.voice else None
        previous = previous if previous is not None and self._fits(previous, spoken, prompt) else None
        text = spoken if previous is not None else setup.prefix + spoken
        request = speech.preparer.request(setup.plan, text, prompt, seed)
        return dataclasses.replace(request, continuation=previous), spoken

    def _fits(self, previous: Continuation, text: str, prompt: VoicePrompt | None) -> bool:
        engine = self.speech.engine
        info = engine.info
        # A continuation replaces the voice's own continuation prompt; a reference voice stays in front.
        positions = prompt.positions if prompt is not None and prompt.mode == "reference" else 0
        positions += previous.patches(info.samples_per_step) + engine.count_tokens(previous.text)
        return info.fits(positions, engine.count_tokens(text), self.setup.plan.max_length)

    async def _speak(self, piece: Piece, encoder: LiveEncoder) -> None:
        request, spoken = await self._request(piece)
        segment = RequestTicket(self.job.request_id, cancel=self.job.cancel, started=time.perf_counter())
        start, raw = self.samples, []
        rate, speed = self.speech.engine.info.sample_rate, self.setup.plan.speed * piece.rate
        tempo = Tempo(rate, speed) if speed != 1.0 else None
        slot = await self.speech.admit()
        try:
            async for chunk in self.speech.joiner.audio([request], segment):
                raw.append(chunk)
                out = await asyncio.to_thread(tempo.push, chunk) if tempo is not None else chunk
                await self._audio(out, encoder)
        finally:
            slot.release()
            self.job.input_tokens += segment.input_tokens
            self.job.output_steps += segment.output_steps
            self.job.samples += segment.samples
            self.job.sample_rate = rate
        if tempo is not None:
            await self._audio(await asyncio.to_thread(tempo.flush), encoder)
        audio = np.concatenate(raw) if raw else np.zeros(0, dtype=np.float32)
        await self.emit(ContextSegmentEvent(
            context_id=self.id, index=self.index, text=spoken, start=round(start / rate, 3),
            end=round(self.samples / rate, 3), continued=request.continuation is not None,
            input_text=piece.input_text, input_start=piece.start, input_end=piece.end,
        ))  # fmt: skip
        self.index += 1
        self.previous = Continuation(request.text, audio) if len(audio) else None
        self.voice = piece.voice
        if piece.pause:  # an SSML <break>: silence after the segment, not part of it, not scaled by speed
            await self._audio(np.zeros(round(piece.pause * rate), dtype=np.float32), encoder)

    async def _audio(self, samples: np.ndarray, encoder: LiveEncoder) -> None:
        self.samples += len(samples)
        await self._send(await encoder.encode(samples))

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        rate = self.setup.plan.sample_rate if self._first_audio else None
        self._first_audio = False
        await self.emit(
            ContextAudioEvent(context_id=self.id, audio=base64.b64encode(data).decode(), sample_rate=rate)
        )
