"""engine/nanovllm.py's serving code, run against nano-vllm-voxcpm's own pool, server and request code on CPU.

What is real here: voxport's NanoVllmEngine (start, encode_voice, generate, close) and, below it, the
package's `VoxCPM.from_pretrained`, `AsyncVoxCPM2ServerPool`, `AsyncVoxCPM2Server` (its op table, stream
queues, cancel-on-close, queue bridge thread), its `WorkerLink` watchdog, the worker's `main_loop` and
`VoxCPM2ServerImpl` (request checks, librosa decode of the voice's wav), and the worker engine's
`VoxCPM2Engine.add_request` (tokenizing, prompt layout, and the `max_model_len` check that refuses a request
whose prompt plus `max_generate_length` could overrun the window) and `encode_latents`, with the tiny
checkpoint's tokenizer and audio VAE.

What is a STAND-IN, because the package cannot run it on a CPU (its worker is a spawned CUDA process):
- `ThreadWorker`, a fault-injection stand-in for the worker process: the package's real `main_loop` runs in
  a thread; its sentinel is a pipe whose write end closes when that "process" ends, exactly what the
  package's watchdog waits on for a real process. `Harness.kill()` ends it as the OOM killer would (exit
  code -9); `Harness.hang` stops it from stepping (a wedged GPU).
- `CpuStepEngine`, the worker engine past `add_request`: the scheduler and CUDA model runner are replaced by
  a step that emits one 7680-sample float32 chunk per running sequence until its `max_generate_length`
  (the tiny model's audio is checked in tests/test_nanovllm_cpu.py, not here), and the runner's CUDA VAE
  encode by the same VAE call on CPU.
Everything the tests assert on is what crossed the process boundary (the worker's `add_request` and
`cancel` calls) and what the package's own code made of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import signal
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tests.gates import require_module
from voxport.engine import sdpa_attention
from voxport.engine.base import (
    SAMPLES_PER_STEP,
    Continuation,
    EngineError,
    EngineInputError,
    EngineUnavailable,
    GenerationStats,
    SynthesisRequest,
)
from voxport.engine.nanovllm import NanoVllmEngine
from voxport.engine.sdpa_attention import install_as_flash_attn

# As in test_nanovllm_cpu.py: skipped only where not installed (failed under VOXPORT_REQUIRE_PACKAGES).
require_module("triton", "nano-vllm-voxcpm imports triton: the dev extra installs it")
install_as_flash_attn()
require_module("nanovllm_voxcpm", "scripts/dev installs nano-vllm-voxcpm")

from nanovllm_voxcpm.layers.audio_vae_v2 import AudioVAEV2  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2 import server as nv_server  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2.config import VoxCPM2Config  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2.engine import VoxCPM2Engine  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2.utils import mask_multichar_chinese_tokens  # noqa: E402
from transformers import LlamaTokenizerFast  # noqa: E402

MAX_MODEL_LEN = 320  # small, so that ordinary texts reach the window and the clamp decides the length
DEADLINE = 60.0  # seconds; generous, for a loaded 2-core CI machine


class WorkerKilled(BaseException):
    """Ends the stand-in worker's thread, as SIGKILL ends the real worker process."""


class Harness:
    """The test's handle on the stand-in worker: what reached it, and the faults to inject."""

    def __init__(self, vae: AudioVAEV2):
        self.vae = vae
        self.step_budget: int | None = None  # steps the worker may still take; None: no limit
        self.hang = threading.Event()
        self.killed = threading.Event()
        self.impl: CpuServerImpl | None = None
        self.worker: ThreadWorker | None = None
        self.init_kwargs: dict = {}
        self.requests: list[dict] = []  # the worker's add_request calls, as they crossed the boundary
        self.sequences: dict[str, tuple[int, object]] = {}  # seq_id -> (package's prompt length, Sequence)
        self.encoded: list[bytes] = []  # latents the package's encoder returned
        self.cancelled: list[str] = []
        self.fds: list[int] = []

    def kill(self) -> None:
        self.killed.set()
        if self.worker is not None:
            self.worker.queue_in.put_nowait(WorkerKilled)  # wakes a worker parked on its queue

    @property
    def engine(self) -> CpuStepEngine:
        assert self.impl is not None, "the worker never started"
        return self.impl.llm


