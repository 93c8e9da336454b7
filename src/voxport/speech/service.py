"""The speech service: one call, `create`, from request parameters to a result or a stream.

    plan (limits, cache key) -> cache lookup (HIT: bytes out) -> complete (voice prompt, segments)
    -> engine check -> admission
    -> joiner (engine, cancel race, joins) -> encoder -> cache store

A buffered request comes back as a `SpeechResult`; a streamed one as a `SpeechStream` that owns its
job's registration, its admission slot and its cleanup (`aclose`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from voxport.audio import WAV_HEADER_BYTES, encode, encode_stream, wav_header
from voxport.cache import AudioCache, cache_key
from voxport.config import Settings
from voxport.engine.base import Engine, EngineUnavailable
from voxport.errors import RequestCancelled, VoxportError, unavailable
from voxport.metrics import Metrics
from voxport.protocol import SpeechCreateParams, VoiceUpload
from voxport.speech.admission import Admission, Slot
from voxport.speech.joiner import Joiner
from voxport.speech.loudness import VoiceLevels, held, normalized
from voxport.speech.prepare import PreparedSpeech, Preparer
from voxport.speech.results import SpeechResult, SpeechStream
from voxport.speech.stall import EngineWatch
from voxport.speech.tickets import RequestTicket, TicketRegistry, with_deadline
from voxport.speech.timings import Timeline
from voxport.voices import VoiceRegistry

# A request that waited on an identical one tries itself when that one failed on its own account.
_NOT_OURS = frozenset({"cancelled", "internal", "unavailable", "timeout"})


class SpeechService:
    def __init__(self, settings: Settings, engine: Engine, voices: VoiceRegistry, cache: AudioCache,
                 metrics: Metrics, admission: Admission, tickets: TicketRegistry,
                 weights_fingerprint: Callable[[], str] = str):  # fmt: skip
        self.settings = settings
        self.engine = engine
        self.voices = voices
        self.cache = cache
        self.metrics = metrics
        self.admission = admission
        self.tickets = tickets
        self.watch = EngineWatch(settings.engine_stall_s, engine)
        self.preparer = Preparer(settings, engine, voices, weights_fingerprint)
        self.joiner = Joiner(engine, self.watch, metrics)
        self.levels = VoiceLevels(engine, voices, settings.max_length)
        # Set once the server is stopping (SIGTERM with a drain period): requests are still served, but
        # /ready fails so that a load balancer sends new ones elsewhere.
        self.draining = False
        # Set while --warm-voices makes the designed voices' clips after start: /ready waits for it.
        self.warming = False
        # Cancels a request that another process serves (with --workers: voxport/topology); whether one did.
        self.elsewhere: Callable[[str, str], Awaitable[bool]] = _nowhere

    @property
    def accepts_requests(self) -> bool:
        """Whether new work should come here: /ready, the job runner and load balancers follow it."""
        return (self.engine.ready and not self.watch.stalled and self.voices.loaded and not self.draining
                and not self.warming)  # fmt: skip

    async def cancel(self, request_id: str, viewer: str = "") -> None:
        if not self.tickets.cancel(request_id, viewer) and not await self.elsewhere(request_id, viewer):
            raise VoxportError("not_found", f"No request '{request_id}' is in flight.",
                               param="request_id", code="request_not_found")  # fmt: skip

    async def create(
        self,
        params: SpeechCreateParams,
        job: RequestTicket,
        *,
        stream: bool = False,
        upload: VoiceUpload | None = None,
        no_cache: bool = False,
    ) -> SpeechResult | SpeechStream:
        """Serve one request. `job` is the request's ticket: its id, arrival time and cancel switch."""
        plan = await self.preparer.plan(params, stream=stream, upload=upload, tenant=job.tenant)
        job.voice_kind, job.chars = plan.voice_kind, plan.chars
        job.warnings = plan.script.warnings if plan.script else ()
        state = self._cache_state(no_cache, plan.voice_kind)
        # Each tenant's entries are its own (no X-Cache oracle), unless the cache is shared across keys.
        scope = {"tenant": job.cache_scope} if job.cache_scope else {}
        key = cache_key(plan.cache_fields | scope) if state == "USE" else None
        if self.settings.log_request_text:
            job.text = params.input or ""
        self.tickets.open(job)
        try:
            hit = await self.cache.get(key) if key is not None else None
            if hit is not None:  # no prompt, no tokenizer, no engine
                result = self._hit(job, hit.payload, hit.meta)
                if not plan.sse:
                    self.tickets.close(job)
                    return result
                timeline = Timeline.fixed(result.segments or [])
                return SpeechStream(
                    plan, job, _once(result.audio), lambda: _closed(self.tickets, job), timeline
                )
            prepared = await self.preparer.complete(plan)
            if self.settings.log_request_text:
                job.text = " ".join(s.text for s in prepared.segments)
            if key is None:
                self._looked_up(job, state)
            if prepared.stream:
                return await self._stream(prepared, job, key)
        except BaseException:
            self.tickets.close(job)
            raise
        try:
            return await self._respond(prepared, job, key)
        finally:
            self.tickets.close(job)

    # -- the parts --------------------------------------------------------------------------------

    def _cache_state(self, no_cache: bool, voice_kind: str) -> str:
        """USE, or why the cache is not used for this request (the X-Cache value)."""
        if voice_kind == "adhoc":
            return "ADHOC"  # an uploaded voice is used once and never kept, its audio neither
        if not self.cache.enabled:
            return "DISABLED"
        return "BYPASS" if no_cache else "USE"

    async def admit(self) -> Slot:
        """A generation slot, through the same admission as every request (busy: refused at once)."""
        return await self._admit()

    async def _admit(self) -> Slot:
        if not self.engine.ready:
            raise unavailable("The speech engine is not available.")
        if self.watch.stalled:
            raise unavailable("The speech engine has stopped answering.")
        return await self.admission.acquire()

    async def _synthesize(self, prepared: PreparedSpeech, job: RequestTicket) -> SpeechResult:
        """The whole utterance, encoded: admitted, generated, encoded, within the deadline."""

        async def run() -> SpeechResult:
            slot = await self._admit()
            rate = self.engine.info.sample_rate
            timeline = Timeline(prepared.spans, rate)
            audio_of = self.joiner.audio(prepared.segments, job, timeline, prepared.speed)
            try:
                chunks = [chunk async for chunk in audio_of]
            finally:
                slot.release()
            audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
            audio = await normalized(audio, rate, prepared.loudness, prepared.sample_rate)
            data = await asyncio.to_thread(
                encode, audio, rate, prepared.response_format, prepared.sample_rate
            )
            duration = round(len(audio) / rate, 3)  # already at speed (voxport.tempo)
            timed = timeline.segments() if prepared.timestamps else None
            return SpeechResult(data, prepared.content_type, prepared.sample_rate, duration, job.usage, timed)

        return await with_deadline(run(), self.settings.request_timeout_s)

    def _looked_up(self, job: RequestTicket, state: str) -> None:
        job.cache = state
        self.metrics.cache_lookups.labels(state).inc()

    def _hit(self, job: RequestTicket, payload: bytes, meta: dict[str, Any]) -> SpeechResult:
        self._looked_up(job, "HIT")
        result = SpeechResult.from_cache(payload, meta)
        # The audio served, for the access line's audio_s (counted at the engine's rate, as on a miss).
        job.sample_rate = self.engine.info.sample_rate
        job.samples = round(result.duration * job.sample_rate)
        job.input_tokens = result.usage["input_tokens"]
        job.output_steps = result.usage["output_tokens"]
        return result

    async def _respond(self, prepared: PreparedSpeech, job: RequestTicket, key: str | None) -> SpeechResult:
        """A buffered response on a miss: one synthesis, shared by identical requests that arrive while it
        runs (they get its bytes as a hit)."""
        if key is None:
            return await self._synthesize(prepared, job)

        async def produce() -> SpeechResult:
            result = await self._synthesize(prepared, job)
            await self.cache.put(key, result.audio, result.meta())
            return result

        try:
            result, produced = await self.cache.single_flight(key, produce)
        except (VoxportError, EngineUnavailable) as exc:
            theirs = isinstance(exc, EngineUnavailable) or exc.kind in _NOT_OURS
            if not theirs or job.cancel.is_set():
                raise  # the same request would fail the same way, or this one was cancelled
            self._looked_up(job, "MISS")
            return await self._synthesize(prepared, job)
        if not produced:  # served by an identical request that was already synthesising
            return self._hit(job, result.audio, result.meta())
        self._looked_up(job, "MISS")
        return result

    async def _stream(self, prepared: PreparedSpeech, job: RequestTicket, key: str | None) -> SpeechStream:
        """The first audio chunk is awaited before this returns, so that a request that fails early
        still gets a proper error before any byte is sent. The slot is held until the stream ends."""
        if key is not None:
            self._looked_up(job, "MISS")
        slot = await self._admit()
        timeline = Timeline(prepared.spans, self.engine.info.sample_rate)
        audio = self.joiner.audio(prepared.segments, job, timeline, prepared.speed)
        try:
            # Held for the whole stream. A voice's first measurement is engine work: in the slot, timed.
            measured = self.levels.gain(prepared.voice, prepared.loudness, prepared.sample_rate)
            gain = await with_deadline(measured, self.settings.request_timeout_s)
            first = await with_deadline(_first(audio), self.settings.request_timeout_s)
        except BaseException:
            await audio.aclose()
            slot.release()
            raise

        async def close() -> None:
            slot.release()
            self.tickets.close(job)

        chunks = self._encoded(prepared, job, held(_resume(first, audio), gain), slot, key, timeline)
        return SpeechStream(prepared, job, chunks, close, timeline)

    async def _encoded(self, prepared: PreparedSpeech, job: RequestTicket, audio: AsyncIterator[np.ndarray],
                       slot: Slot, key: str | None, timeline: Timeline) -> AsyncIterator[bytes]:  # fmt: skip
        rate = self.engine.info.sample_rate
        parts: list[bytes] = []
        try:
            async for data in encode_stream(audio, rate, prepared.response_format, prepared.sample_rate):
                parts.append(data)
                yield data
        except (asyncio.CancelledError, GeneratorExit):
            job.cancel.set()  # the client went away mid-stream
            raise
        finally:
            slot.release()
        if key is not None and not job.cancel.is_set():
            payload = b"".join(parts)
            if prepared.response_format == "wav":  # kept with its real sizes, so a hit is a plain file
                payload = (
                    wav_header(prepared.sample_rate, len(payload) - WAV_HEADER_BYTES)
                    + payload[WAV_HEADER_BYTES:]
                )
            duration = round(job.samples / rate, 3)
            segments = timeline.segments() if prepared.timestamps else None
            meta = SpeechResult(payload, prepared.content_type, prepared.sample_rate, duration, job.usage,
                                segments)  # fmt: skip
            await self.cache.put(key, payload, meta.meta())


async def _first(audio: AsyncIterator[np.ndarray]) -> np.ndarray | None:
    try:
        return await audio.__anext__()
    except StopAsyncIteration:
        return None


async def _resume(first: np.ndarray | None, audio: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
    """The first chunk, then the rest; a cancel ends the audio cleanly (the encoded file stays valid)."""
    try:
        if first is not None:
            yield first
            async for chunk in audio:
                yield chunk
    except RequestCancelled:
        pass
    finally:
        await audio.aclose()  # type: ignore[attr-defined]


async def _nowhere(_request_id: str, _viewer: str) -> bool:
    return False


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    yield payload


async def _closed(tickets: TicketRegistry, job: RequestTicket) -> None:
    tickets.close(job)
