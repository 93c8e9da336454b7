"""Loudness across the designed voices, before and after `loudness`: `python benchmarks/loudness_spread.py`.

For every designed voice the server lists (voices/catalog.py: OpenAI's 13 names by default), the same
sentences are requested three ways and the decoded audio measured with pyloudnorm (ITU-R BS.1770):
as generated (buffered wav), with `loudness` buffered (measured whole, gained to the target), and with
`loudness` streamed (pcm: one gain held from the voice's measured reference level). Prints a Markdown
table per voice and the spread (max − min, and standard deviation, in LU) of each column, plus what the
measurement itself costs in-process per second of 48 kHz audio.

Without `--url` it starts `voxport serve` on the tiny random-weight checkpoint (`--model DIR` for another
checkpoint). Random weights make noise-like audio whose level has nothing to do with a real voice: on
them the figures show what the normaliser does to the spread, not how far apart VoxCPM2's voices are.
"""

from __future__ import annotations

import argparse
import io
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyloudnorm
import soundfile

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to bring your umbrella tomorrow morning.",
]


def _lufs(audio: np.ndarray, rate: int) -> float:
    return float(pyloudnorm.Meter(rate).integrated_loudness(audio.astype(np.float64)))


def _request(http: httpx.Client, body: dict) -> float:
    response = http.post("/v1/audio/speech", json=body)
    response.raise_for_status()
    if body["response_format"] == "pcm":
        audio = np.frombuffer(response.content, "<i2").astype(np.float64) / 32768
        return _lufs(audio, int(response.headers["x-sample-rate"]))
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float64")
    return _lufs(audio, rate)


def _spread(values: list[float]) -> str:
    return f"{max(values) - min(values):.1f} LU (sd {statistics.pstdev(values):.1f})"


def _measure_cost() -> float:
    """Milliseconds of pyloudnorm per second of 48 kHz audio (a 30 s signal, best of 3)."""
    audio = np.random.default_rng(0).normal(0, 0.1, 48000 * 30)
    meter = pyloudnorm.Meter(48000)
    best = min(_timed(meter.integrated_loudness, audio) for _ in range(3))
    return best * 1000 / 30


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _spawn(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen, str]:
    model = args.model
    if model is None:
        from voxport.engine.dummy import build_checkpoint

        build_checkpoint(work / "tiny", size="tiny", seed=0)
        model = str(work / "tiny")
    serve = [sys.executable, "-m", "voxport", "serve", "--model", model, "--port", str(args.port),
             "--data-dir", str(work / "data"), "--design-clip-seconds", "3",
             "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(serve)
    base = f"http://127.0.0.1:{args.port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one on the tiny checkpoint)")
    parser.add_argument("--model", help="checkpoint for the started server (default: the tiny one)")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--target", type=float, default=-16.0, help="loudness target, LUFS")
    parser.add_argument("--max-length", type=int, default=32, help="steps of 0.16 s per request")
    args = parser.parse_args()
    proc = None
    base = args.url
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the spawned server
    if base is None:
        proc, base = _spawn(args, Path(tempfile.mkdtemp(prefix="voxport-loudness-")))
    try:
        with httpx.Client(base_url=base, timeout=600) as http:
            voices = [v["id"] for v in http.get("/v1/voices").json()["data"] if v.get("kind") == "designed"]
            rows: dict[str, list[list[float]]] = {}
            for voice in voices:
                per = []
                for sentence in SENTENCES:
                    body = {"model": "tts-1", "voice": voice, "input": sentence, "cache": False,
                            "max_length": args.max_length, "response_format": "wav",
                            "stream": False}  # fmt: skip
                    plain = _request(http, body)
                    buffered = _request(http, {**body, "loudness": args.target})
                    streamed = _request(http, {**body, "loudness": args.target, "response_format": "pcm",
                                               "stream": True})  # fmt: skip
                    per.append([plain, buffered, streamed])
                rows[voice] = per
                print(f"{voice}: {np.mean(per, axis=0).round(1).tolist()}", file=sys.stderr)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    print(f"Target {args.target:g} LUFS, {len(SENTENCES)} sentences per voice, {args.max_length} steps each; "
          f"mean LUFS per voice.\n")  # fmt: skip
    print("| voice | as generated | `loudness`, buffered | `loudness`, streamed |")
    print("|---|---|---|---|")
    columns: list[list[float]] = [[], [], []]
    for voice, per in rows.items():
        means = np.mean(per, axis=0)
        for i in range(3):
            columns[i] += [p[i] for p in per]
        print(f"| {voice} | {means[0]:.1f} | {means[1]:.1f} | {means[2]:.1f} |")
    print(f"| spread (all requests) | {' | '.join(_spread(c) for c in columns)} |")
    worst = [max(abs(v - args.target) for v in c) for c in columns[1:]]
    print(f"\nLargest distance from the target: buffered {worst[0]:.2f} LU, streamed {worst[1]:.2f} LU.")
    print(f"Measuring costs {_measure_cost():.2f} ms of CPU per second of 48 kHz audio (pyloudnorm).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