class WorkerQueue(queue.Queue):
    """The worker's command queue; a kill posted to it ends the worker where it waits."""

    def get(self, block=True, timeout=None):
        item = super().get(block, timeout)
        if item is WorkerKilled:
            raise WorkerKilled
        return item


class ThreadWorker:
    """STAND-IN for the spawned CUDA worker process: the package's main_loop in a thread, with a sentinel
    that becomes readable when it ends, as a process's does."""

    def __init__(self, harness: Harness, target, args, daemon: bool = True):
        self._harness = harness
        self._target, self._args = target, args
        self.queue_in = args[0]
        read, self._write = os.pipe()
        harness.fds.append(read)
        self.sentinel = read
        self.exitcode: int | None = None
        self._thread = threading.Thread(target=self._run, name="stand-in-worker", daemon=daemon)
        harness.worker = self

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        code = 1
        try:
            self._target(*self._args)
            code = 0
        except WorkerKilled:
            code = -9
        finally:
            self.exitcode = code
            os.close(self._write)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        self._harness.kill()

    kill = terminate


def thread_context(harness: Harness) -> types.SimpleNamespace:
    """What the package's server gets from `torch.multiprocessing.get_context("spawn")`."""

    def get_context(kind: str) -> types.SimpleNamespace:
        assert kind == "spawn"
        return types.SimpleNamespace(Queue=WorkerQueue, Process=functools.partial(ThreadWorker, harness))

    return types.SimpleNamespace(get_context=get_context)


class CpuStepEngine:
    """STAND-IN for VoxCPM2Engine past its request building: the package's own add_request and
    encode_latents run on this object; scheduling and the CUDA model runner are a chunk per step."""

    add_request = VoxCPM2Engine.add_request  # the package's request layout and max_model_len check
    encode_latents = VoxCPM2Engine.encode_latents  # its alignment padding, then the runner's encode

    def __init__(self, harness: Harness, model_path: str, max_model_len: int):
        self.harness = harness
        self.n_decode_pad_frames = 12
        self.feat_dim = 64
        self.patch_size = 4
        self.audio_start_token, self.ref_audio_start_token, self.ref_audio_end_token = 101, 103, 104
        self.block_size = 256
        self.max_model_len = max_model_len
        self.tokenizer = mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(model_path))
        self.model_runner = types.SimpleNamespace(vae=harness.vae, encode_latents=self._encode_cpu)
        self.running: list = []

    def _encode_cpu(self, wav: torch.Tensor) -> np.ndarray:
        """VoxCPM2Runner.encode_latents without its `.cuda()`."""
        vae = self.harness.vae
        return vae.encode(wav.float(), vae.sample_rate).permute(0, 2, 1).reshape(-1, self.feat_dim).numpy()

    def resolve_lora(self, name: str | None) -> None:
        assert name is None  # voxport never sends a LoRA
        return None

    def add_sequence(self, seq) -> None:
        self.harness.sequences[seq.seq_id] = (len(seq), seq)
        self.running.append(seq)

    def cancel_sequence(self, seq_id: str) -> None:
        self.harness.cancelled.append(seq_id)
        self.running = [s for s in self.running if s.seq_id != seq_id]

    def is_finished(self) -> bool:
        return not self.running

    def step(self) -> list:
        while self.harness.hang.is_set() and not self.harness.killed.is_set():
            time.sleep(0.01)
        if self.harness.killed.is_set():
            raise WorkerKilled
        if self.harness.step_budget is not None:
            if self.harness.step_budget <= 0:
                time.sleep(0.01)  # held back: no step, but commands (cancel) are still served between steps
                return []
            self.harness.step_budget -= 1
        out = []
        for seq in list(self.running):
            payload = seq.custom_payload
            rng = np.random.default_rng([abs(payload.seed or 0), len(payload.generated_waveforms)])
            payload.generated_waveforms.append(rng.uniform(-0.5, 0.5, SAMPLES_PER_STEP).astype(np.float32))
            done = len(payload.generated_waveforms) >= payload.max_generate_length
            if done:
                self.running.remove(seq)
            out.append(types.SimpleNamespace(seq_id=seq.seq_id, is_finished=done, custom_payload=payload))
        return out


