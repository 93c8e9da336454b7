"""--warm-voices: the designed voices are made after start and before /ready says yes, so that the first
use of any of them after /ready designs nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess

pytestmark = pytest.mark.timeout(900)

DESIGNED = ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
            "marin", "cedar"]  # fmt: skip


def test_first_use_after_ready_designs_nothing(tiny_model: Path, tmp_path: Path) -> None:
    proc = ServerProcess(
        ["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length", str(TEST_MAX_LENGTH),
         "--design-clip-seconds", "1", "--warm-voices"]
    )  # fmt: skip
    try:
        proc.wait_ready(timeout=600)
        ready = httpx.get(f"{proc.base_url}/ready", timeout=10)
        assert ready.status_code == 200
        before = proc.output()
        for number, voice in enumerate(DESIGNED, 1):  # a progress line per voice, before ready
            assert f"voice {voice} warm ({number}/{len(DESIGNED)}," in before
        assert "13 designed voices warm" in before
        for voice in ("cedar", "marin", "verse"):  # the last ones warmed, never the default
            body = {"model": "tts-1", "voice": voice, "input": "Hello.", "response_format": "wav"}
            spoken = httpx.post(f"{proc.base_url}/v1/audio/speech", json=body, timeout=120)
            assert spoken.status_code == 200
        after = proc.output()[len(before) :]
        assert "designing voice" not in after and "warm" not in after
    finally:
        proc.stop()
