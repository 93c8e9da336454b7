"""Speech-job throughput on one embedded server, and on 1 and 2 replicas sharing a Redis:
`python benchmarks/jobs_redis.py`.

Starts a loopback `redis-server` (Debian's package) and `voxport serve --engine sim` replicas (GPU-rate
batching, no model), submits the same set of jobs to each setup (round-robin over its replicas), and
times them from the first submission until every job has succeeded. Prints the jobs' audio seconds per
wall-clock second for each setup and the 2-replica / 1-replica ratio. On a busy or small machine the
replicas compete for the CPU (HTTP, encoding, Redis transfers), so rerun on a quiet one for figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _local import free_port, wait_ok

TEXT = " ".join(f"Sentence {i} of a background job, read at a steady pace." for i in range(12))
BODY = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "wav", "max_length": 40}


def _replica(work: Path, name: str, redis_url: str | None, prefix: str,
             sim: list[str]) -> tuple[subprocess.Popen, str]:  # fmt: skip
    port = free_port()
    args = [sys.executable, "-m", "voxport", "serve", "--engine", "sim", "--port", str(port), "--data-dir",
            str(work / name), "--log-level", "warning", *sim]  # fmt: skip
    if redis_url:
        args += [
            "--redis-url",
            redis_url,
            "--redis-prefix",
            prefix,
        ]  # one prefix per setup: its replicas share it
    proc = subprocess.Popen(args)
    base = f"http://127.0.0.1:{port}"
    wait_ok(f"{base}/ready")
    return proc, base


def _run(bases: list[str], jobs: int) -> tuple[float, float]:
    """(wall seconds, audio seconds) for `jobs` jobs spread over the replicas."""
    started = time.perf_counter()
    ids = [httpx.post(f"{bases[i % len(bases)]}/v1/audio/speech/jobs", json=BODY, timeout=60).json()["id"]
           for i in range(jobs)]  # fmt: skip
    pending = set(ids)
    audio = 0.0
    while pending:
        time.sleep(0.1)
        for job_id in list(pending):
            job = httpx.get(f"{bases[0]}/v1/audio/speech/jobs/{job_id}", timeout=60).json()
            if job["status"] not in ("queued", "running"):
                assert job["status"] == "succeeded", job
                audio += job["result"]["duration_seconds"]
                pending.discard(job_id)
    return time.perf_counter() - started, audio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    # As benchmarks/scaleout.py: a small, slow simulated GPU per replica, so that the engine, not this
    # machine's CPU, limits one replica (at the sim's full speed two replicas on two cores only share them).
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--sim-step-ms", type=float, default=40.0)
    args = parser.parse_args()
    sim = ["--max-num-seqs", str(args.max_num_seqs), "--sim-step-ms", str(args.sim_step_ms)]
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    work = Path(tempfile.mkdtemp(prefix="voxport-jobs-redis-"))
    port = free_port()
    redis_args = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(work)]
    redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{port}/0"
    procs: list[subprocess.Popen] = []
    results = {}
    try:
        for setup, replicas, url in (
            ("embedded", 1, None),
            ("redis-1", 1, redis_url),
            ("redis-2", 2, redis_url),
        ):
            started = [_replica(work, f"{setup}-{i}", url, setup, sim) for i in range(replicas)]
            procs += [p for p, _ in started]
            wall, audio = _run([b for _, b in started], args.jobs)
            results[setup] = audio / wall
            rate = audio / wall
            print(
                f"{setup:9} {args.jobs} jobs: {wall:6.1f} s wall, {audio:7.1f} s audio, {rate:7.1f} audio-s/s"
            )
            for p, _ in started:
                p.terminate()
                p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        redis.terminate()
        redis.wait()
    print(f"2 replicas / 1 replica: {results['redis-2'] / results['redis-1']:.2f}x "
          f"({platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