class CpuServerImpl(nv_server.VoxCPM2ServerImpl):
    """The package's worker-side server (request checks, wav decoding, model info, cancel) over the
    CPU stand-in engine."""

    def __init__(
        self,
        harness: Harness,
        model_path: str,
        inference_timesteps: int,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        max_model_len: int,
        gpu_memory_utilization: float,
        enforce_eager: bool,
        devices: list[int],
        lora_config=None,
    ):
        harness.init_kwargs = {
            "model_path": model_path,
            "inference_timesteps": inference_timesteps,
            "max_num_seqs": max_num_seqs,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "devices": devices,
        }
        self.harness = harness
        self.lora_config = lora_config
        self.model_path = model_path
        self.llm = CpuStepEngine(harness, model_path, max_model_len)
        self.encoder_sample_rate = harness.vae.sample_rate
        self.output_sample_rate = harness.vae.out_sample_rate
        harness.impl = self

    def add_request(
        self,
        seq_id,
        target_text,
        prompt_latents=None,
        prompt_text="",
        max_generate_length=2000,
        temperature=1.0,
        cfg_value=1.0,
        ref_audio_latents=None,
        lora_name=None,
        seed=None,
    ):
        self.harness.requests.append(
            {
                "seq_id": seq_id,
                "target_text": target_text,
                "prompt_latents": prompt_latents,
                "prompt_text": prompt_text,
                "max_generate_length": max_generate_length,
                "temperature": temperature,
                "cfg_value": cfg_value,
                "ref_audio_latents": ref_audio_latents,
                "seed": seed,
            }
        )
        return super().add_request(
            seq_id,
            target_text,
            prompt_latents,
            prompt_text,
            max_generate_length,
            temperature,
            cfg_value,
            ref_audio_latents,
            lora_name,
            seed,
        )

    def encode_latents(self, wav: bytes, wav_format: str) -> bytes:
        latents = super().encode_latents(wav, wav_format)
        self.harness.encoded.append(latents)
        return latents


@pytest.fixture(scope="module")
def vae(tiny_model: Path) -> AudioVAEV2:
    config = VoxCPM2Config.model_validate_json((tiny_model / "config.json").read_text())
    model = AudioVAEV2(config=config.audio_vae_config).eval()
    model.load_state_dict(torch.load(tiny_model / "audiovae.pth")["state_dict"])
    return model


