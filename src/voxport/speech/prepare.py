"""From request parameters to a prepared request, in two steps. `plan`: what pydantic cannot check (server
limits, names, per-format rates) and the cache key's fields, with no model work, so that a cache hit is
cheap. `complete`, on a miss: every voice resolved to its encoded prompt (named, designed or uploaded with
the request: here and nowhere else) and the text cut into segments."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from voxport.audio import FORMATS, ffmpeg_available, needs_ffmpeg
from voxport.config import Settings
from voxport.engine.base import Engine, SynthesisRequest, VoicePrompt
from voxport.errors import VoxportError, invalid, unavailable
from voxport.protocol import SpeechCreateParams, VoiceUpload
from voxport.speech.jobs import with_deadline
from voxport.text import segment
from voxport.voices import Voice, VoiceRegistry, design_prefix


@dataclass(frozen=True)
class _Voice:
    prompt: VoicePrompt
    kind: str
    key: str
    seed: int | None = None


@dataclass(frozen=True)
class SpeechPlan:
    """A validated request before any model work: how it is encoded, and its cache key. Building it needs
    no tokenizer, no voice prompt and no engine, so that a cache hit costs none of them."""

    response_format: str
    sample_rate: int
    speed: float
    stream: bool
    sse: bool
    voice_kind: str
    chars: int
    cache_fields: dict[str, Any]
    # What completing it (on a miss) needs.
    params: SpeechCreateParams
    voice: Voice | _Voice  # a named voice (its prompt resolved on completion), or an upload's
    seed: int | None
    timesteps: int
    max_length: int

    @property
    def content_type(self) -> str:
        return FORMATS[self.response_format].content_type


@dataclass(frozen=True)
class PreparedSpeech(SpeechPlan):
    """A plan completed on a cache miss: the segments to synthesise, in order."""

    segments: tuple[SynthesisRequest, ...] = ()


class Preparer:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        voices: VoiceRegistry,
        weights_fingerprint: Callable[[], str],
    ):
        self.settings = settings
        self.engine = engine
        self.voices = voices
        self.weights_fingerprint = weights_fingerprint

    def _check(self, params: SpeechCreateParams) -> int:
        """Server-side limits on the parameters; returns the output sample rate."""
        settings = self.settings
        if params.model not in settings.model_ids:
            raise VoxportError(
                "not_found",
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
            raise unavailable(
                f"This server has no ffmpeg, so it can answer only 'wav' or 'pcm' at speed 1.0, not "
                f"'{params.response_format}' at speed {params.speed:g}.",
                code="ffmpeg_unavailable",
                retry_after=None,
            )
        if params.max_length and params.max_length > settings.max_length:
            raise invalid(
                f"max_length {params.max_length} exceeds this server's limit of {settings.max_length}.",
                "max_length",
            )
        return rate

    async def _uploaded(self, upload: VoiceUpload) -> _Voice:
        recording = await self.voices.read_upload(upload.data, upload.transcript, upload.param)
        prompt = await self.voices.adhoc_prompt(recording, upload.transcript)
        return _Voice(prompt, "adhoc", prompt.key)

    def _named(self, params: SpeechCreateParams) -> Voice:
        voice = self.voices.get(params.voice_id)
        if voice is None:
            raise invalid(
                f"Unknown voice '{params.voice_id}'. See GET /v1/audio/voices for the voices available.",
                "voice",
                "voice_not_found",
            )
        return voice

    async def _prompt(self, voice: Voice) -> _Voice:
        # Shielded: a designed voice's first clip is shared by every request that waits for it.
        prompt = await with_deadline(
            asyncio.shield(self.voices.prompt(voice)), self.settings.request_timeout_s
        )
        return _Voice(prompt, voice.kind, voice.key, voice.seed)

    async def plan(
        self, params: SpeechCreateParams, stream: bool = False, upload: VoiceUpload | None = None
    ) -> SpeechPlan:
        # An uploaded recording is checked before the parameters, a named voice after them.
        adhoc = await self._uploaded(upload) if upload is not None else None
        rate = self._check(params)
        max_length = params.max_length or self.settings.max_length
        # An engine may fix timesteps server-wide (nano-vllm): it refuses a request asking for others.
        timesteps = params.inference_timesteps or self.engine.info.inference_timesteps or 10
        if adhoc is None:
            await self.voices.refresh()  # shared library: what other replicas added or deleted
        voice = adhoc or self._named(params)
        # A designed voice keeps its seed: it sounds the same every time.
        seed = params.seed if params.seed is not None else voice.seed
        sse = params.stream_format == "sse"
        requested = params.stream if params.stream is not None else self.settings.stream_speech
        stream = stream or sse or requested
        cache_fields = {
            "model": self.settings.served_model_id,
            "weights": self.weights_fingerprint(),
            "voice": voice.key,
            "input": params.input,
            "instructions": params.instructions,
            "format": params.response_format,
            # Streamed and buffered forms are segmented differently.
            "stream": stream,
            "speed": params.speed,
            "sample_rate": rate,
            "cfg": params.cfg_value,
            "timesteps": timesteps,
            "seed": seed,
            "max_length": max_length,
            "normalize": params.normalize,
        }
        return SpeechPlan(
            params.response_format, rate, params.speed, stream, sse, voice.kind, len(params.input),
            cache_fields, params, voice, seed, timesteps, max_length,
        )  # fmt: skip

    async def complete(self, plan: SpeechPlan) -> PreparedSpeech:
        """The voice's prompt and the text's segments: the model-side work, done only on a miss."""
        voice = plan.voice if isinstance(plan.voice, _Voice) else await self._prompt(plan.voice)
        params = plan.params
        prefix = design_prefix(None, params.instructions)
        texts = self._segments(params.input, prefix, plan.max_length, plan.stream, voice.prompt.positions)
        segments = tuple(
            SynthesisRequest(
                text=prefix + text,
                voice=voice.prompt,
                cfg_value=params.cfg_value,
                inference_timesteps=plan.timesteps,
                max_length=plan.max_length,
                seed=plan.seed,
                normalize=params.normalize,
            )
            for text in texts
        )
        planned = {f.name: getattr(plan, f.name) for f in fields(SpeechPlan)}
        return PreparedSpeech(**planned, segments=segments)

    def _segments(
        self, text: str, prefix: str, max_length: int, stream: bool, prompt_positions: int
    ) -> list[str]:
        """Streaming: one segment per sentence, for the earliest first audio. Otherwise one segment,
        unless the text cannot fit one generation window; then sentences packed up to the cap."""
        cap = self.settings.segment_max_chars
        if stream:
            return segment(text, cap, pack=False)
        tokens = self.engine.count_tokens(prefix + text)
        if self.engine.info.fits(prompt_positions, tokens, max_length):
            return [text]
        return segment(text, cap, pack=True)
