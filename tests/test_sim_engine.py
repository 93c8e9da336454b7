"""The simulated batching engine (`--engine sim`), on its own: scheduling, lengths, voices, output.

Counts and ordering only, never wall-clock time: the step costs are set near zero so that these run fast
on a loaded machine.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.waiting import until
from voxport.engine.base import (
    SAMPLE_RATE,
    SAMPLES_PER_STEP,
    EngineInputError,
    EngineUnavailable,
    GenerationStats,
    SynthesisRequest,
    steps_cap,
)
from voxport.engine.sim import SimEngine


async def started(**options) -> SimEngine:
    engine = SimEngine(**{"step_ms": 0.5, "step_ms_per_seq": 0.0, **options})
    await engine.start()
    return engine


async def collect(engine: SimEngine, request: SynthesisRequest, stats: GenerationStats | None = None):
    return [chunk async for chunk in engine.generate(request, stats)]


def write_wav(path: Path, seconds: float, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(b"\0\0" * int(seconds * rate))
    return path


async def test_batch_never_wider_than_max_num_seqs_and_every_slot_is_used() -> None:
    engine = await started(max_num_seqs=4)
    try:
        requests = [SynthesisRequest(text=f"Sentence {i}.", max_length=5) for i in range(10)]
        results = await asyncio.gather(*(collect(engine, r) for r in requests))
        assert [len(chunks) for chunks in results] == [5] * 10
        assert engine.widest_batch == 4
        assert engine.steps_generated == 50
        # 50 sequence-steps at most 4 a step: at least 13 steps; FIFO joins make it 5 + 5 + 5.
        assert engine.batch_steps >= 13
        assert (engine.running, engine.waiting) == (0, 0)
    finally:
        await engine.close()


async def test_waiting_sequences_join_between_steps_in_order() -> None:
    engine = await started(max_num_seqs=2)
    try:
        order: list[int] = []

        async def one(i: int) -> None:
            async for _ in engine.generate(SynthesisRequest(text=f"Text {i}.", max_length=3)):
                if not order or order[-1] != i:
                    order.append(i)

        await asyncio.gather(*(one(i) for i in range(5)))
        # 0 and 1 run first, then 2 and 3, then 4: nobody jumps the queue.
        firsts = {i: order.index(i) for i in range(5)}
        assert max(firsts[0], firsts[1]) < min(firsts[2], firsts[3]) < firsts[4]
        assert engine.widest_batch == 2
    finally:
        await engine.close()


async def test_closing_the_iterator_frees_the_slot_within_one_step() -> None:
    engine = await started(max_num_seqs=1)
    try:
        stats = GenerationStats()
        first = engine.generate(SynthesisRequest(text="A long one.", max_length=1000), stats)
        await first.__anext__()
        await first.__anext__()
        await first.aclose()
        closed_at = engine.batch_steps
        assert engine.running == 0  # freed at once, not when the step in progress ends
        steps_of_first = stats.steps
        second = engine.generate(SynthesisRequest(text="Next.", max_length=3))
        await second.__anext__()
        # The step in progress when the first left ends empty; the second runs in the one after it.
        assert engine.batch_steps <= closed_at + 2
        await second.aclose()
        assert stats.steps == steps_of_first  # nothing more was generated for the abandoned one
        assert engine.steps_generated < 10
    finally:
        await engine.close()


async def test_a_waiting_sequence_that_is_abandoned_never_runs() -> None:
    engine = await started(max_num_seqs=1)
    try:
        running = engine.generate(SynthesisRequest(text="Holds the slot.", max_length=1000))
        await running.__anext__()
        stats = GenerationStats()
        waiting = asyncio.ensure_future(collect(engine, SynthesisRequest(text="Waits.", max_length=5), stats))
        await until(lambda: engine.waiting >= 1, "the second request to wait", every=0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert engine.waiting == 0
        await running.aclose()
        assert stats.steps == 0
    finally:
        await engine.close()


@pytest.mark.parametrize(
    ("text", "max_length"), [("Hi.", 2048), ("Hi.", 7), ("A longer sentence here. " * 20, 50)]
)
async def test_length_is_steps_cap_of_the_tokens_and_max_length(text: str, max_length: int) -> None:
    engine = await started()
    try:
        stats = GenerationStats()
        chunks = await collect(engine, SynthesisRequest(text=text, max_length=max_length), stats)
        tokens = engine.count_tokens(" ".join(text.split()))
        assert stats.input_tokens == tokens
        assert len(chunks) == stats.steps == steps_cap(tokens, max_length)
        assert all(len(chunk) == SAMPLES_PER_STEP and chunk.dtype == np.float32 for chunk in chunks)
        assert engine.info.sample_rate == SAMPLE_RATE == 48_000
    finally:
        await engine.close()


async def test_output_is_deterministic_and_not_silent() -> None:
    engine = await started()
    try:
        request = SynthesisRequest(text="Same every time.", max_length=4, seed=3)
        first, again = await collect(engine, request), await collect(engine, request)
        other = await collect(engine, SynthesisRequest(text="Same every time.", max_length=4, seed=4))
        audio = np.concatenate(first)
        assert np.array_equal(audio, np.concatenate(again))
        assert not np.array_equal(audio, np.concatenate(other))
        assert float(np.sqrt(np.mean(audio**2))) > 0.1 and float(np.abs(audio).max()) <= 1.0
    finally:
        await engine.close()


async def test_window_and_voice_prompts(tmp_path: Path) -> None:
    engine = await started(max_model_len=64)
    try:
        reference = await engine.encode_voice(str(write_wav(tmp_path / "ref.wav", 3.2)), None, "ref")
        assert (reference.mode, reference.positions) == ("reference", 20 + 2)  # 3.2 s = 20 steps
        continuation = await engine.encode_voice(
            str(write_wav(tmp_path / "cont.wav", 1.6, rate=SAMPLE_RATE)), "Prompt words.", "cont"
        )
        assert (continuation.mode, continuation.positions) == ("continuation", 10)
        assert engine.voices_held == {"ref": 1, "cont": 1}
        text = "Fits the window only in part."
        tokens = engine.count_tokens(text)
        chunks = await collect(engine, SynthesisRequest(text=text, voice=reference, max_length=2048))
        # The generation is clamped to what the window leaves after the text, audio start and prompt.
        assert len(chunks) == 64 - (tokens + 1 + 22) < steps_cap(tokens, 2048)
        with pytest.raises(EngineInputError) as raised:
            await collect(engine, SynthesisRequest(text="word " * 100, max_length=10))
        assert raised.value.param == "input"
        await engine.release_voice(reference)
        assert engine.voices_held == {"cont": 1}
    finally:
        await engine.close()


async def test_close_fails_waiting_work_and_later_requests() -> None:
    engine = await started(max_num_seqs=1)
    running = engine.generate(SynthesisRequest(text="Holds the slot.", max_length=1000))
    await running.__anext__()
    waiting = asyncio.ensure_future(collect(engine, SynthesisRequest(text="Waits.", max_length=5)))
    await until(lambda: engine.waiting >= 1, "the second request to wait", every=0)
    await engine.close()
    assert not engine.ready
    with pytest.raises(EngineUnavailable):
        await waiting
    with pytest.raises(EngineUnavailable):
        async for _ in running:  # what was generated before the close, then the failure
            pass
    with pytest.raises(EngineUnavailable):
        await collect(engine, SynthesisRequest(text="Too late.", max_length=1))


def test_sim_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = "import sys, voxport.engine.sim; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
