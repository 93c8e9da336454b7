"""The one boundary between the server and model code.

Everything above this module speaks in `SynthesisRequest`, `VoicePrompt` and float32 numpy chunks;
everything model-specific (voxcpm, nano-vllm-voxcpm) lives in the modules that implement `Engine`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# VoxCPM2's output framing, the same for every engine: 48 kHz mono, one LM step = one patch of 4 latent
# frames = 7680 samples = 0.16 s. Engines that load a model read the rate from it; these name the constants.
SAMPLE_RATE = 48_000
SAMPLES_PER_STEP = 7_680


def steps_cap(text_tokens: int, max_length: int) -> int:
    """Most steps VoxCPM2 generates for a text: 6 per text token + 10, and never more than `max_length`."""
    return min(int(text_tokens * 6 + 10), max_length)


def collapse_whitespace(text: str) -> str:
    """VoxCPM2 reads text as one line: runs of whitespace (newlines included) become one space."""
    return " ".join(text.split())


class EngineError(RuntimeError):
    """The engine failed while serving a request (a server-side problem)."""


class EngineUnavailable(EngineError):
    """The engine is not loaded, was closed, or died: requests must fail fast."""


class EngineInputError(ValueError):
    """A request the engine cannot serve as asked (for example, too long for one window).

    `param` names the request field to blame so that the API layer can answer 400.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class VoicePrompt:
    """An encoded voice, ready to be reused by every request that asks for it.

    `key` is the content hash the voice was encoded from; `handle` is engine-specific (a prompt
    cache, a prompt id) and only the engine that made it may read it.
    """

    key: str
    mode: str  # "reference" | "continuation" | "ref_continuation"
    positions: int  # LM positions the prompt occupies in front of each generation
    handle: Any = field(repr=False, compare=False)


# The languages VoxCPM2 speaks (ISO 639-1, as its model card lists them; it reads text with no language tag,
# so a request's `language` only selects voxport's text rules, voxport/text.py).
LANGUAGES = frozenset(
    {
        "ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "id", "it", "ja", "km", "ko", "lo", "ms",
        "my", "nl", "no", "pl", "pt", "ru", "sv", "sw", "th", "tl", "tr", "vi", "zh",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Continuation:
    """The previous segment of the same utterance, which this one carries on: the text the model read for
    it and the audio it made (mono float32 at the engine's rate). Engines put both in front of the
    request as a continuation prompt (VoxCPM2's prompt text + prompt audio), after the voice's reference
    audio when the voice has one, so that the voice and prosody carry over instead of starting cold."""

    text: str
    audio: np.ndarray = field(repr=False, compare=False)

    def wav_bytes(self, sample_rate: int) -> bytes:
        """The audio as a 16-bit WAV file (what the engines' prompt encoders read)."""
        import io

        import soundfile

        out = io.BytesIO()
        soundfile.write(out, np.clip(self.audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
        return out.getvalue()

    def patches(self, samples_per_step: int) -> int:
        """LM positions its audio takes (one per step of audio)."""
        return -(-len(self.audio) // samples_per_step)


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: VoicePrompt | None = None
    cfg_value: float = 2.0
    inference_timesteps: int = 10
    max_length: int = 2048  # upper bound on generated steps (0.16 s each)
    seed: int | None = None
    normalize: bool = False
    continuation: Continuation | None = None  # the previous segment, generated as this one's prompt


@dataclass
class GenerationStats:
    """Filled in by the engine while a generation runs (read it once the iteration is over)."""

    input_tokens: int = 0  # text tokens the model read, voice-design prefix included
    steps: int = 0  # audio steps generated (0.16 s each)


@dataclass(frozen=True)
class EngineInfo:
    name: str  # "reference" | "nanovllm" | "sim"
    model: str  # checkpoint directory
    device: str
    dtype: str
    sample_rate: int  # of the chunks `generate` yields
    samples_per_step: int  # samples per chunk; one LM step
    max_model_len: int  # LM positions available to prompt + text + generated audio
    attention: str | None = None  # attention implementation, where the engine has a choice
    inference_timesteps: int | None = None  # set when the engine fixes it server-wide
    max_batch: int = 1  # sequences generated at once (the engine's `capacity`)

    @property
    def step_seconds(self) -> float:
        """Seconds of audio one LM step (one chunk) makes."""
        return self.samples_per_step / self.sample_rate

    def fits(self, prompt_positions: int, text_tokens: int, max_length: int) -> bool:
        """Whether a voice prompt, a text and the most audio steps it may generate fit one window."""
        return prompt_positions + text_tokens + 1 + steps_cap(text_tokens, max_length) <= self.max_model_len


@runtime_checkable
class Engine(Protocol):
    """What the speech service needs from a model runtime.

    `generate` returns an async iterator of mono float32 chunks in [-1, 1] at `info.sample_rate`.
    Leaving the iteration early (break, exception, `aclose`) must stop the generation within one
    step and free its capacity.
    """

    @property
    def info(self) -> EngineInfo: ...

    @property
    def ready(self) -> bool: ...

    @property
    def capacity(self) -> int:
        """Sequences the engine generates at once. Known from construction, before `start`: the server
        sizes its admission from it."""
        ...

    async def start(self) -> None: ...

    def generate(
        self, request: SynthesisRequest, stats: GenerationStats | None = None
    ) -> AsyncIterator[np.ndarray]: ...

    def count_tokens(self, text: str) -> int:
        """Text tokens `text` costs (cheap enough to call on the event loop)."""
        ...

    async def encode_voice(self, wav_path: str, transcript: str | None, key: str) -> VoicePrompt: ...

    async def release_voice(self, voice: VoicePrompt) -> None:
        """Forget an encoded voice the registry no longer uses (engines that hold prompts server-side)."""
        ...

    async def close(self) -> None: ...
