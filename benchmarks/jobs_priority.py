"""A live request's first audio while speech jobs are queued: `python benchmarks/jobs_priority.py`.

Starts `voxport serve` on a random-weight checkpoint (`--engine reference`, the one-generation-at-a-time
engine, where jobs and live requests compete hardest; `--engine sim` for GPU-rate batching), measures the
time to the first byte of streamed live requests on the idle server, then submits 10 long jobs and measures
the same requests while the jobs run and wait. Prints both p50s and their ratio (the target: at most 2×).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

LIVE = {"model": "tts-1", "voice": "alloy", "response_format": "pcm", "cache": False, "max_length": 12}
JOB_TEXT = " ".join(
    f"This is sentence number {i} of a long chapter read as a background job." for i in range(40)
)


def _first_audio(base: str, i: int) -> float:
    started = time.perf_counter()
    with httpx.stream("POST", f"{base}/v1/audio/speech", json={**LIVE, "input": f"Live request {i}."},
                      timeout=300) as response:  # fmt: skip
        response.raise_for_status()
        chunks = response.iter_bytes()
        next(chunks)
        first = time.perf_counter() - started
        for _ in chunks:
            pass
    return first


def _sample(base: str, n: int) -> list[float]:
    return [_first_audio(base, i) for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["reference", "sim"], default="reference")
    parser.add_argument("--requests", type=int, default=8, help="live requests per measurement")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="voxport-jobs-priority-"))
    serve = [sys.executable, "-m", "voxport", "serve", "--engine", args.engine, "--port", "8790",
             "--data-dir", str(work / "data"), "--max-length", "12", "--log-level", "warning"]  # fmt: skip
    if args.engine == "reference":
        from voxport.engine.dummy import build_checkpoint

        build_checkpoint(work / "tiny", size="tiny", seed=0)
        serve += ["--model", str(work / "tiny")]
    proc = subprocess.Popen(serve)
    base = "http://127.0.0.1:8790"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        _sample(base, 2)  # warm-up
        idle = _sample(base, args.requests)
        ids = [
            httpx.post(
                f"{base}/v1/audio/speech/jobs",
                json={"model": "tts-1", "voice": "alloy", "input": JOB_TEXT, "response_format": "wav"},
                timeout=60,
            ).json()["id"]  # fmt: skip
            for _ in range(10)
        ]
        time.sleep(1)
        jobs = httpx.get(f"{base}/health").json().get("jobs")
        busy = _sample(base, args.requests)
        after = httpx.get(f"{base}/health").json().get("jobs")
        for job_id in ids:
            httpx.post(f"{base}/v1/audio/speech/jobs/{job_id}/cancel")
        idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
        machine = f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
        print(f"machine: {machine}; engine {args.engine}; load average {os.getloadavg()[0]:.2f}")
        print(f"jobs at the start of the loaded sample: {jobs}; at its end: {after}")
        print("| live first audio | p50 ms | max ms |\n|---|---|---|")
        print(f"| idle server | {idle_p50 * 1000:.0f} | {max(idle) * 1000:.0f} |")
        print(f"| 10 jobs queued | {busy_p50 * 1000:.0f} | {max(busy) * 1000:.0f} |")
        print(f"ratio of p50s: {busy_p50 / idle_p50:.2f} (target ≤ 2)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