@pytest.fixture
async def served(tiny_model: Path, vae: AudioVAEV2, monkeypatch: pytest.MonkeyPatch):
    """A started NanoVllmEngine over the package's real pool, with the stand-in worker under it."""
    harness = Harness(vae)
    monkeypatch.setattr(nv_server, "mp", thread_context(harness))
    monkeypatch.setattr(nv_server, "VoxCPM2ServerImpl", functools.partial(CpuServerImpl, harness))
    real_signal = signal.signal

    def main_thread_only(signum, handler):  # main_loop ignores SIGINT; only a main thread may set that
        if threading.current_thread() is threading.main_thread():
            return real_signal(signum, handler)
        return signal.getsignal(signum)

    monkeypatch.setattr(signal, "signal", main_thread_only)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=0: "CPU stand-in")
    # The engine's start chooses the attention drop-in's decode kernel for the whole process (and for the
    # processes it starts, by environment): given back afterwards, so that later tests of the drop-in on
    # CPU (tests/test_sdpa_attention.py) do not find the Triton kernel chosen, with no GPU under it.
    monkeypatch.setattr(sdpa_attention, "_decode", sdpa_attention.decode_kernel())
    if sdpa_attention.DECODE_ENV in os.environ:
        monkeypatch.setenv(sdpa_attention.DECODE_ENV, os.environ[sdpa_attention.DECODE_ENV])
    else:
        monkeypatch.delenv(sdpa_attention.DECODE_ENV, raising=False)
    engine = NanoVllmEngine(str(tiny_model), max_num_seqs=8, max_model_len=MAX_MODEL_LEN, enforce_eager=True)
    await asyncio.wait_for(engine.start(), DEADLINE)
    try:
        yield engine, harness
    finally:
        harness.hang.clear()
        await asyncio.wait_for(engine.close(), DEADLINE)
        if harness.worker is not None:
            harness.worker.join(DEADLINE)
        for fd in harness.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def wav_file(path: Path, seconds: float, rate: int = 16000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    soundfile.write(path, rng.uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32), rate)
    return path


def patches_of(latents: bytes) -> int:
    return len(np.frombuffer(latents, dtype=np.float32)) // (64 * 4)


async def collect(engine: NanoVllmEngine, request: SynthesisRequest, stats: GenerationStats | None = None):
    async def run() -> list[np.ndarray]:
        return [chunk async for chunk in engine.generate(request, stats)]

    return await asyncio.wait_for(run(), DEADLINE)


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE:.0f}s")
        await asyncio.sleep(0.02)


async def test_an_engine_not_started_is_unavailable(tiny_model: Path) -> None:
    engine = NanoVllmEngine(str(tiny_model), max_num_seqs=3)
    assert not engine.ready and engine.capacity == 3
    with pytest.raises(EngineUnavailable):
        _ = engine.info
    with pytest.raises(EngineUnavailable):
        engine.count_tokens("Hello.")
    with pytest.raises(EngineUnavailable):
        await collect(engine, SynthesisRequest(text="Hello."))
    await engine.close()  # closing what never started is harmless


# --- start ---------------------------------------------------------------------------------------------


async def test_start_configures_the_pool_and_warms_up(served, tiny_model: Path) -> None:
    engine, harness = served
    assert harness.init_kwargs == {
        "model_path": str(tiny_model),
        "inference_timesteps": 10,
        "max_num_seqs": 8,
        "max_model_len": MAX_MODEL_LEN,
        "gpu_memory_utilization": 0.9,
        "enforce_eager": True,
        "devices": [0],
    }
    assert engine.ready
    info = engine.info
    assert (info.name, info.sample_rate, info.samples_per_step) == ("nanovllm", 48000, SAMPLES_PER_STEP)
    assert (info.max_model_len, info.max_batch, info.inference_timesteps) == (MAX_MODEL_LEN, 8, 10)
    # The warm-up request went through the worker and ran to its 2 steps.
    assert [(r["target_text"], r["max_generate_length"]) for r in harness.requests] == [("Warm up.", 2)]
    assert engine.steps_generated == 2


# --- request building and length caps ------------------------------------------------------------------


async def test_request_fields_reach_the_worker(served) -> None:
    engine, harness = served
    stats = GenerationStats()
    request = SynthesisRequest(text="Hello,\n   world.", cfg_value=1.5, max_length=5, seed=7)
    chunks = await collect(engine, request, stats)

    assert len(chunks) == 5 and all(c.dtype == np.float32 and c.shape == (SAMPLES_PER_STEP,) for c in chunks)
    sent = harness.requests[-1]
    assert sent["target_text"] == "Hello, world."  # whitespace collapsed to VoxCPM2's one line
    assert (sent["max_generate_length"], sent["cfg_value"], sent["seed"]) == (5, 1.5, 7)
    assert sent["temperature"] == 1.0  # voxport leaves the package's default
    assert (sent["prompt_latents"], sent["prompt_text"], sent["ref_audio_latents"]) == (None, "", None)
    _, seq = harness.sequences[sent["seq_id"]]
    assert (seq.custom_payload.seed, seq.custom_payload.cfg_value) == (7, 1.5)
    assert stats.input_tokens == engine.count_tokens("Hello, world.")
    assert stats.steps == 5
    # The chunks are the worker's, in order.
    np.testing.assert_array_equal(
        np.concatenate(chunks), np.concatenate(seq.custom_payload.generated_waveforms)
    )

    other = await collect(engine, SynthesisRequest(text="Hello, world.", max_length=5, seed=8))
    assert harness.requests[-1]["seed"] == 8 and not np.array_equal(other[0], chunks[0])


