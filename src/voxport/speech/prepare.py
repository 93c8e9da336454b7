"""From request parameters to a prepared request, in two steps. `plan`: what pydantic cannot check (server
limits, names, per-format rates) and the cache key's fields, with no model work, so that a cache hit is
cheap. `complete`, on a miss: every voice resolved to its encoded prompt (named, designed or uploaded with
the request: here and nowhere else) and the text cut into segments."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from voxport.audio import FORMATS, ffmpeg_available, needs_ffmpeg
from voxport.config import Settings
from voxport.dictionaries import Dictionary, in_force
from voxport.engine.base import LANGUAGES, Engine, SynthesisRequest, VoicePrompt
from voxport.errors import VoxportError, invalid, unavailable
from voxport.protocol import SpeechCreateParams, VoiceUpload
from voxport.speech import dialogue, script
from voxport.speech.loudness import measure
from voxport.speech.ssml import Script
from voxport.speech.tickets import with_deadline
from voxport.speech.timings import Span
from voxport.text import normalize, segment
from voxport.voices import Voice, VoiceRegistry, design_prefix
from voxport.voices.uploads import ENCODER_RATE


@dataclass(frozen=True)
class _Voice:
    prompt: VoicePrompt
    kind: str
    key: str
    seed: int | None = None
    level: float | None = None  # LUFS, measured when loudness is asked for


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
    loudness: float | None = None  # target LUFS, or None: as generated
    timestamps: bool = False  # segment times wanted: segmented by sentence, timed (speech/timings.py)
    turns: tuple[Voice, ...] = ()  # a dialogue's voices, turn by turn (speech/dialogue.py)
    gap: float = 0.0  # seconds of silence between a dialogue's turns
    script: Script | None = None  # `input_format: ssml`: the blocks, shaped (speech/ssml.py, script.py)
    script_voices: tuple[Voice | None, ...] = ()  # each block's <voice> (None: the request's)
    source: str | None = None  # the caller's `input`, for the timings' offsets

    @property
    def content_type(self) -> str:
        return FORMATS[self.response_format].content_type


@dataclass(frozen=True)
class PreparedSpeech(SpeechPlan):
    """A plan completed on a cache miss: the segments to synthesise, in order."""

    segments: tuple[SynthesisRequest, ...] = ()
    spans: tuple[Span, ...] = ()  # what each segment is, for its timing


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

    def _check(self, params: SpeechCreateParams, upload: bool = False) -> int:
        """Server-side limits on the parameters; returns the output sample rate."""
        settings = self.settings
        if params.model not in settings.model_ids:
            raise VoxportError(
                "not_found",
                f"The model '{params.model}' does not exist. Available: {', '.join(settings.model_ids)}.",
                param="model",
                code="model_not_found",
            )
        dialogue.text_length(params, settings.max_input_chars, upload)
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
        if params.language is not None and params.language not in LANGUAGES:
            raise invalid(
                f"language '{params.language}' is not one VoxCPM2 speaks; use one of "
                f"{', '.join(sorted(LANGUAGES))}, or leave it out.",
                "language",
                "unsupported_language",
            )
        if params.max_length and params.max_length > settings.max_length:
            raise invalid(
                f"max_length {params.max_length} exceeds this server's limit of {settings.max_length}.",
                "max_length",
            )
        return rate

    async def _uploaded(self, upload: VoiceUpload, loudness: float | None) -> _Voice:
        recording = await self.voices.read_upload(upload.data, upload.transcript, upload.param)
        prompt = await self.voices.adhoc_prompt(recording, upload.transcript)
        level = None
        if loudness is not None:  # a stream's gain comes from the voice's level
            level = await asyncio.to_thread(measure, recording.samples, ENCODER_RATE)
        return _Voice(prompt, "adhoc", prompt.key, level=level)

    def _named(self, params: SpeechCreateParams, tenant: str) -> Voice:
        voice = self.voices.get(params.voice_id, tenant)
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

    def _defaults(self, params: SpeechCreateParams) -> SpeechCreateParams:
        """The server's defaults for what the request left out (clients that send only OpenAI's fields):
        a field the request sets always wins. Applied before anything else, so the cache key holds them."""
        settings, sent = self.settings, params.model_fields_set
        update = {
            "sample_rate": settings.default_sample_rate.get(params.response_format)
            if params.sample_rate is None else None,
            "language": settings.default_language if params.language is None else None,
            "seed": settings.default_seed if params.seed is None else None,
            "normalize": (settings.default_normalize or None) if "normalize" not in sent else None,
        }  # fmt: skip
        update = {k: v for k, v in update.items() if v is not None}
        return params.model_copy(update=update) if update else params

    async def plan(
        self, params: SpeechCreateParams, stream: bool = False, upload: VoiceUpload | None = None,
        tenant: str = "",
    ) -> SpeechPlan:  # fmt: skip
        """`tenant`: whose library voices the request may use (voxport.tenants; '': every tenant's)."""
        params = self._defaults(params)
        # An uploaded recording is checked before the parameters, a named voice after them.
        loudness = params.loudness if "loudness" in params.model_fields_set else self.settings.loudness
        adhoc = await self._uploaded(upload, loudness) if upload is not None else None
        rate = self._check(params, upload is not None)
        max_length = params.max_length or self.settings.max_length
        # An engine may fix timesteps server-wide (nano-vllm): it refuses a request asking for others.
        timesteps = params.inference_timesteps or self.engine.info.inference_timesteps or 10
        if adhoc is None:
            await self.voices.refresh()  # shared library: what other replicas added or deleted
        turns = dialogue.voices(self.voices, params, tenant) if params.dialogue else []
        ssml = script.parse(params)
        script_voices = script.voices(self.voices, ssml, tenant) if ssml else ()
        voice = adhoc or (turns[0] if turns else self._named(params, tenant))
        # A designed voice keeps its seed: it sounds the same every time.
        seed = params.seed if params.seed is not None else voice.seed
        sse = params.stream_format == "sse"
        requested = params.stream if params.stream is not None else self.settings.stream_speech
        if params.timestamps and not sse:  # timings travel in a JSON body, or in SSE events
            if stream or params.stream:
                message = "A raw audio stream cannot carry timings: with 'timestamps', use stream_format"
                raise invalid(f"{message} 'sse', or stream false (a JSON body).", "timestamps")
            requested = False
        stream = stream or sse or requested
        gap = params.dialogue_gap if params.dialogue_gap is not None else self.settings.dialogue_gap_s
        cache_fields = {
            "model": self.settings.served_model_id,
            "weights": self.weights_fingerprint(),
            "voice": voice.key,
            "input": script.cache_input(ssml, script_voices, voice.key)
            if ssml
            else dialogue.cache_input(params, turns, gap)
            if turns
            else params.input,
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
        if params.timestamps:  # segmented by sentence, and the entry keeps the times
            cache_fields["timestamps"] = True
        dictionaries = await self.voices.dictionaries.resolve(params.pronunciation_dictionaries)
        shaped, shaping, ssml = self._shape(params, loudness, ssml, dictionaries)
        cache_fields.update(shaping)
        return SpeechPlan(
            params.response_format, rate, params.speed, stream, sse, "dialogue" if turns else voice.kind,
            dialogue.text_length(params, self.settings.max_input_chars, False), cache_fields, shaped, voice,
            seed, timesteps, max_length, loudness, params.timestamps, tuple(turns), gap, ssml, script_voices,
            params.input,
        )  # fmt: skip

    def _shape(
        self, params: SpeechCreateParams, loudness: float | None, ssml: Script | None = None,
        dictionaries: tuple[Dictionary, ...] = (),
    ) -> tuple[SpeechCreateParams, dict[str, Any], Script | None]:  # fmt: skip
        """The text the engine reads (`input`, each dialogue turn's or SSML block's): lexicon entries (the
        server's, the named dictionaries that apply to its voice and language, then the request's), then
        the language's normalisation. And the cache key's fields for them, present only when set, so
        that keys made before these existed stay valid."""
        used: list[list[str]] = []
        hashes: list[str] = []

        def shape(text: str, voice: str | None = params.voice_id) -> str:
            extra, applied = in_force(dictionaries, voice, params.language, params.pronunciations)
            hashes.extend(h for h in applied if h not in hashes)
            spoken, entries = self.voices.lexicon.apply(text, extra)
            used.extend(entry for entry in entries if entry not in used)
            return normalize(spoken, params.language)

        if ssml is not None:
            blocks = tuple(replace(b, text=shape(b.text, b.voice or params.voice_id)) for b in ssml.blocks)
            ssml, shaped = replace(ssml, blocks=blocks), params
        elif params.dialogue:
            turns = [
                turn.model_copy(update={"input": shape(turn.input, turn.voice)}) for turn in params.dialogue
            ]
            shaped = params.model_copy(update={"dialogue": turns})
        else:
            assert params.input is not None
            shaped = params.model_copy(update={"input": shape(params.input)})
        extra = {"lexicon": sorted(used), "language": params.language, "loudness": loudness,
                 "dictionaries": hashes}  # fmt: skip
        return shaped, {k: v for k, v in extra.items() if v}, ssml

    async def complete(self, plan: SpeechPlan) -> PreparedSpeech:
        """The voice's prompt and the text's segments: the model-side work, done only on a miss."""
        planned = {f.name: getattr(plan, f.name) for f in fields(SpeechPlan)}
        if plan.turns or plan.script:
            segments, spans = await (script if plan.script else dialogue).complete(self, plan)
            return PreparedSpeech(**planned, segments=segments, spans=spans)
        voice = plan.voice if isinstance(plan.voice, _Voice) else await self._prompt(plan.voice)
        params = plan.params
        assert params.input is not None
        prefix = design_prefix(None, params.instructions)
        by_sentence = plan.stream or plan.timestamps
        texts = self._segments(
            params.input, prefix, plan.max_length, by_sentence, voice.prompt.positions, params.language
        )
        segments = tuple(self.request(plan, prefix + text, voice.prompt, plan.seed) for text in texts)
        spans = script.spans(texts, plan.source or params.input)  # with the caller's text and offsets
        return PreparedSpeech(**planned, segments=segments, spans=tuple(spans))

    def request(self, plan: SpeechPlan, text: str, prompt: VoicePrompt, seed: int | None) -> SynthesisRequest:
        params = plan.params
        return SynthesisRequest(text=text, voice=prompt, cfg_value=params.cfg_value,
                                inference_timesteps=plan.timesteps, max_length=plan.max_length, seed=seed,
                                normalize=params.normalize)  # fmt: skip

    def _segments(self, text: str, prefix: str, max_length: int, stream: bool, prompt_positions: int,
                  language: str | None) -> list[str]:  # fmt: skip
        """Streaming: one segment per sentence, for the earliest first audio. Otherwise one segment,
        unless the text cannot fit one generation window; then sentences packed up to the cap."""
        cap = self.settings.segment_max_chars
        if stream:
            return segment(text, cap, pack=False, language=language)
        tokens = self.engine.count_tokens(prefix + text)
        if self.engine.info.fits(prompt_positions, tokens, max_length):
            return [text]
        return segment(text, cap, pack=True, language=language)
