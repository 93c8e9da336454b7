"""A simulated batching engine: nano-vllm's scheduling at GPU rates, without a model (`--engine sim`).

For benchmarks of the server around the engine (HTTP, admission, encoding, streaming) and for
high-concurrency tests on machines without a GPU; never a stand-in for the real engines in functional
tests. It imports nothing heavier than numpy and needs no checkpoint.

One asyncio task runs the step loop, as nano-vllm's scheduler does: at most `max_num_seqs` sequences run;
waiting ones join, finished and abandoned ones leave, between steps. A step over n sequences takes
`step_ms + step_ms_per_seq * n` milliseconds (slept, never spent: the loop stays free) and gives each
running sequence one chunk of VoxCPM2's size and rate. The chunk is a tone whose pitch is a hash of the
text, voice and seed: deterministic, never silent, and cheap (one precomputed array per pitch).

Default step cost (docs/configuration.md): 10 ms + 0.06 ms per sequence. At 256 sequences a step takes
25.4 ms and yields 256 x 0.16 s of audio: ~1,600 audio-seconds per second, about the compute ceiling
estimated for one H100 with the full model (~88 GFLOP per step per sequence: ~1,700 audio-s/s). At one
sequence a step takes ~10 ms, a little under what nano-vllm-voxcpm publishes for one stream (RTF 0.076 on
an H800 and 0.086 on an RTX 4090, i.e. 12-14 ms per 0.16 s step): a server that keeps up with this keeps
up with the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import wave
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

from voxport.engine.base import (
    SAMPLE_RATE,
    SAMPLES_PER_STEP,
    EngineError,
    EngineInfo,
    EngineInputError,
    EngineUnavailable,
    GenerationStats,
    SynthesisRequest,
    VoicePrompt,
    collapse_whitespace,
)
from voxport.engine.nanovllm import generation_length, prompt_positions

log = logging.getLogger("voxport.engine.sim")

# Tones repeat exactly within one chunk (a whole number of periods), so consecutive chunks join without
# a click and one array per pitch serves every step: pitch = k x 6.25 Hz, k in [16, 80): 100-500 Hz.
_LOWEST_PERIODS = 16
_PITCHES = 64
_AMPLITUDE = 0.25
# A loop that fell behind (a busy event loop) owes at most this many steps: it catches up, but never in
# a burst that would make the simulated GPU look faster than it is.
_MAX_CATCH_UP_STEPS = 1


class _Sequence:
    """One generation in the engine: waiting, then running until its steps are done or it is abandoned."""

    __slots__ = ("chunk", "steps_left", "stats", "out")

    def __init__(self, chunk: np.ndarray, steps: int, stats: GenerationStats):
        self.chunk = chunk
        self.steps_left = steps
        self.stats = stats
        # Unbounded, as nano-vllm's output queue is: the engine never waits for a slow reader.
        self.out: asyncio.Queue[np.ndarray | BaseException | None] = asyncio.Queue()


class SimEngine:
    def __init__(
        self,
        *,
        max_num_seqs: int = 256,
        max_model_len: int = 4096,
        step_ms: float = 10.0,
        step_ms_per_seq: float = 0.06,
    ):
        self._max_num_seqs = max_num_seqs
        self._max_model_len = max_model_len
        self._step_ms = step_ms
        self._step_ms_per_seq = step_ms_per_seq
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._tones: dict[int, np.ndarray] = {}
        self._info: EngineInfo | None = None
        self._closed = False
        self.voices_held: dict[str, int] = {}  # encoded voices not yet released, by key
        # Observable effects, for tests and metrics: sequence-steps (as the other engines count them),
        # batch steps of the loop, and the widest batch any step ran.
        self.steps_generated = 0
        self.batch_steps = 0
        self.widest_batch = 0

    # -- Engine protocol -------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineUnavailable("the engine is not loaded")
        return self._info

    @property
    def capacity(self) -> int:
        return self._max_num_seqs

    @property
    def ready(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closed

    @property
    def running(self) -> int:
        """Sequences in the current batch."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Sequences queued inside the engine for a batch slot."""
        return len(self._waiting)

    async def start(self) -> None:
        if self._closed:
            raise EngineUnavailable("the engine is closed")
        self._wake = asyncio.Event()
        self._info = EngineInfo(
            name="sim",
            model="none (simulated)",
            device=f"simulated ({self._step_ms:g} ms + {self._step_ms_per_seq:g} ms per sequence per step)",
            dtype="float32",
            sample_rate=SAMPLE_RATE,
            samples_per_step=SAMPLES_PER_STEP,
            max_model_len=self._max_model_len,
            max_batch=self.capacity,
        )
        self._task = asyncio.create_task(self._run(), name="voxport-sim-engine")
        log.info(
            "sim engine ready: max_num_seqs %d, max_model_len %d, step %g ms + %g ms per sequence",
            self._max_num_seqs,
            self._max_model_len,
            self._step_ms,
            self._step_ms_per_seq,
        )

    def count_tokens(self, text: str) -> int:
        # No tokenizer: about four UTF-8 bytes per token, as byte-level BPE gives for English. Only
        # lengths depend on it (6 steps per token + 10, and the window).
        return len(text.encode()) // 4 + 1

    async def encode_voice(self, wav_path: str, transcript: str | None, key: str) -> VoicePrompt:
        self._require_ready()
        frames, rate = await asyncio.to_thread(_frames, wav_path)
        # One LM position per 0.16 s of prompt audio, as the real encoders give (25 Hz latents, 4 a patch).
        patches = frames * SAMPLE_RATE // (rate * SAMPLES_PER_STEP)
        self.voices_held[key] = self.voices_held.get(key, 0) + 1
        if transcript:
            handle = {"transcript": transcript}
            return VoicePrompt(key=key, mode="continuation", positions=patches, handle=handle)
        # Reference audio sits between its start and end marker tokens.
        return VoicePrompt(key=key, mode="reference", positions=patches + 2, handle={})

    async def release_voice(self, voice: VoicePrompt) -> None:
        held = self.voices_held.get(voice.key, 0)
        if held <= 1:
            self.voices_held.pop(voice.key, None)
        else:
            self.voices_held[voice.key] = held - 1

    def generate(
        self, request: SynthesisRequest, stats: GenerationStats | None = None
    ) -> AsyncIterator[np.ndarray]:
        return self._stream(request, stats if stats is not None else GenerationStats())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_all(EngineUnavailable("the engine was closed"))

    # -- requests --------------------------------------------------------------------------------

    async def _stream(self, request: SynthesisRequest, stats: GenerationStats) -> AsyncIterator[np.ndarray]:
        self._require_ready()
        text = collapse_whitespace(request.text)
        if not text:
            raise EngineInputError("input is empty after whitespace normalisation", param="input")
        text_tokens = self.count_tokens(text)
        stats.input_tokens = text_tokens
        # The window is counted as nano-vllm counts it, so that a request fits here exactly when it would.
        positions = prompt_positions(self.count_tokens, text, text_tokens, _continued(request))
        steps = generation_length(text_tokens, request.max_length, positions, self._max_model_len)
        if steps < 1:
            raise EngineInputError(
                f"input is too long for one generation: it needs {positions} positions before any "
                f"audio, the server's window is {self._max_model_len}; shorten `input`",
                param="input",
            )
        seq = _Sequence(self._tone(text, request), steps, stats)
        self._waiting.append(seq)
        assert self._wake is not None
        self._wake.set()
        try:
            while True:
                item = await seq.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Finished, failed or abandoned: the slot is free for the next step.
            self._leave(seq)

    def _leave(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(seq)

    def _tone(self, text: str, request: SynthesisRequest) -> np.ndarray:
        voice = request.voice.key if request.voice is not None else ""
        key = f"{text}\0{voice}\0{request.seed}"
        if request.continuation is not None:  # a continued segment is another generation
            key += f"\0{request.continuation.text}"
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        periods = _LOWEST_PERIODS + int.from_bytes(digest, "little") % _PITCHES
        tone = self._tones.get(periods)
        if tone is None:
            phase = np.arange(SAMPLES_PER_STEP, dtype=np.float64) * (2 * np.pi * periods / SAMPLES_PER_STEP)
            tone = (_AMPLITUDE * np.sin(phase)).astype(np.float32)
            tone.flags.writeable = False  # shared by every chunk of that pitch: readers copy to change it
            self._tones[periods] = tone
        return tone

    def _require_ready(self) -> None:
        if not self.ready:
            raise EngineUnavailable("the sim engine is not running")

    # -- the step loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        try:
            while True:
                while self._waiting and len(self._running) < self._max_num_seqs:
                    self._running.append(self._waiting.popleft())
                if not self._running:
                    self._wake.clear()
                    await self._wake.wait()
                    deadline = loop.time()
                    continue
                width = len(self._running)
                step = (self._step_ms + self._step_ms_per_seq * width) / 1000
                # Absolute deadlines, so that timer lateness does not add up over thousands of steps.
                deadline = max(deadline + step, loop.time() - _MAX_CATCH_UP_STEPS * step)
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                self.batch_steps += 1
                self.widest_batch = max(self.widest_batch, width)
                # Sequences abandoned during the step have left already; none joined during it.
                for seq in self._running:
                    seq.out.put_nowait(seq.chunk)
                    seq.stats.steps += 1
                    self.steps_generated += 1
                    seq.steps_left -= 1
                    if seq.steps_left <= 0:
                        seq.out.put_nowait(None)
                self._running = [seq for seq in self._running if seq.steps_left > 0]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must fail the waiting requests, not hang them
            log.exception("sim engine step loop failed")
            self._fail_all(EngineError(f"the sim engine failed: {exc}"))
            raise

    def _fail_all(self, exc: EngineError) -> None:
        for seq in [*self._running, *self._waiting]:
            seq.out.put_nowait(type(exc)(str(exc)))  # one exception object per waiter: tracebacks stay apart
        self._running.clear()
        self._waiting.clear()


def _continued(request: SynthesisRequest) -> VoicePrompt | None:
    """The prompt the request occupies the window with: with a continuation, the previous segment's audio
    (one position per step, as the encoders give) and text, after the voice's reference audio if any."""
    voice, continuation = request.voice, request.continuation
    if continuation is None:
        return voice
    positions = continuation.patches(SAMPLES_PER_STEP)
    if voice is not None and voice.mode == "reference":
        positions += voice.positions
    handle = {"transcript": collapse_whitespace(continuation.text)}
    return VoicePrompt(
        key=voice.key if voice else "", mode="continuation", positions=positions, handle=handle
    )


def _frames(wav_path: str) -> tuple[int, int]:
    """(frames, rate) of a wav file (voxport writes 16-bit PCM; anything else is decoded)."""
    try:
        with wave.open(wav_path, "rb") as handle:
            return handle.getnframes(), handle.getframerate()
    except (wave.Error, EOFError):
        from voxport.audio import decode_file

        rate = 16_000
        return len(decode_file(wav_path, rate, 600.0)), rate