async def test_short_text_is_capped_by_the_model_rule(served) -> None:
    engine, harness = served
    await collect(engine, SynthesisRequest(text="Hi.", max_length=2048))
    tokens = engine.count_tokens("Hi.")
    assert harness.requests[-1]["max_generate_length"] == 6 * tokens + 10  # VoxCPM2's own cap, not 2048


LONG_TEXT = "This sentence is long enough that six steps per token overrun the window. " * 2


@pytest.mark.parametrize("voice_kind", ["none", "reference", "transcript", "continuation"])
async def test_length_is_clamped_to_exactly_fill_the_window(served, tmp_path: Path, voice_kind: str) -> None:
    """The package refuses (ValueError in the worker) a prompt + max_generate_length over max_model_len;
    voxport must count the prompt as the package does, so that the clamp fills the window exactly."""
    engine, harness = served
    voice, continuation = None, None
    if voice_kind in ("reference", "continuation"):
        voice = await engine.encode_voice(str(wav_file(tmp_path / "v.wav", 1.3)), None, "ref")
    if voice_kind == "transcript":
        voice = await engine.encode_voice(str(wav_file(tmp_path / "v.wav", 1.3)), "A short transcript.", "tr")
    if voice_kind == "continuation":
        audio = np.random.default_rng(3).uniform(-0.3, 0.3, 48000).astype(np.float32)
        continuation = Continuation(text="The previous   segment.", audio=audio)
    request = SynthesisRequest(text=LONG_TEXT, voice=voice, continuation=continuation, max_length=2048)
    chunks = await collect(engine, request)

    sent = harness.requests[-1]
    prompt_len, _ = harness.sequences[sent["seq_id"]]  # the package's own count of the prompt
    assert 6 * engine.count_tokens(LONG_TEXT.strip()) + 10 > MAX_MODEL_LEN - prompt_len  # the window decides
    assert prompt_len + sent["max_generate_length"] == MAX_MODEL_LEN
    assert len(chunks) == sent["max_generate_length"]


async def test_the_package_refuses_one_position_over_the_window(served) -> None:
    """The oracle of the clamp tests is armed: had voxport counted one position short, the package's own
    check in the worker would refuse the request (a server error, not a client's 400)."""
    engine, harness = served
    engine._max_model_len = MAX_MODEL_LEN + 1  # voxport's window one larger than the worker's
    with pytest.raises(EngineError, match="max_model_len"):
        await collect(engine, SynthesisRequest(text=LONG_TEXT, max_length=2048))
    sent = harness.requests[-1]
    assert sent["max_generate_length"] == MAX_MODEL_LEN + 1 - engine.count_tokens(LONG_TEXT.strip()) - 1
    assert sent["seq_id"] not in harness.sequences  # refused: never scheduled
    assert engine.ready  # a refused request is not a dead worker


async def test_input_too_long_for_the_window_is_refused_before_the_worker(served) -> None:
    engine, harness = served
    before = len(harness.requests)
    with pytest.raises(EngineInputError) as caught:
        await collect(engine, SynthesisRequest(text=LONG_TEXT * 6))
    assert caught.value.param == "input"
    assert len(harness.requests) == before


