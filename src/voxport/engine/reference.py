"""The reference engine: the `voxcpm` package, one generation at a time, on CPU, MPS or CUDA.

One voxcpm model object holds a batch-1 static KV cache and patches modules while it streams, so
it can serve exactly one generation at a time. Every model call (load, voice encoding, generation)
therefore runs as a job on one dedicated worker thread, taken FIFO; the event loop only waits on
asyncio queues fed from that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from voxport.engine.base import (
    EngineError,
    EngineInfo,
    EngineInputError,
    EngineUnavailable,
    GenerationStats,
    SynthesisRequest,
    VoicePrompt,
    collapse_whitespace,
    steps_cap,
)
from voxport.engine.compat import normalize_text

log = logging.getLogger("voxport.engine.reference")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_STOP = object()


class _Job:
    __slots__ = ("run", "cancelled", "fail")

    def __init__(self, run: Callable[[], None], fail: Callable[[BaseException], None]):
        self.run = run
        self.fail = fail
        self.cancelled = threading.Event()


def default_cpu_threads() -> int:
    """One CPU fewer than this process may use (at least one).

    torch's own default takes every core for its intra-op pool; a pool op waits for its slowest thread,
    so each time the event loop (HTTP, encoding) takes a core, a step stalls. On 2 vCPUs, one thread gave
    29 % more audio per second through the server than two (docs/benchmarks.md).
    """
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        available = os.cpu_count() or 1
    return max(1, available - 1)


class ReferenceEngine:
    def __init__(self, model_dir: str, device: str = "auto", cpu_threads: int | None = None):
        self._model_dir = model_dir
        self._device = None if device == "auto" else device
        self._cpu_threads = cpu_threads
        self.torch_threads: int | None = None  # what torch reports in the worker thread once loaded
        self._jobs: queue.Queue[_Job | object] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="voxport-reference-engine", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model: Any = None
        self._info: EngineInfo | None = None
        self._ready = False
        self._closed = False
        self.steps_generated = 0  # LM steps run since start, for tests and metrics

    # -- Engine protocol -------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineUnavailable("the engine is not loaded")
        return self._info

    @property
    def capacity(self) -> int:
        return 1  # one batch-1 model object, one generation at a time (see the module docstring)

    @property
    def ready(self) -> bool:
        return self._ready and not self._closed and self._thread.is_alive()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()
        await self._call(self._load)
        await self._call(self._warm_up)
        self._ready = True

    def generate(
        self, request: SynthesisRequest, stats: GenerationStats | None = None
    ) -> AsyncIterator[np.ndarray]:
        return self._stream(request, stats if stats is not None else GenerationStats())

    def count_tokens(self, text: str) -> int:
        if self._model is None:
            raise EngineUnavailable("the engine is not loaded")
        # The fast tokenizer is thread-safe and takes well under a millisecond for a sentence.
        return self._tokens(collapse_whitespace(text))

    async def encode_voice(self, wav_path: str, transcript: str | None, key: str) -> VoicePrompt:
        return await self._call(lambda: self._encode(wav_path, transcript, key))

    async def release_voice(self, voice: VoicePrompt) -> None:
        """Nothing to do: the prompt cache is an ordinary object, dropped with its last reference."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready = False
        self._jobs.put(_STOP)
        if self._thread.is_alive():
            # A generation in progress notices its cancelled flag within one step.
            await asyncio.to_thread(self._thread.join, 30)

    # -- event-loop side -------------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        if self._closed or not self._thread.is_alive():
            raise EngineUnavailable("the engine is closed")
        self._jobs.put(job)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Hand a result from the worker thread to the event loop."""
        assert self._loop is not None
        # A closed loop (shutdown) raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the worker thread, in FIFO order with generations, and await its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(setter: Callable[[Any], None], value: Any) -> None:
            if not future.done():
                setter(value)

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
                self._post(settle, future.set_exception, exc)
            else:
                self._post(settle, future.set_result, result)

        self._submit(_Job(run, lambda exc: self._post(settle, future.set_exception, exc)))
        return await future

    async def _stream(self, request: SynthesisRequest, stats: GenerationStats) -> AsyncIterator[np.ndarray]:
        chunks: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, payload: Any = None) -> None:
            self._post(chunks.put_nowait, (kind, payload))

        job = _Job(lambda: None, lambda exc: emit("error", exc))
        job.run = lambda: self._generate(request, stats, job.cancelled, emit)
        self._submit(job)
        try:
            while True:
                kind, payload = await chunks.get()
                if kind == "chunk":
                    yield payload
                elif kind == "done":
                    return
                else:
                    raise payload
        finally:
            # The consumer is done (finished, failed or went away): stop the worker at the next step.
            job.cancelled.set()

    # -- worker-thread side ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            assert isinstance(job, _Job)
            if job.cancelled.is_set():
                continue
            try:
                job.run()
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any one job
                if not isinstance(exc, EngineInputError):
                    log.exception("reference engine job failed")
                job.fail(exc)
        # Whatever is still queued will never run: fail it so that no caller waits forever.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Job):
                job.fail(EngineUnavailable("the engine was closed"))

    def _load(self) -> None:
        from voxport.engine.compat import (
            install_torchaudio_placeholder,
            quiet_third_party,
            silence_progress_bars,
        )

        if install_torchaudio_placeholder():
            log.info("torchaudio cannot load here; using a placeholder (VoxCPM2 does not need it)")
        import torch

        # Set from the worker thread, which runs every forward pass: OpenMP's thread count is per thread.
        torch.set_num_threads(self._cpu_threads or default_cpu_threads())
        self.torch_threads = torch.get_num_threads()
        log.info("reference engine: %d torch CPU threads", self.torch_threads)
        try:
            from voxcpm import VoxCPM
        except ImportError as exc:
            raise EngineError(
                f"the voxcpm package cannot be imported ({exc}); scripts/dev installs it, or run "
                "`pip install --no-deps voxcpm==2.0.3` (its declared dependencies are not needed)"
            ) from exc

        silence_progress_bars()
        started = time.perf_counter()
        with quiet_third_party(log):
            tts = VoxCPM.from_pretrained(
                self._model_dir, load_denoiser=False, optimize=False, device=self._device
            )
        model = tts.tts_model
        self._model = model
        self._info = EngineInfo(
            name="reference",
            model=self._model_dir,
            device=str(model.device),
            dtype=str(model.config.dtype),
            sample_rate=int(model.sample_rate),
            samples_per_step=int(model.patch_size * model._decode_chunk_size),
            max_model_len=int(model.config.max_length),
            max_batch=self.capacity,
        )
        log.info(
            "reference engine loaded %s on %s (%s) in %.2fs",
            self._model_dir,
            self._info.device,
            self._info.dtype,
            time.perf_counter() - started,
        )

    def _warm_up(self) -> None:
        """One short generation so that lazy initialisation is not paid by the first request."""
        gen = self._model.generate_with_prompt_cache_streaming(
            target_text="Warm up.", prompt_cache=None, min_len=1, max_len=2, retry_badcase=False
        )
        try:
            for _ in gen:
                pass
        finally:
            gen.close()

    def _tokens(self, text: str) -> int:
        return len(self._model.text_tokenizer(text))

    def _encode(self, wav_path: str, transcript: str | None, key: str) -> VoicePrompt:
        model = self._model
        if transcript:
            cache = model.build_prompt_cache(prompt_text=transcript, prompt_wav_path=wav_path)
            positions = int(cache["audio_feat"].shape[0]) + self._tokens(transcript)
        else:
            cache = model.build_prompt_cache(reference_wav_path=wav_path)
            positions = int(cache["ref_audio_feat"].shape[0]) + 2  # ref start / end tokens
        return VoicePrompt(key=key, mode=cache["mode"], positions=positions, handle=cache)

    def _prompt(self, request: SynthesisRequest) -> tuple[Any, int]:
        """The prompt cache a request generates after, and the LM positions it takes. With a continuation,
        the previous segment's text and audio are the continuation prompt, after the voice's reference
        audio when it has one (voxcpm's "ref_continuation" mode)."""
        voice, continuation = request.voice, request.continuation
        if continuation is None:
            return (voice.handle, voice.positions) if voice else (None, 0)
        text = collapse_whitespace(continuation.text)
        with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
            wav.write(continuation.wav_bytes(self.info.sample_rate))
            wav.flush()
            cache = self._model.build_prompt_cache(prompt_text=text, prompt_wav_path=wav.name)
        positions = int(cache["audio_feat"].shape[0]) + self._tokens(text)
        handle = voice.handle if voice is not None else None
        if isinstance(handle, dict) and "ref_audio_feat" in handle:
            cache["ref_audio_feat"] = handle["ref_audio_feat"]
            cache["mode"] = "ref_continuation"
            positions += int(handle["ref_audio_feat"].shape[0]) + 2
        return cache, positions

    def _prepare_text(self, request: SynthesisRequest) -> str:
        text = collapse_whitespace(request.text)
        if request.normalize:
            text = normalize_text(text)
        if not text:
            raise EngineInputError("input is empty after whitespace normalisation", param="input")
        return text

    def _generate(
        self,
        request: SynthesisRequest,
        stats: GenerationStats,
        cancelled: threading.Event,
        emit: Callable[..., None],
    ) -> None:
        import torch

        text = self._prepare_text(request)
        text_tokens = self._tokens(text)
        stats.input_tokens = text_tokens
        steps = steps_cap(text_tokens, request.max_length)
        prompt_cache, prompt_positions = self._prompt(request)
        needed = prompt_positions + text_tokens + 1 + steps
        if needed > self.info.max_model_len:
            raise EngineInputError(
                f"input is too long for one generation: {text_tokens} text tokens and up to {steps} "
                f"audio steps need {needed} positions, the model has {self.info.max_model_len}; "
                "shorten `input` or lower `max_length`",
                param="input",
            )
        if request.seed is None:
            torch.seed()
        else:
            torch.manual_seed(request.seed)
        stream = self._model.generate_with_prompt_cache_streaming(
            target_text=text,
            prompt_cache=prompt_cache,
            min_len=2,
            max_len=request.max_length,
            inference_timesteps=request.inference_timesteps,
            cfg_value=request.cfg_value,
            retry_badcase=False,
        )
        try:
            # The generator computes one step per `next`: checking the flag before each one
            # stops an abandoned generation within one step.
            while not cancelled.is_set():
                try:
                    wav, _, _ = next(stream)
                except StopIteration:
                    break
                self.steps_generated += 1
                stats.steps += 1
                emit("chunk", wav.squeeze(0).to(torch.float32).cpu().numpy())
        except EngineInputError:
            raise
        except Exception as exc:
            raise EngineError(f"generation failed: {exc}") from exc
        finally:
            stream.close()
        emit("done")
