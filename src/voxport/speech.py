"""The speech service: request → voice → engine → encoder. Nothing HTTP-specific lives here."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from voxport.api.errors import APIError, invalid
from voxport.api.protocol import SpeechCreateParams
from voxport.audio import FORMATS, AudioEncodingError, encode
from voxport.config import Settings
from voxport.engine.base import (
    Engine,
    EngineInputError,
    EngineUnavailable,
    SynthesisRequest,
)
from voxport.voices import DesignedVoice, design_prefix

log = logging.getLogger("voxport.speech")


@dataclass(frozen=True)
class SpeechResult:
    audio: bytes
    content_type: str
    sample_rate: int
    duration: float  # seconds of audio in `audio`, after speed


@dataclass(frozen=True)
class PreparedSpeech:
    """A validated request, ready for the engine and the encoder."""

    synthesis: SynthesisRequest
    response_format: str
    sample_rate: int
    speed: float


class SpeechService:
    def __init__(self, settings: Settings, engine: Engine, voices: dict[str, DesignedVoice]):
        self.settings = settings
        self.engine = engine
        self.voices = voices
        self.in_flight = 0

    def prepare(self, params: SpeechCreateParams) -> PreparedSpeech:
        """Validate what pydantic cannot (server limits, names, per-format rates); raise 4xx."""
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
        if params.stream_format == "sse":
            raise invalid(
                "stream_format 'sse' is not supported yet; use 'audio'.", "stream_format", "unsupported"
            )
        voice = self.voices.get(params.voice_id or settings.default_voice)
        if voice is None:
            raise invalid(
                f"Unknown voice '{params.voice_id}'. Available: {', '.join(self.voices)}.",
                "voice",
                "voice_not_found",
            )
        spec = FORMATS[params.response_format]
        rate = params.sample_rate or spec.default_rate
        if spec.rates is not None and rate not in spec.rates:
            raise invalid(
                f"sample_rate {rate} is not available for {spec.name}; choose one of "
                f"{', '.join(map(str, spec.rates))}.",
                "sample_rate",
            )
        max_length = params.max_length or settings.max_length
        if max_length > settings.max_length:
            raise invalid(
                f"max_length {max_length} exceeds this server's limit of {settings.max_length}.", "max_length"
            )
        text = design_prefix(voice.description, params.instructions) + params.input
        synthesis = SynthesisRequest(
            text=text,
            voice=None,
            cfg_value=params.cfg_value,
            inference_timesteps=params.inference_timesteps,
            max_length=max_length,
            # A designed voice keeps its seed unless the request asks for another: the same voice
            # then sounds the same from request to request.
            seed=voice.seed if params.seed is None else params.seed,
            normalize=params.normalize,
        )
        return PreparedSpeech(synthesis, params.response_format, rate, params.speed)

    async def synthesize(self, prepared: PreparedSpeech, request_id: str) -> SpeechResult:
        if not self.engine.ready:
            raise APIError(
                503,
                "The speech engine is not ready.",
                type="server_error",
                code="engine_unavailable",
                headers={"Retry-After": "5"},
            )
        self.in_flight += 1
        started = time.perf_counter()
        try:
            audio = await self._collect(prepared.synthesis)
            engine_rate = self.engine.info.sample_rate
            try:
                data = await asyncio.to_thread(
                    encode, audio, engine_rate, prepared.response_format, prepared.sample_rate, prepared.speed
                )
            except AudioEncodingError as exc:
                raise RuntimeError(str(exc)) from exc
        finally:
            self.in_flight -= 1
        duration = len(audio) / engine_rate / prepared.speed
        log.info(
            "request %s: %s, %.2fs audio in %.2fs%s",
            request_id,
            prepared.response_format,
            duration,
            time.perf_counter() - started,
            f", text {prepared.synthesis.text!r}" if self.settings.log_request_text else "",
        )
        return SpeechResult(
            data, FORMATS[prepared.response_format].content_type, prepared.sample_rate, duration
        )

    async def _collect(self, request: SynthesisRequest) -> np.ndarray:
        chunks: list[np.ndarray] = []
        try:
            async for chunk in self.engine.generate(request):
                chunks.append(chunk)
        except EngineInputError as exc:
            raise invalid(str(exc), exc.param) from None
        except EngineUnavailable as exc:
            raise APIError(503, str(exc), type="server_error", code="engine_unavailable") from None
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
