"""The speech service: request → voice → cache → admission → engine → joined audio → encoder.

Nothing HTTP-specific lives here beyond raising `APIError`s for the API layer to render.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxport.api.errors import APIError, invalid
from voxport.api.protocol import SpeechCreateParams
from voxport.audio import FORMATS, encode, encode_stream, ffmpeg_available, needs_ffmpeg
from voxport.cache import AudioCache, cache_key
from voxport.config import Settings
from voxport.engine.base import (
    Engine,
    EngineInputError,
    EngineUnavailable,
    GenerationStats,
    SynthesisRequest,
    VoicePrompt,
    steps_cap,
)
from voxport.metrics import Metrics
from voxport.text import segment
from voxport.voices import VoiceRegistry, design_prefix

log = logging.getLogger("voxport.speech")

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

    def push(self, index: int, chunk: np.ndarray, fresh: bool) -> np.ndarray:
        """The audio that is final once `chunk` (of segment `index`; `fresh`: its first) is known."""
        held = self.held
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
        return joined

    def flush(self) -> np.ndarray:
        """What is still held back once every segment has been pushed."""
        held, self.held = self.held, self.held[:0]
        return held


class RequestCancelled(Exception):
    """The request was cancelled (client gone, or POST /v1/audio/speech/cancel)."""


def unavailable(message: str) -> APIError:
    return APIError(
        503, message, type="server_error", code="engine_unavailable", headers={"Retry-After": "5"}
    )


@dataclass(frozen=True)
class PreparedSpeech:
    """A validated request: the segments to synthesise in order, how to encode them, and its cache key."""

    segments: tuple[SynthesisRequest, ...]
    response_format: str
    sample_rate: int
    speed: float
    stream: bool
    sse: bool
    voice_kind: str
    chars: int
    cache_fields: dict[str, Any]


@dataclass
class SpeechJob:
    """One request in flight: its cancel switch, and what it has produced so far."""

    request_id: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.perf_counter)
    first_audio: float | None = None  # seconds from start to the first audio chunk
    samples: int = 0  # engine-rate samples produced
    sample_rate: int = 0
    input_tokens: int = 0
    output_steps: int = 0
    cache: str = "-"
    voice_kind: str = "-"
    chars: int = 0
    text: str = ""  # only filled in when log_request_text is on

    @property
    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_steps,
            "total_tokens": self.input_tokens + self.output_steps,
        }

    def log_fields(self) -> dict[str, Any]:
        """What the request's single log line says about the speech (never its text)."""
        return {
            "voice_kind": self.voice_kind,
            "chars": self.chars,
            "audio_s": round(self.samples / self.sample_rate, 3) if self.sample_rate else 0,
            "first_audio_ms": round(self.first_audio * 1000) if self.first_audio is not None else "-",
            "cache": self.cache,
            "cancelled": self.cancel.is_set(),
        }


@dataclass(frozen=True)
class SpeechResult:
    audio: bytes
    content_type: str
    sample_rate: int
    duration: float  # seconds of audio in `audio`, after speed
    usage: dict[str, int]

    def meta(self) -> dict[str, Any]:
        return {"content_type": self.content_type, "sample_rate": self.sample_rate, "duration": self.duration,
                "usage": self.usage}  # fmt: skip

    @classmethod
    def from_cache(cls, payload: bytes, meta: dict[str, Any]) -> SpeechResult:
        return cls(payload, meta["content_type"], meta["sample_rate"], meta["duration"], meta["usage"])


class EngineWatch:
    """Notices an engine that stops answering: work is waiting and nothing has moved for too long."""

    def __init__(self, stall_after: float):
        self.stall_after = stall_after
        self.waiting = 0
        self.last_progress = time.monotonic()
        self.stalled = False

    def progress(self) -> None:
        self.last_progress = time.monotonic()
        self.stalled = False

    @contextlib.contextmanager
    def waiting_for_engine(self):
        if self.waiting == 0:  # the clock starts when work starts waiting, not at the last chunk ever
            self.last_progress = time.monotonic()
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    def check(self) -> None:
        if time.monotonic() - self.last_progress > self.stall_after:
            self.stalled = True
            raise unavailable(f"The speech engine has not answered for {self.stall_after:.0f}s.")


