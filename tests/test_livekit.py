"""The `base_url` recipe of docs/agents.md with the real `livekit-agents` package: LiveKit's own OpenAI TTS
class, unchanged, pointed at a real `voxport serve` on the tiny checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, ServerProcess

openai_plugin = pytest.importorskip(
    "livekit.plugins.openai", reason="livekit-agents[openai] is not installed (only this test uses it)"
)


@pytest.mark.parametrize("response_format", ["mp3", "pcm"])
async def test_livekit_openai_tts_pointed_at_voxport(server: ServerProcess, response_format: str) -> None:
    tts = openai_plugin.TTS(base_url=f"{server.base_url}/v1", api_key="unused", model="tts-1", voice="alloy",
                            response_format=response_format)  # fmt: skip
    frames = []
    async with tts.synthesize("Hello from LiveKit.") as stream:
        async for event in stream:
            frames.append(event.frame)
    await tts.aclose()
    assert frames and all(f.sample_rate == 24000 and f.num_channels == 1 for f in frames)
    # Played at the rate it is labelled with, the audio lasts as long as voxport made it (a rate mix-up
    # would halve or double it).
    seconds = sum(f.samples_per_channel for f in frames) / 24000
    assert abs(seconds - TEST_MAX_LENGTH * STEP_SECONDS) < 0.15, seconds
