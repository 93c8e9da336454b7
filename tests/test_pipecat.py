"""voxport's Pipecat TTS service (voxport.integrations.pipecat) with the real `pipecat-ai` package, in
Pipecat's own test pipeline, against a real `voxport serve` on the tiny checkpoint."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess

pipecat = pytest.importorskip(
    "pipecat", reason="pipecat-ai is not installed (the `pipecat` extra: pip install 'voxport[pipecat]')"
)

from pipecat.frames.frames import (  # noqa: E402
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from voxport.integrations.pipecat import VoxportTTSService  # noqa: E402


def _service(server: ServerProcess) -> VoxportTTSService:
    url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/ws"
    return VoxportTTSService(url=url, voice="alloy", model="tts-1", options={"seed": 5}, sample_rate=16000)


async def test_an_llm_turn_is_spoken_through_one_context(server: ServerProcess) -> None:
    tokens = ["Hello the", "re, my friend. ", "How are ", "you today?"]
    frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in tokens), LLMFullResponseEndFrame(),
              SleepFrame(sleep=30)]  # fmt: skip
    down, _ = await run_test(_service(server), frames_to_send=frames)
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 16000 for f in audio)
    assert len({f.context_id for f in audio}) == 1  # one voxport context for the turn
    spoken = " ".join(f.text for f in down if isinstance(f, TTSTextFrame))
    assert "friend" in spoken and "today" in spoken
    assert any(isinstance(f, TTSStoppedFrame) for f in down)
    # 16-bit mono at 16 kHz: the two sentences' audio (max_length steps of 0.16 s each).
    seconds = sum(len(f.audio) for f in audio) / 2 / 16000
    assert seconds > 1.0


def _cancelled(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    name = 'voxport_ws_contexts_ended_total{outcome="cancelled"}'
    line = next((x for x in metrics.splitlines() if x.startswith(name)), None)
    return float(line.split()[-1]) if line else 0.0


async def test_an_interruption_cancels_the_turns_context(server: ServerProcess) -> None:
    before = _cancelled(server)
    text = "This is a long answer that the user will interrupt. " * 40  # far more than 3 s to generate
    frames = [LLMFullResponseStartFrame(), LLMTextFrame(text), LLMFullResponseEndFrame(),
              SleepFrame(sleep=3), InterruptionFrame(), SleepFrame(sleep=5)]  # fmt: skip
    down, _ = await run_test(_service(server), frames_to_send=frames)
    assert any(isinstance(f, TTSAudioRawFrame) for f in down)
    assert _cancelled(server) == before + 1


async def test_pipecat_openai_tts_pointed_at_voxport(server: ServerProcess) -> None:
    """The `base_url` recipe of docs/agents.md: Pipecat's own OpenAI TTS class, unchanged, at 24 kHz pcm."""
    from pipecat.frames.frames import TTSSpeakFrame
    from pipecat.services.openai.tts import OpenAITTSService

    settings = OpenAITTSService.Settings(voice="alloy", model="tts-1")
    tts = OpenAITTSService(
        base_url=f"{server.base_url}/v1", api_key="unused", settings=settings, sample_rate=24000
    )
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hello from Pipecat."), SleepFrame(sleep=20)])
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 24000 for f in audio)
    seconds = sum(len(f.audio) for f in audio) / 2 / 24000
    assert seconds > 1.0  # the sentence: max_length steps of 0.16 s, played at the rate it was made