class SpeechService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        voices: VoiceRegistry,
        cache: AudioCache,
        metrics: Metrics,
    ):
        self.settings = settings
        self.engine = engine
        self.voices = voices
        self.cache = cache
        self.metrics = metrics
        self.weights_fingerprint = ""  # set once the checkpoint has been fingerprinted
        self.active: dict[str, list[SpeechJob]] = {}
        self.cancelled_total = 0
        self.watch = EngineWatch(settings.engine_stall_s)
        # Sized from the engine (what it runs at once) unless the settings say otherwise.
        self.max_concurrent, self.max_queue = settings.admission(engine.capacity)
        self._slots = asyncio.Semaphore(self.max_concurrent)
        self.generating = 0
        self.queued = 0

    @property
    def in_flight(self) -> int:
        return sum(len(jobs) for jobs in self.active.values())

    @property
    def accepts_requests(self) -> bool:
        return self.engine.ready and not self.watch.stalled and self.voices.loaded

    @property
    def load_score(self) -> float:
        """0 when idle, 1 when every slot and queue place is taken: for an upstream router."""
        capacity = self.max_concurrent + self.max_queue
        return round(min(1.0, (self.generating + self.queued) / capacity), 3)

    # -- validation ------------------------------------------------------------------------------

    async def prepare(
        self, params: SpeechCreateParams, stream: bool = False, adhoc: VoicePrompt | None = None
    ) -> PreparedSpeech:
        """Validate what pydantic cannot (server limits, names, per-format rates) and resolve the voice's
        prompt (`adhoc`: one uploaded with the request); raise 4xx."""
        settings = self.settings
        if params.model not in settings.model_ids:
            raise APIError(
                404,
                f"The model '{params.model}' does not exist. Available: {', '.join(settings.model_ids)}.",
                param="model",
                code="model_not_found",
            )
        if not params.input.strip():
            raise invalid("'input' must contain text to speak.", "input")
        if len(params.input) > settings.max_input_chars:
            raise invalid(
                f"'input' is {len(params.input)} characters; the maximum is {settings.max_input_chars}.",
                "input",
                "string_too_long",
            )
        spec = FORMATS[params.response_format]
        rate = params.sample_rate or spec.default_rate
        if spec.rates is not None and rate not in spec.rates:
            raise invalid(
                f"sample_rate {rate} is not available for {spec.name}; choose one of "
                f"{', '.join(map(str, spec.rates))}.",
                "sample_rate",
            )
        if needs_ffmpeg(params.response_format, params.speed) and not ffmpeg_available():
            raise APIError(
                503,
                f"This server has no ffmpeg, so it can answer only 'wav' or 'pcm' at speed 1.0, not "
                f"'{params.response_format}' at speed {params.speed:g}.",
                type="server_error",
                code="ffmpeg_unavailable",
            )
        max_length = params.max_length or settings.max_length
        if max_length > settings.max_length:
            raise invalid(
                f"max_length {max_length} exceeds this server's limit of {settings.max_length}.", "max_length"
            )
        seed = params.seed
        # An engine may fix timesteps server-wide (nano-vllm): it refuses a request asking for others.
        timesteps = params.inference_timesteps or self.engine.info.inference_timesteps or 10
        if adhoc is not None:
            prompt, voice_kind, voice_key = adhoc, "adhoc", adhoc.key
        else:
            voice = self.voices.get(params.voice_id)
            if voice is None:
                raise invalid(
                    f"Unknown voice '{params.voice_id}'. See GET /v1/audio/voices for the voices available.",
                    "voice",
                    "voice_not_found",
                )
            try:
                # Shielded: a designed voice's first clip is shared by every request that waits for it.
                prompt = await self.with_deadline(asyncio.shield(self.voices.prompt(voice)))
            except EngineUnavailable as exc:
                raise unavailable(str(exc)) from None
            voice_kind, voice_key = voice.kind, voice.key
            if seed is None and voice.seed is not None:
                seed = voice.seed  # a designed voice keeps its seed: it sounds the same every time
        sse = params.stream_format == "sse"
        stream = stream or sse or params.stream
        prefix = design_prefix(None, params.instructions)
        texts = self._segments(params.input, prefix, max_length, stream, prompt.positions)
        segments = tuple(
            SynthesisRequest(
                text=prefix + text,
                voice=prompt,
                cfg_value=params.cfg_value,
                inference_timesteps=timesteps,
                max_length=max_length,
                seed=seed,
                normalize=params.normalize,
            )
            for text in texts
        )
        cache_fields = {
            "model": settings.served_model_id,
            "weights": self.weights_fingerprint,
            "voice": voice_key,
            "input": params.input,
            "instructions": params.instructions,
            "format": params.response_format,
            # Streamed wav has a header of unknown length; segmentation differs when streaming.
            "stream": stream,
            "speed": params.speed,
            "sample_rate": rate,
            "cfg": params.cfg_value,
            "timesteps": timesteps,
            "seed": seed,
            "max_length": max_length,
            "normalize": params.normalize,
        }
        return PreparedSpeech(
            segments,
            params.response_format,
            rate,
            params.speed,
            stream,
            sse,
            voice_kind,
            len(params.input),
            cache_fields,
        )

    def _segments(
        self, text: str, prefix: str, max_length: int, stream: bool, prompt_positions: int
    ) -> list[str]:
        """Streaming: one segment per sentence, for the earliest first audio. Otherwise one segment,
        unless the text cannot fit one generation window; then sentences packed up to the cap."""
        cap = self.settings.segment_max_chars
        if stream:
            return segment(text, cap, pack=False)
        tokens = self.engine.count_tokens(prefix + text)
        if prompt_positions + tokens + 1 + steps_cap(tokens, max_length) <= self.engine.info.max_model_len:
            return [text]
        return segment(text, cap, pack=True)

    def cache_state(self, no_cache: bool, voice_kind: str = "") -> str:
        """USE, or why the cache is not used for this request (the X-Cache value)."""
        if voice_kind == "adhoc":
            return "ADHOC"  # an uploaded voice is used once and never kept, its audio neither
        if not self.cache.enabled:
            return "DISABLED"
        if no_cache:
            return "BYPASS"
        return "USE"

    # -- request registry and admission -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def track(
        self, request_id: str, prepared: PreparedSpeech, started: float
    ) -> AsyncIterator[SpeechJob]:
        """Register a request as in flight, so that it can be counted and cancelled by id. `started` is
        when the request arrived (perf_counter): first-audio latency counts from there, voice preparation
        included."""
        job = SpeechJob(request_id, started=started, voice_kind=prepared.voice_kind, chars=prepared.chars)
        if self.settings.log_request_text:
            job.text = " ".join(s.text for s in prepared.segments)
        self.active.setdefault(request_id, []).append(job)
        try:
            yield job
        finally:
            jobs = self.active[request_id]
            jobs.remove(job)
            if not jobs:
                del self.active[request_id]
            if job.cancel.is_set():
                self.cancelled_total += 1
                self.metrics.cancelled.inc()

    def _check_engine(self) -> None:
        if not self.engine.ready:
            raise unavailable("The speech engine is not available.")
        if self.watch.stalled:
            raise unavailable("The speech engine has stopped answering.")

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """A generation slot: at most max_concurrent generate, max_queue wait, the rest get 429 at once."""
        self._check_engine()
        if self.generating >= self.max_concurrent and self.queued >= self.max_queue:
            self.metrics.rejected.inc()
            raise APIError(
                429,
                f"The server is at capacity ({self.max_concurrent} generating, "
                f"{self.max_queue} waiting). Retry shortly.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.generating += 1
        try:
            yield
        finally:
            self.generating -= 1
            self._slots.release()

    async def with_deadline(self, work: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(work, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(
                504,
                f"The request did not finish within {self.settings.request_timeout_s:.0f}s.",
                type="server_error",
                code="timeout",
            ) from None

    def cancel(self, request_id: str) -> bool:
        jobs = self.active.get(request_id)
        if not jobs:
            return False
        for job in jobs:
            job.cancel.set()
        return True

    # -- audio -----------------------------------------------------------------------------------

    async def _until_cancelled(
        self, chunks: AsyncIterator[np.ndarray], cancel: asyncio.Event
    ) -> AsyncIterator[np.ndarray]:
        """Pass the engine's chunks through until `cancel` is set; then abandon them at once (the
        engine stops within one step) and raise RequestCancelled. An engine that stops moving while
        work waits on it turns into a 503 (see EngineWatch)."""
        waiter = asyncio.ensure_future(cancel.wait())
        step: asyncio.Future[np.ndarray] | None = None
        try:
            while True:
                step = asyncio.ensure_future(chunks.__anext__())
                with self.watch.waiting_for_engine():
                    while True:
                        await asyncio.wait({step, waiter}, timeout=self.watch.stall_after,
                                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                        if step.done() or waiter.done():
                            break
                        self.watch.check()
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

    async def audio(self, prepared: PreparedSpeech, job: SpeechJob) -> AsyncIterator[np.ndarray]:
        """The joined float32 audio of every segment, at the engine's rate, as it is generated.

        The last few milliseconds of each segment are held back and cross-faded into the next one.
        """
        rate = self.engine.info.sample_rate
        job.sample_rate = rate
        fader = CrossFader(rate, len(prepared.segments))
        generation_started = time.perf_counter()
        try:
            for index, request in enumerate(prepared.segments):
                stats = GenerationStats()
                fresh = True
                async for chunk in self._until_cancelled(self.engine.generate(request, stats), job.cancel):
                    joined = fader.push(index, chunk, fresh)
                    fresh = False
                    if len(joined):
                        yield self._count(job, joined)
                job.input_tokens += stats.input_tokens
                job.output_steps += stats.steps
            tail = fader.flush()
            if len(tail):
                yield self._count(job, tail)
        except EngineInputError as exc:
            raise invalid(str(exc), exc.param) from None
        except EngineUnavailable as exc:
            raise unavailable(str(exc)) from None
        finally:
            seconds = job.samples / rate
            if seconds > 0:
                self.metrics.audio_seconds.inc(seconds)
                if not job.cancel.is_set():
                    self.metrics.rtf.observe((time.perf_counter() - generation_started) / seconds)

    def _count(self, job: SpeechJob, chunk: np.ndarray) -> np.ndarray:
        if job.first_audio is None:
            job.first_audio = time.perf_counter() - job.started
            self.metrics.first_audio_seconds.observe(job.first_audio)
        job.samples += len(chunk)
        return chunk

    async def synthesize(self, prepared: PreparedSpeech, job: SpeechJob) -> SpeechResult:
        """The whole utterance, encoded: admitted, generated, encoded, within the deadline."""

        async def run() -> SpeechResult:
            async with self.admit():
                chunks = [chunk async for chunk in self.audio(prepared, job)]
            audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
            rate = self.engine.info.sample_rate
            data = await asyncio.to_thread(
                encode, audio, rate, prepared.response_format, prepared.sample_rate, prepared.speed
            )
            return SpeechResult(
                data,
                FORMATS[prepared.response_format].content_type,
                prepared.sample_rate,
                round(len(audio) / rate / prepared.speed, 3),
                job.usage,
            )

        return await self.with_deadline(run())

    async def respond(self, prepared: PreparedSpeech, job: SpeechJob, no_cache: bool) -> SpeechResult:
        """A buffered response, through the cache: a hit, or one synthesis shared by identical requests."""
        state = self.cache_state(no_cache, prepared.voice_kind)
        if state != "USE":
            job.cache = state
            self.metrics.cache_lookups.labels(state).inc()
            return await self.synthesize(prepared, job)
        key = cache_key(prepared.cache_fields)
        hit = await self.cache.get(key)
        if hit is not None:
            return self._hit(job, hit.payload, hit.meta)

        async def produce() -> SpeechResult:
            result = await self.synthesize(prepared, job)
            await self.cache.put(key, result.audio, result.meta())
            return result

        try:
            result, produced = await self.cache.single_flight(key, produce)
        except (APIError, RequestCancelled) as exc:
            if isinstance(exc, APIError) and exc.status < 500 and exc.status != 499:
                raise  # the same request would fail the same way
            if job.cancel.is_set():
                raise
            # The request we waited on was cancelled or failed on its own account: try ourselves.
            job.cache = "MISS"
            self.metrics.cache_lookups.labels("MISS").inc()
            return await self.synthesize(prepared, job)
        if not produced:  # served by an identical request that was already synthesising
            return self._hit(job, result.audio, result.meta())
        job.cache = "MISS"
        self.metrics.cache_lookups.labels("MISS").inc()
        return result

    def _hit(self, job: SpeechJob, payload: bytes, meta: dict[str, Any]) -> SpeechResult:
        job.cache = "HIT"
        self.metrics.cache_lookups.labels("HIT").inc()
        result = SpeechResult.from_cache(payload, meta)
        job.input_tokens = result.usage["input_tokens"]
        job.output_steps = result.usage["output_tokens"]
        return result

    async def stream(self, prepared: PreparedSpeech, job: SpeechJob, no_cache: bool) -> AsyncIterator[bytes]:
        """Encoded audio as it is generated, or the cached bytes of an earlier identical stream.

        The first audio chunk is awaited before this returns, so that a request that fails early still
        gets a proper 4xx/5xx before any byte is sent. The generation slot is held until the stream ends.
        """
        state = self.cache_state(no_cache, prepared.voice_kind)
        key = cache_key(prepared.cache_fields) if state == "USE" else None
        if key is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                return _once(self._hit(job, hit.payload, hit.meta).audio)
        job.cache = "MISS" if key is not None else state
        self.metrics.cache_lookups.labels(job.cache).inc()

        slot = self.admit()
        await slot.__aenter__()
        audio = self.audio(prepared, job)
        try:
            first = await self.with_deadline(_first(audio))
        except BaseException:
            await audio.aclose()
            await slot.__aexit__(None, None, None)
            raise

        async def chunks() -> AsyncIterator[np.ndarray]:
            try:
                if first is not None:
                    yield first
                    async for chunk in audio:
                        yield chunk
            except RequestCancelled:
                pass  # stop cleanly: the encoder finishes what it has, the file stays valid
            finally:
                await audio.aclose()

        rate = self.engine.info.sample_rate

        async def encoded() -> AsyncIterator[bytes]:
            parts: list[bytes] = []
            try:
                async for data in encode_stream(
                    chunks(), rate, prepared.response_format, prepared.sample_rate, prepared.speed
                ):
                    parts.append(data)
                    yield data
            except (asyncio.CancelledError, GeneratorExit):
                job.cancel.set()  # the client went away mid-stream
                raise
            finally:
                await slot.__aexit__(None, None, None)
            if key is not None and not job.cancel.is_set():
                payload = b"".join(parts)
                meta = SpeechResult(
                    payload,
                    FORMATS[prepared.response_format].content_type,
                    prepared.sample_rate,
                    round(job.samples / rate / prepared.speed, 3),
                    job.usage,
                ).meta()
                await self.cache.put(key, payload, meta)

        return encoded()


async def _first(audio: AsyncIterator[np.ndarray]) -> np.ndarray | None:
    try:
        return await audio.__anext__()
    except StopAsyncIteration:
        return None


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    yield payload
