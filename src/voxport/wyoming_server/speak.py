"""One utterance over Wyoming: a speech request to the `SpeechService`, its audio sent as audio-start,
audio-chunk..., audio-stop as it is generated, or an `error` event. One access line per utterance, as the
HTTP API writes one per request (never the text)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from pydantic import ValidationError
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.tts import SynthesizeVoice

from voxport.engine.base import LANGUAGES, EngineInputError, EngineUnavailable
from voxport.errors import VoxportError
from voxport.protocol import SpeechCreateParams
from voxport.speech import RequestTicket, SpeechService, SpeechStream

log = logging.getLogger("voxport.wyoming")
access = logging.getLogger("voxport.access")

WIDTH = 2  # 16-bit samples
CHANNELS = 1
_CHUNK_BYTES = 8192  # a cached utterance comes back whole: sent in pieces like generated audio


class Speaker:
    def __init__(self, speech: SpeechService, write: Callable[[Event], Awaitable[None]]):
        self.speech = speech
        self.write = write

    def language(self, voice: SynthesizeVoice | None) -> str | None:
        """A voice asked for by language only ("en_US") sets the request's `language` where VoxCPM2 has it."""
        if voice is None or voice.name is not None or not voice.language:
            return None
        code = voice.language.replace("-", "_").split("_")[0].lower()
        return code if code in LANGUAGES else None

    def _params(self, text: str, voice: SynthesizeVoice | None, ssml: bool) -> SpeechCreateParams:
        return SpeechCreateParams(
            model=self.speech.settings.served_model_id,
            input=text,
            input_format="ssml" if ssml else "text",
            voice=voice.name if voice is not None and voice.name else None,
            response_format="pcm",
            language=self.language(voice),
        )

    async def check_voice(self, voice: SynthesizeVoice | None) -> bool:
        """Whether the voice exists; if not, an `error` event says so."""
        name = voice.name if voice is not None else None
        if self.speech.voices.get(name) is not None:
            return True
        await self.write(Error(text=f"Unknown voice '{name}'; describe lists the voices available.",
                               code="voice_not_found").event())  # fmt: skip
        return False

    async def speak(self, text: str, voice: SynthesizeVoice | None, ssml: bool = False) -> None:
        """`ssml`: the text is an SSML document (Wyoming's `text_format: "ssml"`), read as HTTP's
        `input_format: "ssml"` reads it (voxport.speech.ssml)."""
        job = RequestTicket(f"wy_{secrets.token_hex(8)}")
        outcome = "ok"
        try:
            if not text.strip():
                raise VoxportError("invalid", "There is no text to speak.", param="text", code="empty_text")
            try:
                params = self._params(text, voice, ssml)
            except ValidationError as exc:
                first = exc.errors()[0]
                message = f"{first['loc'][0]}: {first['msg']}"
                raise VoxportError("invalid", message, code="invalid_request") from None
            answer = await self.speech.create(params, job, stream=True)
            if isinstance(answer, SpeechStream):
                await self._send(answer, answer.prepared.sample_rate)
            else:  # a cache hit: the whole utterance at once
                await self._send(_once(answer.audio), answer.sample_rate)
        except VoxportError as exc:
            outcome = exc.code or exc.kind
            await self.write(Error(text=exc.message, code=exc.code or exc.kind).event())
        except EngineInputError as exc:
            outcome = "invalid_input"
            await self.write(Error(text=str(exc), code="invalid_input").event())
        except EngineUnavailable:
            outcome = "unavailable"
            await self.write(Error(text="The speech engine is not available.", code="unavailable").event())
        except ConnectionError:
            outcome = "disconnected"
            raise
        except Exception:
            outcome = "internal"
            log.exception("request_id=%s failed: wyoming synthesize", job.request_id)
            failed = Error(text="The server failed to synthesise this text.", code="internal")
            await self.write(failed.event())
        finally:
            self._log(job, outcome)

    async def _send(self, stream: SpeechStream | AsyncIterator[bytes], rate: int) -> None:
        audio = {"rate": rate, "width": WIDTH, "channels": CHANNELS}
        try:
            await self.write(AudioStart(**audio).event())
            async for data in stream:
                for start in range(0, len(data), _CHUNK_BYTES):
                    await self.write(AudioChunk(audio=data[start : start + _CHUNK_BYTES], **audio).event())
            await self.write(AudioStop().event())
        finally:
            await stream.aclose()  # type: ignore[union-attr]

    def _log(self, job: RequestTicket, outcome: str) -> None:
        if not access.isEnabledFor(logging.INFO):
            return
        fields = {"request_id": job.request_id, "route": "wyoming:synthesize", "outcome": outcome,
                  **job.log_fields(), "ms": round((time.perf_counter() - job.started) * 1000)}  # fmt: skip
        access.info(" ".join(f"{k}={v}" for k, v in fields.items()))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