async def test_other_inference_timesteps_are_refused(served) -> None:
    engine, harness = served
    before = len(harness.requests)
    with pytest.raises(EngineInputError) as caught:
        await collect(engine, SynthesisRequest(text="Hi.", inference_timesteps=4))
    assert caught.value.param == "inference_timesteps"
    assert len(harness.requests) == before


# --- voices and continuations --------------------------------------------------------------------------


async def test_voice_with_transcript_is_a_continuation_prompt(served, tmp_path: Path) -> None:
    engine, harness = served
    voice = await engine.encode_voice(str(wav_file(tmp_path / "v.wav", 1.0)), "Her words.", "k")
    latents = harness.encoded[-1]  # what the package's encoder made of the wav
    assert voice.mode == "continuation" and voice.positions == patches_of(latents) > 0
    await collect(engine, SynthesisRequest(text="Hello.", voice=voice, max_length=3))
    sent = harness.requests[-1]
    assert (sent["prompt_latents"], sent["prompt_text"], sent["ref_audio_latents"]) == (
        latents,
        "Her words.",
        None,
    )
    assert sent["target_text"] == "Hello."


async def test_voice_without_transcript_is_reference_audio(served, tmp_path: Path) -> None:
    engine, harness = served
    voice = await engine.encode_voice(str(wav_file(tmp_path / "v.wav", 1.0, seed=1)), None, "k")
    latents = harness.encoded[-1]
    assert voice.mode == "reference" and voice.positions == patches_of(latents) + 2  # + start/end markers
    await collect(engine, SynthesisRequest(text="Hello.", voice=voice, max_length=3))
    sent = harness.requests[-1]
    assert (sent["prompt_latents"], sent["prompt_text"], sent["ref_audio_latents"]) == (None, "", latents)


async def test_continuation_sends_the_previous_segment_after_the_reference(served, tmp_path: Path) -> None:
    engine, harness = served
    voice = await engine.encode_voice(str(wav_file(tmp_path / "v.wav", 1.0, seed=2)), None, "k")
    reference = harness.encoded[-1]
    audio = np.random.default_rng(4).uniform(-0.3, 0.3, 2 * 48000).astype(np.float32)
    request = SynthesisRequest(
        text="And then.",
        voice=voice,
        continuation=Continuation(text=" Before\nthis. ", audio=audio),
        max_length=3,
    )
    await collect(engine, request)
    previous = harness.encoded[-1]  # the continuation's audio, encoded by the package for this request
    assert previous != reference and patches_of(previous) >= 12  # two seconds at 6.25 patches/s
    sent = harness.requests[-1]
    assert (sent["prompt_latents"], sent["prompt_text"]) == (previous, "Before this.")
    assert sent["ref_audio_latents"] == reference

    # Without a voice, only the previous segment is the prompt.
    await collect(engine, SynthesisRequest(text="And then.", continuation=request.continuation, max_length=3))
    sent = harness.requests[-1]
    assert sent["ref_audio_latents"] is None and sent["prompt_text"] == "Before this."


# --- cancel --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["aclose", "task-cancel"])
async def test_closing_the_stream_cancels_the_sequence_in_the_worker(served, how: str) -> None:
    engine, harness = served
    harness.step_budget = 3  # a long generation, held after 3 steps so that it is stopped part-way
    stream = engine.generate(SynthesisRequest(text=LONG_TEXT, max_length=100))
    got: list[np.ndarray] = []

    async def consume() -> None:
        async for chunk in stream:
            got.append(chunk)

    if how == "aclose":
        for _ in range(2):
            got.append(await asyncio.wait_for(stream.__anext__(), DEADLINE))
        await stream.aclose()  # not through wait_for: no loop turn before the check below
        # Closing the engine's stream closed the pool's generator there and then: its load slot is back.
        assert engine._pool.servers_load.tolist() == [0]
    else:
        task = asyncio.ensure_future(consume())
        await until(lambda: len(got) >= 2, "second chunk")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, DEADLINE)

    seq_id = harness.requests[-1]["seq_id"]
    assert harness.requests[-1]["max_generate_length"] == 100
    pool = engine._pool  # the package's pool
    assert pool.servers_load.tolist() == [0]
    # The pool does not close the server stream it iterates, so on aclose the cancel reaches the worker
    # through asyncio's async-generator finalizer: soon, not necessarily by the time aclose returns.
    await until(lambda: seq_id in harness.cancelled, "cancel in the worker")
    _, seq = harness.sequences[seq_id]
    assert len(seq.custom_payload.generated_waveforms) == 3
    assert not harness.engine.running
    await until(lambda: pool.servers[0].stream_table == {}, "stream slot given back")

    harness.step_budget = None  # the engine serves on after a cancel
    assert len(await collect(engine, SynthesisRequest(text="Again.", max_length=3))) == 3


