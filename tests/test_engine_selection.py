"""Engine selection and the nano-vllm engine's length rules, on a machine without a GPU."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from voxport.config import Settings
from voxport.engine import create_engine, nanovllm_usable
from voxport.engine.base import EngineError
from voxport.engine.nanovllm import generation_length
from voxport.engine.reference import ReferenceEngine

needs_no_cuda = pytest.mark.skipif(nanovllm_usable()[0], reason="this machine can run nano-vllm")


@needs_no_cuda
def test_auto_falls_back_to_the_reference_engine_and_says_why(tiny_model: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="voxport.engine"):
        engine = create_engine(Settings(model=str(tiny_model), engine="auto"), str(tiny_model))
    assert isinstance(engine, ReferenceEngine)
    assert any("using the reference engine" in r.message and "CUDA" in r.message for r in caplog.records)


@needs_no_cuda
def test_asking_for_nanovllm_without_cuda_fails_with_the_reason(tiny_model: Path) -> None:
    with pytest.raises(EngineError, match="cannot run here: CUDA is not available"):
        create_engine(Settings(model=str(tiny_model), engine="nanovllm"), str(tiny_model))
    result = subprocess.run(
        [sys.executable, "-m", "voxport", "serve", "--model", str(tiny_model), "--engine", "nanovllm"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "voxport serve: --engine nanovllm cannot run here: CUDA is not available" in result.stderr
    assert "Traceback" not in result.stderr  # the usual one-line refusal, not a crash


@pytest.mark.parametrize(
    ("tokens", "max_length", "prompt", "window", "expected"),
    [
        (10, 2048, 11, 4096, 70),  # VoxCPM2's own cap: 6 per token + 10
        (10, 20, 11, 4096, 20),  # the request's max_length
        (500, 2048, 501, 4096, 2048),
        (700, 2048, 701, 2000, 1299),  # clamped so that prompt + generation fit the window
        (3000, 2048, 4096, 4096, 0),  # nothing left: the request cannot be served
    ],
)
def test_generation_length(tokens: int, max_length: int, prompt: int, window: int, expected: int) -> None:
    assert generation_length(tokens, max_length, prompt, window) == expected


@pytest.mark.gpu
@pytest.mark.skipif(not nanovllm_usable()[0], reason="needs CUDA and nano-vllm-voxcpm")
async def test_nanovllm_engine_streams_steps(tiny_model: Path) -> None:
    from voxport.engine.base import SynthesisRequest
    from voxport.engine.nanovllm import NanoVllmEngine

    engine = NanoVllmEngine(str(tiny_model), max_model_len=2048, enforce_eager=True)
    await engine.start()
    try:
        chunks = [
            c async for c in engine.generate(SynthesisRequest(text="Hello world.", max_length=5, seed=1))
        ]
        assert [len(c) for c in chunks] == [7680] * 5
    finally:
        await engine.close()


# -- admission sized by the engine ----------------------------------------------------------------


def test_nanovllm_admits_its_whole_batch_and_queues_four_batches(tmp_path: Path) -> None:
    from voxport.engine.nanovllm import NanoVllmEngine

    settings = Settings(engine="nanovllm")
    engine = NanoVllmEngine(str(tmp_path), max_num_seqs=settings.max_num_seqs)  # constructing needs no CUDA
    assert engine.capacity == 256
    assert settings.admission(engine.capacity) == (256, 1024)
    assert settings.admission(NanoVllmEngine(str(tmp_path), max_num_seqs=64).capacity) == (64, 256)


def test_reference_engine_admits_a_few_to_interleave(tiny_model: Path) -> None:
    engine = create_engine(Settings(model=str(tiny_model), engine="reference"), str(tiny_model))
    assert engine.capacity == 1
    assert Settings().admission(engine.capacity) == (8, 32)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"max_concurrent": 3}, (3, 12)),  # the queue follows what is admitted
        ({"max_queue": 0}, (256, 0)),
        ({"max_concurrent": 500, "max_queue": 7}, (500, 7)),
    ],
)
def test_explicit_admission_settings_win(overrides: dict, expected: tuple[int, int], monkeypatch) -> None:
    assert Settings(**overrides).admission(256) == expected
    for name, value in overrides.items():
        monkeypatch.setenv(f"VOXPORT_{name.upper()}", str(value))
    assert Settings().admission(256) == expected


def test_the_server_sizes_admission_from_the_engine_it_built(tmp_path: Path) -> None:
    from voxport.app import create_app

    settings = Settings(engine="sim", max_num_seqs=100, data_dir=tmp_path)
    app = create_app(settings)
    speech = app.state.speech
    assert speech.engine.capacity == 100
    assert (speech.admission.max_concurrent, speech.admission.max_queue) == (100, 400)
