"""`--workers 2 --redis-url`: each worker is a replica of the shared state (voxport.cluster). A voice
uploaded through one worker speaks through both, identical concurrent requests generate once (the Redis
lock, across workers as across replicas), and jobs run. Real processes, a real redis-server, the reference
engine on the tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess
from tests.redis_server import RedisServer
from tests.test_topology import TIMEOUT, served_by, speak, start, wait_for
from tests.test_voices import audio_file
from tests.test_workers_flight import identical_at_once, workers_of

JOBS = "/v1/audio/speech/jobs"


@pytest.fixture(scope="module")
def redis2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    data = tmp_path_factory.mktemp("workers-redis")
    try:
        proc = start(["--model", str(tiny_model), "--data-dir", str(data), "--redis-url", redis.url,
                      "--max-length", str(TEST_MAX_LENGTH), "--design-clip-seconds", "1"])  # fmt: skip
    except BaseException:
        redis.stop()
        raise
    yield proc
    proc.stop()
    redis.stop()


def test_identical_requests_on_both_workers_generate_once(redis2: ServerProcess):
    for round_ in range(8):  # until one round's requests landed on both workers
        prefix = f"redis{round_}"
        answers = identical_at_once(redis2.base_url, f"Redis says once, round {round_}.", prefix)
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert sorted(a.headers["x-cache"] for a in answers) == ["HIT"] * 5 + ["MISS"]
        assert len({a.content[44:] for a in answers}) == 1
        if set(workers_of(redis2, prefix).values()) == {"0", "1"}:
            return
    pytest.fail("no round reached both workers")


def test_a_voice_uploaded_through_one_worker_speaks_through_both(redis2: ServerProcess):
    base = redis2.base_url
    files = {"audio_sample": ("a.wav", audio_file("wav"))}
    created = httpx.post(base + "/v1/audio/voices", data={"name": "redis-shared", "consent": "true"},
                         files=files, timeout=TIMEOUT)  # fmt: skip
    assert created.status_code == 201, created.text
    voice = created.json()["id"]
    before = served_by(redis2)
    for round_ in range(10):  # new connections each time: until both workers have spoken with it
        answers = [speak(base, f"Redis round {round_} line {i}.", voice=voice, response_format="pcm")
                   for i in range(4)]  # fmt: skip
        assert all(a.status_code == 200 and a.content for a in answers), [a.text for a in answers]
        now = served_by(redis2)
        if all(now.get(w, 0) > before.get(w, 0) for w in ("0", "1")):
            return
    pytest.fail("one worker never served the uploaded voice")


def test_jobs_run_and_their_audio_comes_from_either_worker(redis2: ServerProcess):
    base = redis2.base_url
    body = {"model": "tts-1", "voice": "alloy", "input": "A job. Run by one of two workers.",
            "response_format": "wav"}  # fmt: skip
    job = httpx.post(base + JOBS, json=body, timeout=30).json()
    wait_for(lambda: httpx.get(f"{base}{JOBS}/{job['id']}", timeout=10).json()["status"] == "succeeded")
    contents = [httpx.get(f"{base}{JOBS}/{job['id']}/content", timeout=30) for _ in range(6)]
    assert all(c.status_code == 200 for c in contents), [c.text for c in contents]
    assert len({c.content for c in contents}) == 1 and len(contents[0].content) > 44
