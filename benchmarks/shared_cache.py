"""Cache hits from the disk cache and from the shared Redis cache: `python benchmarks/shared_cache.py`.

Starts a loopback redis-server (Debian's package), one `voxport serve --engine sim` without Redis and two
with `--redis-url`, makes one entry per format (on the first Redis replica), then times the same cache
hit served by the embedded replica (disk) and by the *other* Redis replica (made elsewhere, read from
Redis), with httpx clients at concurrency 1 and 8. Prints a Markdown table of requests per second, p50
and p99. Figures from a busy machine are noise: rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _local import free_port, wait_ok

BODY = {"model": "tts-1", "voice": "alloy", "input": "Your table is ready.", "seed": 7, "max_length": 32,
        "stream": False}  # fmt: skip


def _serve(work: Path, name: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "voxport", "serve", "--engine", "sim", "--port", str(port),
               "--data-dir", str(work / name), "--log-level", "warning", *extra]  # fmt: skip
    return subprocess.Popen(command), f"http://127.0.0.1:{port}"


def _measure(url: str, body: dict, requests: int, concurrency: int) -> dict[str, float]:
    def one(client: httpx.Client) -> float:
        start = time.perf_counter()
        response = client.post(f"{url}/v1/audio/speech", json=body)
        elapsed = time.perf_counter() - start
        if response.status_code != 200 or response.headers["x-cache"] != "HIT":
            raise SystemExit(f"shared_cache: expected a hit, got {response.status_code}")
        return elapsed

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        one(client)  # warm the connection
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            times = sorted(pool.map(lambda _: one(client), range(requests)))
        wall = time.perf_counter() - start
    return {"rps": requests / wall, "p50": statistics.median(times) * 1e3,
            "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="hits timed per cell")
    args = parser.parse_args()
    redis_server = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if redis_server is None:
        print("shared_cache: needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="voxport-shared-cache-"))
    redis_port = free_port()
    procs = [subprocess.Popen([redis_server, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                               "--dir", str(work)], stdout=subprocess.DEVNULL)]  # fmt: skip
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        started = [_serve(work, "disk"), *(_serve(work, n, "--redis-url", redis_url) for n in "ab")]
        procs += [proc for proc, _ in started]
        disk, made, other = (url for _, url in started)
        for url in (disk, made, other):
            wait_ok(f"{url}/ready")
        rows = []
        for fmt in ("mp3", "wav"):
            body = {**BODY, "response_format": fmt}
            for url in (disk, made):
                assert httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60).status_code == 200
            size = len(httpx.post(f"{disk}/v1/audio/speech", json=body, timeout=60).content)
            for label, url in (("disk cache (no Redis)", disk), ("Redis, made on another replica", other)):
                cells = [_measure(url, body, args.requests, c) for c in (1, 8)]
                text = [f"{m['rps']:,.0f} req/s, p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms" for m in cells]
                rows.append(f"| {fmt} ({size // 1000} kB) | {label} | {' | '.join(text)} |")
        print("| format | served from | concurrency 1 | concurrency 8 |\n|---|---|---|---|")
        print("\n".join(rows))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
