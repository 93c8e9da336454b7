"""Jobs on the reference engine and the tiny checkpoint: the audio is right, and a server killed with
SIGKILL mid-job resumes it after a restart from the last finished segment, never generating a finished
segment again, and ends with the same bytes as an uninterrupted run; so does a job whose segments live
requests pre-empt."""

from __future__ import annotations

import io
import sqlite3
import time
import wave
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import TEST_MAX_LENGTH, ServerProcess

SENTENCES = 8
TEXT = " ".join(f"Sentence {word} is spoken now." for word in
                ["one", "two", "three", "four", "five", "six", "seven", "eight"])  # fmt: skip
BODY = {"model": "voxcpm2", "voice": "alloy", "input": TEXT, "response_format": "wav", "seed": 42}


def start(model: Path, data: Path) -> ServerProcess:
    # A 40-character segment cap: one segment per sentence.
    proc = ServerProcess(["--model", str(model), "--data-dir", str(data), "--segment-max-chars", "40",
                          "--max-length", str(TEST_MAX_LENGTH), "--design-clip-seconds", "1"])  # fmt: skip
    proc.wait_ready()
    return proc


def poll(base_url: str, job_id: str, until, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base_url}/v1/audio/speech/jobs/{job_id}", timeout=10).json()
        if until(job):
            return job
        time.sleep(0.02)
    raise TimeoutError(job)


def finished(job: dict) -> bool:
    return job["status"] not in ("queued", "running")


def segments_generated(data: Path, job_id: str) -> int:
    with sqlite3.connect(data / "jobs" / "jobs.sqlite3") as db:
        return db.execute("SELECT segments_generated FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def test_kill_mid_job_then_restart_gives_the_same_audio(tiny_model: Path, tmp_path: Path) -> None:
    # The uninterrupted run.
    server = start(tiny_model, tmp_path / "a")
    try:
        job = httpx.post(f"{server.base_url}/v1/audio/speech/jobs", json=BODY, timeout=60).json()
        done = poll(server.base_url, job["id"], finished)
        assert done["status"] == "succeeded", done
        assert done["progress"]["segments_total"] == SENTENCES
        reference = httpx.get(
            f"{server.base_url}/v1/audio/speech/jobs/{job['id']}/content", timeout=60
        ).content
        # The same job again, with live requests made while its segments generate: on this
        # one-at-a-time engine each pre-empts the segment in progress, which is generated again later.
        # The live requests are served, and the job's bytes do not change.
        job = httpx.post(f"{server.base_url}/v1/audio/speech/jobs", json=BODY, timeout=60).json()
        for n in (1, 3, 5):
            poll(server.base_url, job["id"], lambda j, n=n: j["progress"]["segments_done"] >= n)
            live = httpx.post(f"{server.base_url}/v1/audio/speech", timeout=120, json={
                **BODY, "input": f"Live request {n}.", "cache": False, "stream": False})  # fmt: skip
            assert live.status_code == 200 and live.content[:4] == b"RIFF"
        done = poll(server.base_url, job["id"], finished)
        assert done["status"] == "succeeded", done
        preempted = httpx.get(f"{server.base_url}/v1/audio/speech/jobs/{job['id']}/content", timeout=60)
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    finally:
        server.stop()
    assert preempted.content == reference
    count = next(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("voxport_job_segments_preempted_total "))  # fmt: skip
    assert count >= 1, "no live request found a job segment generating"
    with wave.open(io.BytesIO(reference)) as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        rate = w.getframerate()
    # Eight generations of TEST_MAX_LENGTH steps (the tiny checkpoint never stops early), 10 ms of
    # cross-fade at each of the seven joins; real audio, not silence.
    step = 0.16
    assert abs(len(frames) / rate - (SENTENCES * TEST_MAX_LENGTH * step - 7 * 0.01)) < 0.01
    assert np.abs(frames).max() > 0

    # The interrupted run: SIGKILL once a few segments are done, then a restart on the same data.
    data = tmp_path / "b"
    server = start(tiny_model, data)
    try:
        job = httpx.post(f"{server.base_url}/v1/audio/speech/jobs", json=BODY, timeout=60).json()
        midway = poll(
            server.base_url, job["id"], lambda j: j["progress"]["segments_done"] >= 3 or finished(j)
        )
        server.proc.kill()
        server.proc.wait()
    finally:
        server.stop()
    assert midway["status"] == "running" and midway["progress"]["segments_done"] < SENTENCES, midway
    killed_at = segments_generated(data, job["id"])
    assert 3 <= killed_at < SENTENCES
    print(f"killed after {killed_at} of {SENTENCES} segments")
    server = start(tiny_model, data)
    try:
        done = poll(server.base_url, job["id"], finished)
        assert done["status"] == "succeeded", done
        resumed = httpx.get(f"{server.base_url}/v1/audio/speech/jobs/{job['id']}/content", timeout=60).content
        assert "resumes at segment" in server.output()
    finally:
        server.stop()
    assert resumed == reference
    # Every segment generated exactly once across both processes.
    assert segments_generated(data, job["id"]) == SENTENCES
