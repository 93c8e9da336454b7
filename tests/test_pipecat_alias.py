"""pipecat-ai's real `OpenAITTSService` speaks with a cloned voice through a voice alias.

pipecat refuses any voice outside OpenAI's names before it sends a request, so a cloned voice is reachable
from it only through an alias (`sage` -> the clone). pipecat-ai is not in the dev extra: 1.14 pins
soundfile~=0.13.1 and soxr~=1.0.0 (voxport runs on newer ones) and brings ~50 MB with onnxruntime. Run this
test where it is installed, e.g. `pip install --no-deps --target DIR pipecat-ai loguru aiohttp ...` and
PYTHONPATH=src:DIR; elsewhere it skips."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, ServerProcess, tiny_server

pytest.importorskip(
    "pipecat.services.openai.tts",
    reason="pipecat-ai is not installed (not in the dev extra: it pins soundfile~=0.13.1 and soxr~=1.0.0)",
)
from pipecat.frames.frames import EndFrame, Frame, TTSAudioRawFrame, TTSSpeakFrame  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.runner import PipelineRunner  # noqa: E402
from pipecat.pipeline.task import PipelineParams, PipelineTask  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.services.openai.tts import OpenAITTSService  # noqa: E402

pytestmark = pytest.mark.timeout(600)

RATE = 24000  # pipecat's OpenAI rate: what `pcm` gives


@pytest.fixture(scope="module")
def voxport(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with tiny_server(tiny_model, tmp_path_factory.mktemp("pipecat-data")) as proc:
        yield proc


class _Collect(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            assert (frame.sample_rate, frame.num_channels) == (RATE, 1)
            self.audio += frame.audio
        await self.push_frame(frame, direction)


def _recording() -> bytes:
    t = np.arange(44100 * 3) / 44100
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 180 * t), 44100, format="WAV")
    return buffer.getvalue()


async def test_pipecat_speaks_a_cloned_voice_through_an_alias(voxport: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=voxport.base_url, timeout=120) as http:
        created = await http.post("/v1/audio/voices", data={"name": "Agent Voice", "consent": "true"},
                                  files={"audio_sample": ("me.wav", _recording())})  # fmt: skip
        assert created.status_code == 201, created.text
        alias = await http.put("/v1/audio/voice_aliases/sage", json={"voice": "Agent Voice"})
        assert alias.status_code == 200, alias.text

        settings = OpenAITTSService.Settings(voice="sage", model="tts-1")
        tts = OpenAITTSService(api_key="unused", base_url=f"{voxport.base_url}/v1", settings=settings,
                               sample_rate=RATE)  # fmt: skip
        collect = _Collect()
        task = PipelineTask(Pipeline([tts, collect]), params=PipelineParams(audio_out_sample_rate=RATE))
        await task.queue_frames([TTSSpeakFrame("Hello there."), EndFrame()])
        await PipelineRunner(handle_sigint=False).run(task)

        samples = len(collect.audio) // 2
        assert samples == pytest.approx(TEST_MAX_LENGTH * STEP_SECONDS * RATE, rel=0.02)
        # It was the clone that spoke: the same request naming the clone's id is that audio, from the cache.
        body = {
            "model": "tts-1",
            "voice": created.json()["id"],
            "input": "Hello there.",
            "response_format": "pcm",
        }
        direct = await http.post("/v1/audio/speech", json=body)
        assert direct.headers["x-cache"] == "HIT" and direct.content == bytes(collect.audio)
