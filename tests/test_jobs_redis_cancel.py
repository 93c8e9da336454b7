"""A cancel through one replica stops another replica's work (docs/scaling.md: "the replicas working on
it notice within half a second and stop"), issue 30. Two `voxport serve` replicas on one real Redis
(`--engine sim` with slow steps: the job's one segment would generate for about 100 s); the replica that
is generating is found from its own /health, the cancel goes through the other, and the generating one
must free its generation slot long before the segment could have finished."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.redis_server import RedisServer
from tests.test_jobs_redis import BODY, redis_aof, replica  # noqa: F401 - redis_aof is a fixture

LONG = " ".join(["This single long sentence keeps one replica generating for a long while"] * 4) + "."


def generating(base_url: str) -> int:
    return httpx.get(f"{base_url}/health", timeout=10).json()["requests_generating"]


def wait_for(check, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_a_cancel_through_one_replica_stops_the_others_generation(
    redis_aof: RedisServer,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    slow = ("--sim-step-ms", "500", "--segment-max-chars", "400")
    a = replica(tmp_path / "a", redis_aof.url, *slow)
    b = replica(tmp_path / "b", redis_aof.url, *slow)
    try:
        body = {**BODY, "input": LONG, "max_length": 200}  # 200 steps of 0.5 s: 100 s of generation
        job_id = httpx.post(f"{a.base_url}/v1/audio/speech/jobs", json=body, timeout=30).json()["id"]
        worker = wait_for(
            lambda: next((r for r in (a, b) if generating(r.base_url) >= 1), None),
            "a replica to generate the job",
            timeout=120,
        )
        other = b if worker is a else a
        cancelled = httpx.post(f"{other.base_url}/v1/audio/speech/jobs/{job_id}/cancel", timeout=30)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        started = time.monotonic()
        wait_for(lambda: generating(worker.base_url) == 0, "the working replica to stop generating", 30)
        assert time.monotonic() - started < 30  # the segment alone had ~100 s to go
        job = httpx.get(f"{worker.base_url}/v1/audio/speech/jobs/{job_id}", timeout=30).json()
        assert job["status"] == "cancelled" and job["result"] is None
    finally:
        a.stop()
        b.stop()