async def test_a_finished_stream_is_not_cancelled(served) -> None:
    engine, harness = served
    await collect(engine, SynthesisRequest(text="Done.", max_length=4))
    assert harness.requests[-1]["seq_id"] not in harness.cancelled


# --- worker death --------------------------------------------------------------------------------------


async def test_worker_death_mid_stream_is_engine_unavailable(served) -> None:
    engine, harness = served
    harness.step_budget = 2
    stream = engine.generate(SynthesisRequest(text=LONG_TEXT, max_length=100))
    await asyncio.wait_for(stream.__anext__(), DEADLINE)
    harness.kill()
    with pytest.raises(EngineUnavailable, match="died"):
        async for _ in stream:
            pass
    assert harness.worker.exitcode == -9
    assert not engine.ready
    with pytest.raises(EngineUnavailable):
        await collect(engine, SynthesisRequest(text="Hello.", max_length=2))


async def test_worker_found_dead_by_the_next_request(served, tmp_path: Path) -> None:
    engine, harness = served
    harness.kill()
    await until(lambda: not harness.worker.is_alive(), "worker exit")
    before = len(harness.requests)
    with pytest.raises(EngineUnavailable, match="died"):
        await collect(engine, SynthesisRequest(text="Hello.", max_length=2))
    assert not engine.ready and len(harness.requests) == before


async def test_worker_death_while_encoding_a_voice(served, tmp_path: Path) -> None:
    engine, harness = served
    wav = wav_file(tmp_path / "v.wav", 1.0)
    harness.kill()
    await until(lambda: not harness.worker.is_alive(), "worker exit")
    with pytest.raises(EngineUnavailable, match="died"):
        await asyncio.wait_for(engine.encode_voice(str(wav), "Words.", "k"), DEADLINE)
    assert not engine.ready


# --- close ---------------------------------------------------------------------------------------------


async def test_close_stops_the_worker_and_the_engine(served) -> None:
    engine, harness = served
    await asyncio.wait_for(engine.close(), DEADLINE)
    harness.worker.join(DEADLINE)
    assert not harness.worker.is_alive() and harness.worker.exitcode == 0  # asked to stop, not killed
    assert not engine.ready
    with pytest.raises(EngineUnavailable):
        await collect(engine, SynthesisRequest(text="Hello.", max_length=2))
    await asyncio.wait_for(engine.close(), DEADLINE)  # a second close is a no-op


# --- a hung worker ------------------------------------------------------------------------------------


async def test_a_hung_worker_fails_its_streams_when_it_dies(served) -> None:
    """A wedged worker (a step that never returns) holds its streams; its death, seen by the package's
    watchdog, fails them as EngineUnavailable instead of leaving them waiting."""
    engine, harness = served
    harness.hang.set()
    before = len(harness.requests)
    task = asyncio.ensure_future(collect(engine, SynthesisRequest(text="Hello.", max_length=5)))
    await until(lambda: len(harness.requests) > before, "request in the worker")
    assert not task.done()
    harness.kill()
    with pytest.raises(EngineUnavailable, match="died"):
        await asyncio.wait_for(task, DEADLINE)
    assert not engine.ready
