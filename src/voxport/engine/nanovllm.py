"""The production engine: nano-vllm-voxcpm, continuous batching of many generations on one GPU.

The package runs the model in a worker process (spawned: the server's entry point must be spawn-safe,
which `voxport serve` is) and talks to it through an asyncio server pool. This module adapts that pool
to voxport's Engine protocol: a voice is encoded to latents once, then sent with each request that uses
it (as a continuation prompt with its transcript, or as reference audio); the generation length is
chosen here (the package has no stop-length guard of its own and rejects a request that could overrun
`max_model_len`); and closing a generation's iterator cancels it in the worker.

CI runs this module on CPU over the package's own pool and worker loop, with the CUDA worker process and
model step stood in for (tests/test_nanovllm_serving.py), and the package's model code with voxport's
checkpoints and attention drop-in (tests/test_nanovllm_cpu.py). See docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxport.engine.base import (
    SAMPLES_PER_STEP,
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

log = logging.getLogger("voxport.engine.nanovllm")

# VoxCPM2 framing: one LM step is one patch of 4 latent frames (64 floats each); see SAMPLES_PER_STEP.
_PATCH_SIZE = 4
_FEAT_DIM = 64


def prompt_positions(
    count_tokens: Callable[[str], int], text: str, text_tokens: int, voice: VoicePrompt | None
) -> int:
    """LM positions a request occupies before its first audio step, counted as nano-vllm counts them.

    The package tokenizes the voice's transcript and the text as one string (`text_tokens` is the text's
    count alone, used as it is when there is no transcript), then appends the audio-start token; a
    reference voice adds its latent patches between two marker tokens, a continuation voice its patches
    after the text.
    """
    handle = voice.handle if voice is not None else {}
    transcript = handle.get("transcript", "") if isinstance(handle, dict) else ""
    joined = count_tokens(transcript + text) if transcript else text_tokens
    return joined + 1 + (voice.positions if voice is not None else 0)


def generation_length(text_tokens: int, max_length: int, prompt_positions: int, max_model_len: int) -> int:
    """Steps to allow a generation: VoxCPM2's own cap (6 per text token + 10), the request's
    `max_length`, and what is left of the window after the prompt (text, audio start, voice prompt).
    0 means the request cannot fit at all."""
    room = max_model_len - prompt_positions
    return max(0, min(steps_cap(text_tokens, max_length), room))


def _worker_died(exc: BaseException) -> bool:
    """Whether the pool says its worker process is gone (nano-vllm-voxcpm's public WorkerDiedError)."""
    try:
        from nanovllm_voxcpm.utils.worker_link import WorkerDiedError
    except ImportError:  # an older package without it: no way to tell from outside
        return False
    return isinstance(exc, WorkerDiedError)


class NanoVllmEngine:
    def __init__(
        self,
        model_dir: str,
        *,
        inference_timesteps: int = 10,
        max_num_seqs: int = 256,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        attention: str = "auto",
    ):
        self._model_dir = model_dir
        self._timesteps = inference_timesteps
        self._max_num_seqs = max_num_seqs
        self._max_model_len = max_model_len
        self._gpu_memory_utilization = gpu_memory_utilization
        self._enforce_eager = enforce_eager
        self._attention = attention
        self._pool: Any = None
        self._tokenizer: Any = None
        self._info: EngineInfo | None = None
        self._closed = False
        self._worker_died = False  # learnt from the pool's WorkerDiedError: its link state is private
        self.steps_generated = 0

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineUnavailable("the engine is not loaded")
        return self._info

    @property
    def capacity(self) -> int:
        # Every batch slot nano-vllm schedules into; its KV cache may hold fewer long sequences at once,
        # in which case the rest wait inside its scheduler.
        return self._max_num_seqs

    @property
    def ready(self) -> bool:
        return self._pool is not None and not self._closed and not self._worker_died

    async def start(self) -> None:
        from voxport.engine.sdpa_attention import install_as_flash_attn

        # "auto" keeps a real flash-attn; without one the drop-in decodes with the Triton kernel, which
        # nano-vllm's own Triton dependency guarantees can be imported here.
        decode = "sdpa" if self._attention == "sdpa" else "triton"
        attention = install_as_flash_attn(force=self._attention in ("sdpa", "triton"), decode=decode)
        if self._attention == "flash-attn" and attention != "flash-attn":
            raise EngineError("--attention flash-attn was asked for, but flash_attn is not importable")
        from nanovllm_voxcpm import VoxCPM
        from nanovllm_voxcpm.models.voxcpm2.utils import mask_multichar_chinese_tokens
        from transformers import LlamaTokenizerFast

        started = time.perf_counter()
        self._tokenizer = mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(self._model_dir))
        # Inside a running loop this returns the asyncio server pool (one worker process per device).
        self._pool = VoxCPM.from_pretrained(
            self._model_dir,
            inference_timesteps=self._timesteps,
            max_num_seqs=self._max_num_seqs,
            max_model_len=self._max_model_len,
            gpu_memory_utilization=self._gpu_memory_utilization,
            enforce_eager=self._enforce_eager,
            devices=[0],
        )
        await self._pool.wait_for_ready()
        model_info = await self._pool.get_model_info()
        import torch

        self._info = EngineInfo(
            name="nanovllm",
            model=self._model_dir,
            device=f"cuda:0 ({torch.cuda.get_device_name(0)})",
            dtype="bfloat16",
            sample_rate=int(model_info["sample_rate"]),
            samples_per_step=SAMPLES_PER_STEP,
            max_model_len=self._max_model_len,
            attention=attention,
            inference_timesteps=self._timesteps,
            max_batch=self.capacity,
        )
        async for _ in self.generate(
            SynthesisRequest(text="Warm up.", max_length=2, inference_timesteps=self._timesteps)
        ):
            pass
        log.info(
            "nano-vllm engine ready in %.1fs: %s, attention %s, max_num_seqs %d, max_model_len %d",
            time.perf_counter() - started,
            self._info.device,
            attention,
            self._max_num_seqs,
            self._max_model_len,
        )

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            raise EngineUnavailable("the engine is not loaded")
        return len(self._tokenizer(text))

    async def _encode_latents(self, wav: bytes) -> bytes:
        """The pool's audio encoder on a wav file's bytes; a dead worker is the engine unavailable."""
        try:
            return await self._pool.encode_latents(wav, "wav")
        except Exception as exc:
            if _worker_died(exc):
                self._worker_died = True
                raise EngineUnavailable(f"the nano-vllm worker died: {exc}") from exc
            raise

    async def encode_voice(self, wav_path: str, transcript: str | None, key: str) -> VoicePrompt:
        self._require_ready()
        data = await asyncio.to_thread(Path(wav_path).read_bytes)
        latents = await self._encode_latents(data)
        patches = len(latents) // 4 // (_FEAT_DIM * _PATCH_SIZE)  # float32 latent frames, 4 per patch
        if transcript:
            # Sent with each request, as the pool's add_prompt/prompt_id would send them (it only keeps
            # the same two values in a dict), without its second encoding of the clip.
            return VoicePrompt(
                key=key,
                mode="continuation",
                positions=patches,
                handle={"prompt_latents": latents, "transcript": transcript},
            )
        # Reference audio sits between its start and end marker tokens.
        return VoicePrompt(
            key=key, mode="reference", positions=patches + 2, handle={"ref_audio_latents": latents}
        )

    async def release_voice(self, voice: VoicePrompt) -> None:
        """Nothing to do: a voice's latents live in its handle, dropped with its last reference."""

    def generate(
        self, request: SynthesisRequest, stats: GenerationStats | None = None
    ) -> AsyncIterator[np.ndarray]:
        return self._stream(request, stats if stats is not None else GenerationStats())

    async def _stream(self, request: SynthesisRequest, stats: GenerationStats) -> AsyncIterator[np.ndarray]:
        self._require_ready()
        if request.inference_timesteps != self._timesteps:
            raise EngineInputError(
                f"this server runs {self._timesteps} inference timesteps for every request (nano-vllm sets "
                f"them server-wide); leave 'inference_timesteps' out or send {self._timesteps}",
                param="inference_timesteps",
            )
        text = collapse_whitespace(request.text)
        if request.normalize:
            text = await asyncio.to_thread(normalize_text, text)
        voice = await self._continued(request)
        handle = voice.handle if voice is not None else {}
        text_tokens = self.count_tokens(text)
        stats.input_tokens = text_tokens
        positions = prompt_positions(self.count_tokens, text, text_tokens, voice)
        steps = generation_length(text_tokens, request.max_length, positions, self._max_model_len)
        if steps < 1:
            raise EngineInputError(
                f"input is too long for one generation: it needs {positions} positions before any "
                f"audio, the server's window is {self._max_model_len}; shorten `input`",
                param="input",
            )
        kwargs: dict[str, Any] = {
            "max_generate_length": steps,
            "cfg_value": request.cfg_value,
            "seed": request.seed,
        }
        if "prompt_latents" in handle:
            kwargs["prompt_latents"] = handle["prompt_latents"]
            kwargs["prompt_text"] = handle["transcript"]
        if "ref_audio_latents" in handle:  # with prompt latents too: reference + continuation
            kwargs["ref_audio_latents"] = handle["ref_audio_latents"]
        stream = self._pool.generate(target_text=text, **kwargs)
        try:
            async for wav in stream:
                self.steps_generated += 1
                stats.steps += 1
                yield np.asarray(wav, dtype=np.float32).reshape(-1)
        except ValueError as exc:  # the package validates requests with ValueError
            raise EngineInputError(str(exc), param="input") from exc
        except (EngineInputError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            if _worker_died(exc):
                self._worker_died = True
                raise EngineUnavailable(f"the nano-vllm worker died: {exc}") from exc
            raise EngineError(f"generation failed: {exc}") from exc
        finally:
            await stream.aclose()  # cancels the sequence in the worker if it is still running

    async def _continued(self, request: SynthesisRequest) -> VoicePrompt | None:
        """The request's voice, or with a continuation, a prompt of the previous segment's latents and text
        (after the voice's reference audio when it has one)."""
        voice, continuation = request.voice, request.continuation
        if continuation is None:
            return voice
        data = await asyncio.to_thread(continuation.wav_bytes, self.info.sample_rate)
        latents = await self._encode_latents(data)
        handle: dict[str, Any] = {
            "prompt_latents": latents,
            "transcript": collapse_whitespace(continuation.text),
        }
        positions = len(latents) // 4 // (_FEAT_DIM * _PATCH_SIZE)
        if voice is not None and "ref_audio_latents" in voice.handle:
            handle["ref_audio_latents"] = voice.handle["ref_audio_latents"]
            positions += voice.positions
        key = voice.key if voice is not None else ""
        return VoicePrompt(key=key, mode="continuation", positions=positions, handle=handle)

    def _require_ready(self) -> None:
        if not self.ready:
            raise EngineUnavailable("the nano-vllm engine is not running")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.stop()
