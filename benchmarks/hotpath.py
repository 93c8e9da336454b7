"""The request hot path against bare uvicorn, in one run: `python benchmarks/hotpath.py [--seconds 5]`.

Starts a bare ASGI app (15 bytes of JSON) and `voxport serve --engine sim` (no model: the answers measured
here need no GPU work), warms one cache entry, then runs wrk (Debian's package) against the bare app,
`/health`, `/v1/models` and a cache hit of `POST /v1/audio/speech`, at 1 and 32 connections.
Prints a Markdown table with each target's requests per second, p50 and p99, and its ratio to bare uvicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"15")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
"""
HIT_BODY = {"model": "tts-1", "voice": "alloy", "input": "Your table is ready.", "response_format": "mp3",
            "seed": 7, "max_length": 32, "stream": False}  # fmt: skip


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"hotpath: {url} did not answer")


def _wrk(url: str, connections: int, seconds: int, script: Path | None) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def latency(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {
        "rps": rate,
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": int(errors.group(1)) if errors else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("hotpath: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="voxport-hotpath-"))
    (work / "bare.py").write_text(BARE_APP)
    bare_port, vox_port = _port(), _port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bare:app", "--port", str(bare_port), "--log-level", "warning"],
            cwd=work,
        ),  # fmt: skip
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voxport",
                "serve",
                "--engine",
                "sim",
                "--port",
                str(vox_port),
                "--data-dir",
                str(work / "data"),
                "--log-level",
                "warning",
            ]
        ),  # fmt: skip
    ]
    try:
        bare, vox = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{vox_port}"
        _wait(f"{bare}/")
        _wait(f"{vox}/ready")
        first = httpx.post(f"{vox}/v1/audio/speech", json=HIT_BODY, timeout=60)
        assert first.status_code == 200, first.text
        assert httpx.post(f"{vox}/v1/audio/speech", json=HIT_BODY).headers["x-cache"] == "HIT"
        post = work / "post.lua"
        post.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(HIT_BODY))}\n"
        )
        targets = [
            ("bare uvicorn (15 B JSON)", f"{bare}/", None),
            ("GET /health", f"{vox}/health", None),
            ("GET /v1/models", f"{vox}/v1/models", None),
            (
                f"cache hit, POST /v1/audio/speech (mp3, {len(first.content) // 1000} kB)",
                f"{vox}/v1/audio/speech",
                post,
            ),  # fmt: skip
        ]
        rows = []
        baseline: dict[int, float] = {}
        for name, url, script in targets:
            cells = []
            for connections in (1, 32):
                m = _wrk(url, connections, args.seconds, script)
                baseline.setdefault(connections, m["rps"])
                ratio = m["rps"] / baseline[connections]
                bad = f", {m['non2xx']} non-2xx" if m["non2xx"] else ""
                cells.append(f"{m['rps']:,.0f} req/s (×{ratio:.3f}), p50 {m['p50']:.2f} ms, "
                             f"p99 {m['p99']:.2f} ms{bad}")  # fmt: skip
            rows.append(f"| {name} | {cells[0]} | {cells[1]} |")
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())  # fmt: skip
        print(
            f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}; wrk -t1, "
            f"{args.seconds} s per cell, load average before: {os.getloadavg()[0]:.2f}\n"
        )
        print("| target | c=1 | c=32 |\n|---|---|---|")
        print("\n".join(rows))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
