"""Against a real `voxport serve` process: the official sync SDK, curl-like raw HTTP, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import openai
import pytest

from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH
from tests.test_speech_api import FORMATS

ENGINE_SECONDS = TEST_MAX_LENGTH * STEP_SECONDS


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sync_sdk_gets_every_format(client: openai.OpenAI, fmt: str) -> None:
    codec, _, rate = FORMATS[fmt]
    response = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello from a real server.", response_format=fmt
    )
    audio = decode(response.content, fmt, pcm_rate=rate)
    assert (audio.codec, audio.sample_rate, audio.channels) == (codec, rate, 1)
    assert audio.duration == pytest.approx(ENGINE_SECONDS, abs=STEP_SECONDS)
    assert audio.rms > 1e-4


def test_sync_sdk_writes_a_file(client: openai.OpenAI, tmp_path) -> None:
    target = tmp_path / "speech.flac"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1-hd", voice="shimmer", input="Saved to disk.", response_format="flac"
    ) as response:
        response.stream_to_file(target)
    assert decode(target.read_bytes(), "flac").duration == pytest.approx(ENGINE_SECONDS, abs=STEP_SECONDS)


def test_bad_request_then_good_request(server) -> None:
    bad = httpx.post(f"{server.base_url}/v1/audio/speech", content=b"{oops", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    good = httpx.post(
        f"{server.base_url}/v1/audio/speech",
        json={"model": "tts-1", "input": "Fine again.", "response_format": "pcm"},
        timeout=60,
    )
    assert good.status_code == 200 and good.headers["x-sample-rate"] == "24000"


def _serve(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voxport", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_serve_with_missing_directory_exits_at_once(tmp_path) -> None:
    # "At once": refused before anything slow is even imported (the engine's torch, the server's stack),
    # as Python's own import log shows (PYTHONPROFILEIMPORTTIME writes one "import time:" line per module).
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = _serve("--model", str(tmp_path / "nowhere"), env=env)
    assert result.returncode == 2
    assert "no such directory" in result.stderr
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "voxport.cli" in imported
    assert not {"torch", "uvicorn", "fastapi", "voxport.engine"} & imported


def test_serve_with_a_missing_relative_path_says_no_such_directory(tmp_path) -> None:
    (tmp_path / "models").mkdir()  # `models/tiny` beside a models folder is a path, not a hub id
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for model in ("models/tiny", "checkpoints/v2/tiny"):
        command = [sys.executable, "-m", "voxport", "serve", "--model", model]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert result.returncode == 2
        assert f"--model {model}: no such directory" in result.stderr
        assert "hub" not in result.stderr


def test_a_taken_port_is_reported_before_the_model_loads(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # No checkpoint at all: had the model been loaded first, this would fail on the model instead.
        result = _serve(
            "--model", str(tmp_path / "nowhere"), "--port", str(port), "--data-dir", str(tmp_path)
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "no such directory" not in result.stderr


def test_serve_with_unreachable_hub_says_how_to_proceed(tmp_path) -> None:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = _serve("--model", "openbmb/VoxCPM2", env=env)
    assert result.returncode == 2
    assert "no such local directory, and could not fetch 'openbmb/VoxCPM2'" in result.stderr
    assert "voxport dummy-model" in result.stderr and "--model" in result.stderr


def test_serve_rejects_a_directory_that_is_not_a_checkpoint(tmp_path) -> None:
    result = _serve("--model", str(tmp_path))
    assert result.returncode == 2
    assert "missing config.json" in result.stderr


def test_serve_rejects_bad_settings_from_environment(tmp_path) -> None:
    import os

    result = _serve("--model", str(tmp_path), env={**os.environ, "VOXPORT_PORT": "not-a-port"})
    assert result.returncode == 2
    assert "port" in result.stderr
