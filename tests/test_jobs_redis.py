"""Speech jobs on a shared Redis (`--redis-url`): real redis-server, real `voxport serve` replicas on the
sim engine (deterministic, real audio), real HTTP.

One job API across replicas (any replica answers for any job; idempotency keys and quotas hold across
them); a replica killed with SIGKILL while 20 jobs run loses nothing and generates nothing twice; a
webhook is delivered once, with retries recorded in Redis; with appendonly, a Redis restart loses no job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.redis_server import RedisServer
from tests.webhook_receiver import Receiver
from voxport.cluster.jobstore import RedisJobStore
from voxport.cluster.redis import SharedRedis

PREFIX = "vt"
# Four 40-character segments; the sim engine's audio is a tone set by text, voice and seed.
TEXT = " ".join(f"Sentence {word} of this job is here." for word in ("one", "two", "three", "four"))
BODY = {
    "model": "tts-1",
    "voice": "alloy",
    "input": TEXT,
    "response_format": "wav",
    "seed": 7,
    "max_length": 30,
}
SEGMENTS = 4


def replica(data: Path, redis_url: str | None, *extra: str) -> ServerProcess:
    args = ["--engine", "sim", "--data-dir", str(data), "--segment-max-chars", "40", "--sim-step-ms", "25",
            "--max-concurrent", "4", "--job-visibility-timeout-s", "2", "--webhook-allow-hosts", "127.0.0.1",
            *extra]  # fmt: skip
    if redis_url:
        args += ["--redis-url", redis_url, "--redis-prefix", PREFIX]
    proc = ServerProcess(args)
    proc.wait_ready()
    return proc


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    yield server
    server.stop()


def wait_until(check, timeout: float = 180, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


def job(base: str, job_id: str) -> dict:
    return httpx.get(f"{base}/v1/audio/speech/jobs/{job_id}", timeout=30).json()


def unfinished(job: dict) -> bool:
    # A 503 while the replica reconnects to a Redis that was just restarted (the store's answer while
    # Redis is away, with Retry-After): not finished yet, ask again.
    if "status" not in job and job.get("error", {}).get("code") == "job_store_unavailable":
        return True
    return job["status"] in ("queued", "running")


def content(base: str, job_id: str) -> bytes:
    answer = httpx.get(f"{base}/v1/audio/speech/jobs/{job_id}/content", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.content


def generated(server: RedisServer, job_id: str) -> int:
    with server.client() as client:
        return int(client.hget(f"{PREFIX}:job:{job_id}", "segments_generated") or 0)


def test_a_replica_killed_while_20_jobs_run_loses_none_and_repeats_none(redis_aof: RedisServer,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    # The reference: one uninterrupted job on the embedded (SQLite) default.
    single = replica(tmp_path / "single", None)
    try:
        ref_id = httpx.post(f"{single.base_url}/v1/audio/speech/jobs", json=BODY, timeout=30).json()["id"]
        assert (
            wait_until(lambda: not unfinished(j := job(single.base_url, ref_id)) and j)["status"]
            == "succeeded"
        )
        reference = content(single.base_url, ref_id)
    finally:
        single.stop()

    # 100 ms steps: a segment takes 3 s, and 80 of them, 3 at a time per replica, most of a minute.
    a = replica(tmp_path / "a", redis_aof.url, "--sim-step-ms", "100")
    b = replica(tmp_path / "b", redis_aof.url, "--sim-step-ms", "100")
    try:
        bases = [(a, b)[i % 2].base_url for i in range(20)]
        ids = [
            httpx.post(f"{base}/v1/audio/speech/jobs", json=BODY, timeout=30).json()["id"] for base in bases
        ]

        def segments_done() -> int:
            listed = httpx.get(f"{b.base_url}/v1/audio/speech/jobs?limit=100", timeout=30).json()["data"]
            return sum(j["progress"]["segments_done"] for j in listed)

        wait_until(lambda: segments_done() >= 12)
        a.proc.kill()  # SIGKILL: no hand-back, its claimed segments wait out the visibility timeout
        a.proc.wait()
        done_at_kill = segments_done()
        assert done_at_kill < 20 * SEGMENTS, "every job had finished before the kill: nothing was tested"
        final = [wait_until(lambda i=i: not unfinished(j := job(b.base_url, i)) and j) for i in ids]
        assert [j["status"] for j in final] == ["succeeded"] * 20, final
        assert all(j["progress"]["segments_done"] == SEGMENTS for j in final)
        # Nothing generated twice: every recorded generation of every job, across both replicas.
        assert [generated(redis_aof, i) for i in ids] == [SEGMENTS] * 20
        survivor = httpx.get(f"{b.base_url}/metrics", timeout=10).text
        print(f"segments done at the kill: {done_at_kill} of {20 * SEGMENTS}")
        print([line for line in survivor.splitlines() if line.startswith("voxport_job_segments_total")])
        # Byte-identical to the uninterrupted embedded run, whichever replica made which segment.
        for job_id in ids:
            assert content(b.base_url, job_id) == reference
        assert "reclaimed" in b.output()
    finally:
        a.stop()
        b.stop()


def test_one_job_api_across_replicas(redis_aof: RedisServer, tmp_path: Path) -> None:
    slow = ("--sim-step-ms", "200", "--max-queued-jobs", "3")
    a = replica(tmp_path / "a", redis_aof.url, *slow)
    b = replica(tmp_path / "b", redis_aof.url, *slow)
    long = {**BODY, "input": " ".join([TEXT] * 10), "max_length": 200}
    try:
        headers = {"Idempotency-Key": "order-1"}
        first = httpx.post(f"{a.base_url}/v1/audio/speech/jobs", json=long, headers=headers, timeout=30)
        again = httpx.post(f"{b.base_url}/v1/audio/speech/jobs", json=long, headers=headers, timeout=30)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        job_id = first.json()["id"]
        seen = job(b.base_url, job_id)
        assert seen["id"] == job_id and seen["object"] == "speech.job"
        listed = httpx.get(f"{b.base_url}/v1/audio/speech/jobs", timeout=30).json()
        assert [j["id"] for j in listed["data"]] == [job_id]
        # The quota counts every replica's jobs: 3 unfinished in all, whichever replica took them.
        second = httpx.post(f"{b.base_url}/v1/audio/speech/jobs", json=long, timeout=30)
        third = httpx.post(f"{a.base_url}/v1/audio/speech/jobs", json=long, timeout=30)
        assert second.status_code == third.status_code == 202
        over = httpx.post(f"{b.base_url}/v1/audio/speech/jobs", json=long, timeout=30)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "job_quota_exceeded"
        over = httpx.post(f"{a.base_url}/v1/audio/speech/batches", json={"requests": [BODY]}, timeout=30)
        assert over.status_code == 429, over.text
        # A job submitted to A is cancelled through B, while it runs (on either replica).
        wait_until(lambda: job(a.base_url, job_id)["status"] == "running")
        cancelled = httpx.post(f"{b.base_url}/v1/audio/speech/jobs/{job_id}/cancel", timeout=30).json()
        assert cancelled["status"] == "cancelled"
        assert job(a.base_url, job_id)["status"] == "cancelled"
        for other in (second.json()["id"], third.json()["id"]):
            httpx.post(f"{a.base_url}/v1/audio/speech/jobs/{other}/cancel", timeout=30)
        # Room again: a short job made on B is fetched, with a Range, and deleted through A.
        short = httpx.post(f"{b.base_url}/v1/audio/speech/jobs", json=BODY, timeout=30).json()["id"]
        assert wait_until(lambda: not unfinished(j := job(a.base_url, short)) and j)["status"] == "succeeded"
        whole = content(a.base_url, short)
        part = httpx.get(f"{a.base_url}/v1/audio/speech/jobs/{short}/content",
                         headers={"Range": "bytes=0-43"}, timeout=30)  # fmt: skip
        assert part.status_code == 206 and part.content == whole[:44] and whole[:4] == b"RIFF"
        assert content(b.base_url, short) == whole
        assert httpx.delete(f"{a.base_url}/v1/audio/speech/jobs/{short}", timeout=30).json()["deleted"]
        assert httpx.get(f"{b.base_url}/v1/audio/speech/jobs/{short}", timeout=30).status_code == 404
        assert httpx.get(f"{b.base_url}/v1/audio/speech/jobs/{short}/content", timeout=30).status_code == 404
        # Every replica's gauges follow the shared counts (refreshed from Redis every two seconds).
        wait_until(
            lambda: (
                httpx.get(f"{b.base_url}/health", timeout=10).json()["jobs"] == {"queued": 0, "running": 0}
            )
        )
    finally:
        a.stop()
        b.stop()


def test_a_webhook_is_delivered_once_and_its_retries_are_kept_in_redis(redis_aof: RedisServer,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    with Receiver(fail_first=2) as receiver:
        a = replica(tmp_path / "a", redis_aof.url)
        b = replica(tmp_path / "b", redis_aof.url)
        try:
            body = {"requests": [BODY] * 4, "webhook_url": receiver.url}
            batch = httpx.post(f"{a.base_url}/v1/audio/speech/batches", json=body, timeout=30).json()
            hooked_body = {**BODY, "webhook_url": receiver.url}
            hooked = httpx.post(f"{b.base_url}/v1/audio/speech/jobs", json=hooked_body, timeout=30).json()
            wait_until(lambda: len(receiver.accepted()) >= 2)
            first_two = [r.headers["webhook-id"] for r in receiver.accepted()]
            # Later events through both replicas, instead of a pause: deliveries go out in the order they
            # fall due, so a second delivery of either event would come before these.
            for base in (a.base_url, b.base_url):
                httpx.post(f"{base}/v1/audio/speech/jobs", json=hooked_body, timeout=30).raise_for_status()
            wait_until(lambda: len(receiver.accepted()) >= 4)
            accepted = [r.headers["webhook-id"] for r in receiver.accepted()]
            assert accepted[:2] == first_two and len(set(accepted)) == len(accepted) == 4
            accepted, later = first_two, set(accepted[2:])
            received = [r for r in receiver.received if r.headers["webhook-id"] not in later]
            with redis_aof.client() as client:
                subjects = [f"{PREFIX}:deliveries:by-subject:{s}" for s in (batch["id"], hooked["id"])]
                ids = [i.decode() for key in subjects for i in client.lrange(key, 0, -1)]
                attempts = [int(client.hget(f"{PREFIX}:delivery:{i}", "attempts")) for i in ids]
                statuses = [client.hget(f"{PREFIX}:delivery:{i}", "status").decode() for i in ids]
            # One delivery per event; the receiver's two failures (500) were retried, and every attempt
            # is recorded in Redis: four in all, as the receiver saw.
            assert sorted(ids) == sorted(accepted) and statuses == ["delivered", "delivered"]
            assert sum(attempts) == len(received) == 4
            assert {r.headers["webhook-id"] for r in received} == set(ids)
        finally:
            a.stop()
            b.stop()


def test_with_appendonly_queued_jobs_survive_a_redis_restart(redis_aof: RedisServer, tmp_path: Path) -> None:
    a = replica(tmp_path / "a", redis_aof.url, "--sim-step-ms", "100")
    try:
        ids = [httpx.post(f"{a.base_url}/v1/audio/speech/jobs", json=BODY, timeout=30).json()["id"]
               for _ in range(8)]  # fmt: skip
        wait_until(lambda: job(a.base_url, ids[0])["progress"]["segments_done"] >= 1)
        a.proc.kill()  # the replica dies with work claimed, and Redis restarts: both from disk
        a.proc.wait()
        time.sleep(1.5)  # appendfsync everysec
        redis_aof.restart()
        b = replica(tmp_path / "b", redis_aof.url)
        try:
            final = [wait_until(lambda i=i: not unfinished(j := job(b.base_url, i)) and j) for i in ids]
            assert [j["status"] for j in final] == ["succeeded"] * 8
            assert [generated(redis_aof, i) for i in ids] == [SEGMENTS] * 8
            # Redis away under a running replica: the job routes say so (503), live speech goes on; Redis
            # back: the replica reconnects and the job completes.
            more = httpx.post(f"{b.base_url}/v1/audio/speech/jobs", json=BODY, timeout=30).json()["id"]
            redis_aof.stop()
            away = httpx.get(f"{b.base_url}/v1/audio/speech/jobs/{more}", timeout=30)
            assert away.status_code == 503 and away.json()["error"]["code"] == "job_store_unavailable"
            live = httpx.post(f"{b.base_url}/v1/audio/speech", json={**BODY, "input": "Live."}, timeout=60)
            assert live.status_code == 200 and live.content[:4] == b"RIFF"
            redis_aof.start()
            assert (
                wait_until(lambda: not unfinished(j := job(b.base_url, more)) and j)["status"] == "succeeded"
            )
        finally:
            b.stop()
    finally:
        a.stop()


def test_a_segment_that_replicas_keep_dying_on_fails_its_job(redis_aof: RedisServer, tmp_path: Path) -> None:
    async def submit() -> str:
        shared = SharedRedis(redis_aof.url, PREFIX)
        store = RedisJobStore(shared, lambda text, language=None: [text], delivery_lease_s=30)
        job, _ = await store.create_job(BODY)
        await shared.close()
        return job.id

    job_id = asyncio.run(submit())
    stream = f"{PREFIX}:jobs:stream"
    with redis_aof.client() as client:
        client.xgroup_create(stream, "runners", id="0", mkstream=True)
        [(_, [(msg_id, _fields)])] = client.xreadgroup("runners", "dead-0", {stream: ">"}, count=1)
        for n in range(1, 5):  # four more replicas took it and died: five claims; the next is one too many
            client.xclaim(stream, "runners", f"dead-{n}", 0, [msg_id])
    a = replica(tmp_path / "a", redis_aof.url)
    try:
        failed = wait_until(lambda: not unfinished(j := job(a.base_url, job_id)) and j)
        assert failed["status"] == "failed" and failed["error"]["code"] == "job_segment_abandoned", failed
        assert generated(redis_aof, job_id) == 0
        # A job that is not poisoned runs as usual on the same replica.
        fine = httpx.post(f"{a.base_url}/v1/audio/speech/jobs", json=BODY, timeout=30).json()["id"]
        assert wait_until(lambda: not unfinished(j := job(a.base_url, fine)) and j)["status"] == "succeeded"
    finally:
        a.stop()


def test_a_replica_stopped_cleanly_hands_its_work_back_at_once(
    redis_aof: RedisServer, tmp_path: Path
) -> None:
    # A visibility timeout far beyond the test's patience: only a hand-back lets B finish in time.
    patient = ("--sim-step-ms", "100", "--job-visibility-timeout-s", "3600")
    a = replica(tmp_path / "a", redis_aof.url, *patient)
    try:
        ids = [httpx.post(f"{a.base_url}/v1/audio/speech/jobs", json=BODY, timeout=30).json()["id"]
               for _ in range(4)]  # fmt: skip
        wait_until(lambda: job(a.base_url, ids[0])["progress"]["segments_done"] >= 1)
    finally:
        out = a.stop()  # SIGTERM
    assert "back to the queue" in out
    b = replica(tmp_path / "b", redis_aof.url, *patient)
    try:
        final = [wait_until(lambda i=i: not unfinished(j := job(b.base_url, i)) and j) for i in ids]
        assert [j["status"] for j in final] == ["succeeded"] * 4
        assert [generated(redis_aof, i) for i in ids] == [SEGMENTS] * 4
    finally:
        b.stop()
