"""A job's captions (GET /v1/audio/speech/jobs/{id}/captions) through a real `voxport serve` on the tiny
checkpoint: one cue per job segment, timed as the decoded audio says, and still there after a restart."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from tests.audio_check import decode
from tests.conftest import TEST_MAX_LENGTH, ServerProcess

SENTENCES = ["The first part is here.", "A second part follows it.", "And the third one ends it."]


def _server(model: Path, data: Path) -> ServerProcess:
    # segment_max_chars 30: each sentence is a job segment of its own.
    args = ["--model", str(model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH)]
    proc = ServerProcess([*args, "--design-clip-seconds", "1", "--segment-max-chars", "30"])
    proc.wait_ready()
    return proc


def _seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _finished(api: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = api.get(f"/v1/audio/speech/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise TimeoutError(job_id)


def test_captions_match_the_audio_and_survive_a_restart(tiny_model: Path, tmp_path: Path) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": " ".join(SENTENCES), "response_format": "wav",
            "speed": 1.5, "sample_rate": 16000, "seed": 1}  # fmt: skip
    server = _server(tiny_model, tmp_path)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as api:
            early = api.post("/v1/audio/speech/jobs", json=body).json()
            job = _finished(api, early["id"])
            assert job["status"] == "succeeded", job
            assert "timings" not in job["result"]  # kept in the store, served as captions
            audio = decode(api.get(f"/v1/audio/speech/jobs/{job['id']}/content").content, "wav")
            vtt_text = api.get(f"/v1/audio/speech/jobs/{job['id']}/captions").text
            response = api.get(f"/v1/audio/speech/jobs/{job['id']}/captions", params={"format": "srt"})
            assert response.headers["content-type"].startswith("application/x-subrip")
            srt_text = response.text
            bad = api.get(f"/v1/audio/speech/jobs/{job['id']}/captions", params={"format": "ass"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
            missing = api.get("/v1/audio/speech/jobs/speechjob_nope/captions")
            assert missing.status_code == 404
    finally:
        server.stop()

    cues = webvtt.from_buffer(io.StringIO(vtt_text)).captions
    assert [c.text for c in cues] == SENTENCES
    starts, ends = [_seconds(c.start) for c in cues], [_seconds(c.end) for c in cues]
    assert starts[0] == 0 and starts[1:] == ends[:-1]  # consecutive: no holes, no overlap
    assert ends[-1] == pytest.approx(audio.duration, abs=0.02)
    # 3 segments at speed 1.5: each lasts its generated audio / 1.5 (atempo's own rounding aside).
    assert ends[0] == pytest.approx(TEST_MAX_LENGTH * 0.16 / 1.5, abs=0.03)
    subs = list(srt.parse(srt_text))
    assert [s.content for s in subs] == SENTENCES
    assert [s.start.total_seconds() for s in subs] == pytest.approx(starts, abs=1e-3)
    assert [s.end.total_seconds() for s in subs] == pytest.approx(ends, abs=1e-3)

    again = _server(tiny_model, tmp_path)  # the same data directory: the times come from the store
    try:
        with httpx.Client(base_url=again.base_url, timeout=60) as api:
            assert api.get(f"/v1/audio/speech/jobs/{job['id']}/captions").text == vtt_text
    finally:
        again.stop()


def test_jobs_refuse_dialogue_and_timestamps(server: ServerProcess) -> None:
    base = {"model": "tts-1", "voice": "alloy"}
    for extra, param in (({"input": "Hi.", "timestamps": True}, "timestamps"),
                         ({"dialogue": [{"voice": "alloy", "input": "Hi."}]}, "dialogue"),
                         ({}, "input")):  # fmt: skip
        response = httpx.post(f"{server.base_url}/v1/audio/speech/jobs", json={**base, **extra}, timeout=60)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
