"""The reference engine on the tiny checkpoint: real loading, FIFO, streaming, cancellation, seeds."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxport.engine.base import EngineInputError, EngineUnavailable, SynthesisRequest
from voxport.engine.reference import ReferenceEngine, default_cpu_threads

SAMPLES_PER_STEP = 7680


@pytest.fixture(scope="module")
async def engine(tiny_model: Path):
    eng = ReferenceEngine(str(tiny_model), device="cpu")
    await eng.start()
    yield eng
    await eng.close()


async def _collect(engine: ReferenceEngine, **kwargs) -> list[np.ndarray]:
    return [chunk async for chunk in engine.generate(SynthesisRequest(**kwargs))]


def test_checkpoint_loads_every_weight(tiny_model: Path) -> None:
    """voxcpm loads with strict=False: make sure no weight is silently left random."""
    import torch
    from safetensors.torch import load_file

    from voxport.engine.compat import install_torchaudio_placeholder

    install_torchaudio_placeholder()
    from voxcpm import VoxCPM

    model = VoxCPM.from_pretrained(
        str(tiny_model), load_denoiser=False, optimize=False, device="cpu"
    ).tts_model
    saved = load_file(str(tiny_model / "model.safetensors"))
    live = model.state_dict()
    assert [k for k in live if not k.startswith("audio_vae.") and k not in saved] == []
    assert [k for k, v in saved.items() if not torch.equal(live[k].float(), v.float())] == []
    vae = torch.load(tiny_model / "audiovae.pth", map_location="cpu")["state_dict"]
    assert all(torch.equal(live[f"audio_vae.{k}"].float(), v.float()) for k, v in vae.items())


async def test_info(engine: ReferenceEngine) -> None:
    info = engine.info
    assert (info.name, info.device, info.sample_rate, info.samples_per_step) == (
        "reference",
        "cpu",
        48000,
        7680,
    )
    assert engine.ready


async def test_chunks_are_one_step_each_and_length_follows_max_length(engine: ReferenceEngine) -> None:
    chunks = await _collect(engine, text="Hello world, a longer sentence.", max_length=5)
    assert [len(c) for c in chunks] == [SAMPLES_PER_STEP] * 5
    assert all(c.dtype == np.float32 and np.isfinite(c).all() for c in chunks)


async def test_length_cap_follows_text_tokens(engine: ReferenceEngine) -> None:
    short = await _collect(engine, text="Hi", max_length=2048)
    longer = await _collect(engine, text="Hi there", max_length=2048)
    assert len(short) < len(longer)  # the never-stop head runs to 6 steps per text token + 10


async def test_seeds(engine: ReferenceEngine) -> None:
    a = np.concatenate(await _collect(engine, text="Seeded.", max_length=3, seed=1))
    b = np.concatenate(await _collect(engine, text="Seeded.", max_length=3, seed=1))
    c = np.concatenate(await _collect(engine, text="Seeded.", max_length=3, seed=2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


async def test_requests_are_served_fifo(engine: ReferenceEngine) -> None:
    events: list[str] = []

    async def run(name: str) -> None:
        async for _ in engine.generate(SynthesisRequest(text=f"Request {name}.", max_length=4)):
            events.append(name)

    await asyncio.gather(run("a"), run("b"), run("c"))
    assert events == ["a"] * 4 + ["b"] * 4 + ["c"] * 4


async def test_abandoned_generation_stops_within_one_step(engine: ReferenceEngine) -> None:
    before = engine.steps_generated
    stream = engine.generate(SynthesisRequest(text="A long request that will be abandoned.", max_length=400))
    first = await stream.__anext__()
    assert len(first) == SAMPLES_PER_STEP
    await stream.aclose()
    # FIFO: this one runs only after the abandoned one has stopped.
    assert len(await _collect(engine, text="Next.", max_length=1)) == 1
    assert engine.steps_generated - before <= 1 + 1 + 1  # first chunk, at most one more, then "Next."


async def test_queued_request_abandoned_before_start_never_runs(engine: ReferenceEngine) -> None:
    before = engine.steps_generated
    blocker = asyncio.create_task(_collect(engine, text="Blocking the worker.", max_length=6))
    await asyncio.sleep(0)
    stream = engine.generate(SynthesisRequest(text="Never mind.", max_length=100))
    pending = asyncio.create_task(stream.__anext__())
    await asyncio.sleep(0.05)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await stream.aclose()
    await blocker
    assert len(await _collect(engine, text="After.", max_length=1)) == 1
    assert engine.steps_generated - before == 6 + 1


async def test_too_long_for_the_window_is_an_input_error(engine: ReferenceEngine) -> None:
    with pytest.raises(EngineInputError) as caught:
        await _collect(engine, text="word " * 800, max_length=2048)
    assert caught.value.param == "input"
    assert len(await _collect(engine, text="Still fine.", max_length=1)) == 1


async def test_voice_prompt_encoding_and_cloning(engine: ReferenceEngine, tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    wav = tmp_path / "prompt.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    reference = await engine.encode_voice(str(wav), None, key="ref")
    continuation = await engine.encode_voice(str(wav), "A steady tone.", key="cont")
    assert (reference.mode, continuation.mode) == ("reference", "continuation")
    assert reference.positions == 7 + 2  # 1 s = 6.25 patches, padded to 7, plus start and end markers
    for voice in (reference, continuation):
        chunks = await _collect(engine, text="Cloned voice.", voice=voice, max_length=3)
        assert [len(c) for c in chunks] == [SAMPLES_PER_STEP] * 3


async def test_closed_engine_refuses_at_once(tiny_model: Path) -> None:
    eng = ReferenceEngine(str(tiny_model), device="cpu")
    await eng.start()
    await eng.close()
    assert not eng.ready
    with pytest.raises(EngineUnavailable):
        await _collect(eng, text="Too late.", max_length=1)


@pytest.mark.parametrize(("cpus", "threads"), [({0}, 1), ({0, 1}, 1), (set(range(16)), 15)])
def test_default_cpu_threads_leave_one_cpu_for_the_event_loop(monkeypatch, cpus, threads) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    assert default_cpu_threads() == threads


async def test_engine_uses_the_threads_it_is_given(tiny_model: Path) -> None:
    eng = ReferenceEngine(str(tiny_model), device="cpu", cpu_threads=3)
    try:
        await eng.start()
        assert eng.torch_threads == 3  # as torch reports it in the worker thread that runs the model
    finally:
        await eng.close()


async def test_engine_threads_default_to_one_cpu_less(engine: ReferenceEngine) -> None:
    assert engine.torch_threads == default_cpu_threads()
