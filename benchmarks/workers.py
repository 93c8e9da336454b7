"""`--workers` against the sim engine with a client that costs little CPU: `python benchmarks/workers.py`.

For each server shape (`voxport serve --engine sim --workers N`, N from `--workers`), wrk (Debian's
package, one thread, a Lua POST script) holds `c` streams open for `--seconds`, for every `c` in
`--streams` and every format in `--formats`. Each request streams `--max-length` steps of audio
(`stream_format: audio`); audio-s/s counts completed responses only (wrk's count) times their length, and
every answer is checked (a cell with non-2xx answers or socket errors says so). Server CPU is the whole
process tree's (supervisor, engine host, workers, from /proc), per audio second; the client's own CPU is
wrk's (this process's reaped-children rusage), so a reader can see it did not take the server's cores.

Then, per shape:
- first audio at one stream: the time to the first body byte of a pcm stream, median of 20 sequential
  requests (httpx; at one stream the client's cost does not matter), against the sim engine's own first
  chunk measured in this process (`SimEngine`, same step settings);
- cache hits: wrk at c=32 on one cached mp3 answer, against a bare uvicorn app (15 bytes of JSON) that
  runs with as many processes (`--workers N` of uvicorn) in the same run.

And once: LAME and libopus alone (PyAV, as voxport's in-process encoders run them: 24 kHz mono s16 from
48 kHz float chunks of one engine step), CPU ms per audio second on this machine in this run, so that the
mp3 and opus rows can be read against the encoder's own cost.

Prints Markdown tables (and with `--json FILE` the raw cells, for benchmarks/plot_workers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _local import BARE_APP, free_port, wait_ok

from voxport.bench.spawn import SpawnedServer, cpu_seconds

TEXT = "The quick brown fox jumps over the lazy dog while the band plays on."
HIT_BODY = {"model": "tts-1", "voice": "alloy", "input": "Your table is ready.", "response_format": "mp3",
            "seed": 7, "max_length": 32}  # fmt: skip


def _body(fmt: str, max_length: int) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt,
            "stream_format": "audio", "max_length": max_length}  # fmt: skip


def _lua(work: Path, name: str, body: dict, spread: tuple[int, int] | None = None) -> Path:
    """A wrk script that POSTs `body`. With `spread` (lo, hi), every request has a seed of its own (a
    cache miss, as distinct requests are; counted up from a random start, so that no two runs share one)
    and a `max_length` drawn from lo..hi steps, so that streams do not all start and end in the same
    engine step (fixed lengths keep every connection in lockstep: the whole batch ends, then 256 requests
    are parsed at once while the engine idles)."""
    if spread is None:
        text = json.dumps(body)
        lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
                 f"wrk.body = {json.dumps(text)}"]  # fmt: skip
    else:
        fixed = {k: v for k, v in body.items() if k not in ("seed", "max_length")}
        text = json.dumps(fixed)[:-1] + ', "seed": %d, "max_length": %d}'
        lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
                 "math.randomseed(os.time())", "local n = math.random(1, 1000000000)",
                 f"local template = {json.dumps(text)}", "request = function()", "  n = n + 1",
                 f"  local steps = math.random({spread[0]}, {spread[1]})",
                 '  return wrk.format("POST", nil, nil, string.format(template, n, steps))',
                 "end"]  # fmt: skip
    path = work / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def _wrk(url: str, connections: int, seconds: int, script: Path) -> dict:
    """One wrk run: requests completed, per second, errors, and wrk's own CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timeout = "--timeout", "60s"
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *timeout, "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = int(re.search(r"(\d+) requests in ([\d.]+)(m?s)", out).group(1))
    span = re.search(r"requests in ([\d.]+)(ms|s|m)\b", out)
    elapsed = float(span.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[span.group(2)]
    size, unit = re.search(r"requests in [\d.]+\w+, ([\d.]+)([KMG]?B) read", out).groups()
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": done,
        "bytes": float(size) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit],
        "elapsed": elapsed,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sockets.group(1) if sockets else "",
        "client_cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def _server_cpu(pid: int) -> float:
    cpu = cpu_seconds(pid)
    return cpu["self"] + cpu["children"] if cpu else float("nan")


def _spawn(workers: int, args: argparse.Namespace) -> SpawnedServer:
    ns = argparse.Namespace(engine="sim", sim_step_ms=args.sim_step_ms,
                            sim_step_ms_per_seq=args.sim_step_ms_per_seq, engine_model=None,
                            server_arg=["--workers", str(workers), "--max-concurrent", "512",
                                        "--max-queue", "512"])  # fmt: skip
    server = SpawnedServer(ns)
    problem = server.wait_ready()
    if problem:
        server.stop()
        raise SystemExit(f"workers={workers}: {problem}")
    deadline = time.monotonic() + 60  # every worker up, not only the first to answer
    while len(_worker_pids(server.pid)) < workers + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    return server


def _worker_pids(pid: int) -> list[int]:
    from voxport.bench.spawn import _descendants

    return list(_descendants(pid))


def _calibrate(url: str, fmt: str) -> tuple[float, float]:
    """(bytes per audio second of `fmt`, bytes of one response's head): one 20-step request in pcm
    (24 kHz s16: its length is its duration) and the same request in `fmt`."""
    lengths = {}
    for kind in ("pcm", fmt):
        response = httpx.post(f"{url}/v1/audio/speech", json={**_body(kind, 20), "seed": 1}, timeout=120)
        response.raise_for_status()
        lengths[kind] = len(response.content)
        head = 17 + sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2
    return lengths[fmt] / (lengths["pcm"] / 48_000), head


def _first_audio(url: str, rounds: int = 20) -> float:
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(rounds):
            start = time.perf_counter()
            body = {**_body("pcm", 8), "seed": random.randrange(1 << 30)}  # a miss: engine work
            with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
                response.raise_for_status()
                chunks = response.iter_raw()
                next(chunks)
                times.append(time.perf_counter() - start)
                for _chunk in chunks:
                    pass
            time.sleep(0.05)  # the engine idle again, as before the first request
    return statistics.median(times) * 1000


def _engine_first_audio(args: argparse.Namespace, rounds: int = 20) -> float:
    """The sim engine's own first chunk, in this process, with the server's step settings."""
    from voxport.engine.base import SynthesisRequest
    from voxport.engine.sim import SimEngine

    async def run() -> float:
        engine = SimEngine(step_ms=args.sim_step_ms, step_ms_per_seq=args.sim_step_ms_per_seq)
        await engine.start()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            stream = engine.generate(SynthesisRequest(TEXT, None, max_length=8))
            async for _chunk in stream:
                times.append(time.perf_counter() - start)
                break
            await stream.aclose()
            await asyncio.sleep(0.05)  # the step the abandoned sequence was in ends; the engine idles
        await engine.close()
        return statistics.median(times) * 1000

    try:
        import uvloop  # as the server runs

        return uvloop.run(run())
    except ImportError:
        return asyncio.run(run())


def _encoder_alone(fmt: str, seconds: float = 60.0) -> float:
    """CPU ms per audio second of PyAV's encoder for `fmt` alone, chunk by chunk as a stream runs, at the
    format's default rate and bitrate (what a request that names neither gets)."""
    import numpy as np

    from voxport.audio import FORMATS
    from voxport.codec import StreamEncoder

    rate, step = 48_000, 7_680
    t = np.arange(step, dtype=np.float32) / rate
    chunk = (0.25 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    steps = int(seconds * rate / step)
    start = time.process_time()
    encoder = StreamEncoder(fmt, rate, FORMATS[fmt].default_rate)
    for _ in range(steps):
        encoder.encode(chunk)
    encoder.finish()
    encoder.close()
    return (time.process_time() - start) * 1000 / seconds


def _bare(workers: int) -> tuple[subprocess.Popen, str, Path]:
    work = Path(tempfile.mkdtemp(prefix="voxport-bare-"))
    (work / "bare.py").write_text(BARE_APP)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bare:app", "--port", str(port), "--log-level", "warning",
               "--workers", str(workers)]  # fmt: skip
    proc = subprocess.Popen(command, cwd=work)
    url = f"http://127.0.0.1:{port}"
    wait_ok(f"{url}/")
    time.sleep(1.0)
    return proc, url, work


def _shape(workers: int, args: argparse.Namespace, work: Path) -> dict:
    server = _spawn(workers, args)
    cells: dict = {"workers": workers, "streams": []}
    try:
        url = server.url
        for fmt in args.formats:
            per_second, head = _calibrate(url, fmt)
            script = _lua(work, f"{fmt}-{workers}", _body(fmt, 0), spread=args.spread)
            for streams in args.streams:
                cpu0 = _server_cpu(server.pid)
                m = _wrk(f"{url}/v1/audio/speech", streams, args.seconds, script)
                cpu = _server_cpu(server.pid) - cpu0
                audio = max(0.0, m["bytes"] - m["requests"] * head) / per_second
                m |= {"format": fmt, "streams": streams, "audio_s": audio,
                      "audio_s_per_s": audio / m["elapsed"],
                      "server_cpu_ms_per_audio_s": cpu * 1000 / audio if audio else float("nan"),
                      "server_cores": cpu / m["elapsed"]}  # fmt: skip
                cells["streams"].append(m)
                print(f"  workers={workers} {fmt} c={streams}: {m['audio_s_per_s']:.1f} audio-s/s, "
                      f"{m['server_cpu_ms_per_audio_s']:.2f} ms/audio-s, "
                      f"{m['server_cores']:.2f} server cores, "
                      f"wrk {m['client_cpu']:.2f} s CPU, non2xx {m['non2xx']} {m['socket_errors']}",
                      file=sys.stderr, flush=True)  # fmt: skip
                time.sleep(1.0)
        cells["first_audio_ms"] = _first_audio(url)
        hit = _lua(work, "hit", HIT_BODY)
        first = httpx.post(f"{url}/v1/audio/speech", json=HIT_BODY, timeout=120)
        first.raise_for_status()
        cells["hit"] = _wrk(f"{url}/v1/audio/speech", 32, args.seconds, hit)
    finally:
        server.stop()
    bare, bare_url, bare_work = _bare(workers)
    try:
        cells["bare"] = _wrk(f"{bare_url}/", 32, args.seconds, _get(work))
    finally:
        bare.terminate()
        bare.wait(30)
        shutil.rmtree(bare_work, ignore_errors=True)
    return cells


def _get(work: Path) -> Path:
    path = work / "get.lua"
    path.write_text('wrk.method = "GET"\n')
    return path


def _table(shapes: list[dict], args: argparse.Namespace) -> str:
    head = " | ".join(f"`--workers {s['workers']}` audio-s/s (server ms CPU per audio s; wrk CPU s)"
                      for s in shapes)  # fmt: skip
    ratio = " | " + " / ".join(str(s["workers"]) for s in shapes[::-1]) if len(shapes) > 1 else ""
    lines = [f"| format | streams | {head}{ratio} |"]
    lines.append("|" + "---|" * (2 + len(shapes) + (len(shapes) > 1)))
    for fmt in args.formats:
        for streams in args.streams:
            row = [fmt, str(streams)]
            rates = []
            for shape in shapes:
                m = next(c for c in shape["streams"] if c["format"] == fmt and c["streams"] == streams)
                bad = f", **{m['non2xx']} non-2xx**" if m["non2xx"] else ""
                bad += f", socket errors: {m['socket_errors']}" if m["socket_errors"] else ""
                row.append(f"{m['audio_s_per_s']:,.1f} ({m['server_cpu_ms_per_audio_s']:.2f}; "
                           f"{m['client_cpu']:.2f}){bad}")  # fmt: skip
                rates.append(m["audio_s_per_s"])
            if len(shapes) > 1:
                row.append(f"{rates[-1] / rates[0]:.2f}" if rates[0] else "-")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="server shapes, comma-separated")
    parser.add_argument("--streams", default="1,16,64,128,256", help="wrk connections, comma-separated")
    parser.add_argument("--formats", default="pcm,mp3,opus", help="response formats, comma-separated")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per cell")
    parser.add_argument("--steps", default="10,30", help="each request's max_length: drawn from LO,HI steps")
    parser.add_argument("--sim-step-ms", type=float, default=10.0)
    parser.add_argument("--sim-step-ms-per-seq", type=float, default=0.06)
    parser.add_argument("--json", help="also write the raw cells here")
    args = parser.parse_args()
    args.workers = [int(v) for v in args.workers.split(",")]
    args.streams = [int(v) for v in args.streams.split(",")]
    args.formats = args.formats.split(",")
    args.spread = tuple(int(v) for v in args.steps.split(","))
    if shutil.which("wrk") is None:
        print("workers: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    print(f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}; load average "
          f"before: {os.getloadavg()[0]:.2f}; wrk -t1, {args.seconds} s per cell; "
          f"{args.spread[0]}-{args.spread[1]} steps (0.16 s each) per request; sim step "
          f"{args.sim_step_ms} ms + {args.sim_step_ms_per_seq} ms per sequence\n")  # fmt: skip
    alone = {fmt: _encoder_alone(fmt) for fmt in ("mp3", "opus")}
    engine_first = _engine_first_audio(args)
    work = Path(tempfile.mkdtemp(prefix="voxport-workers-"))
    try:
        shapes = [_shape(workers, args, work) for workers in args.workers]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(_table(shapes, args))
    print(f"\nEncoders alone (PyAV, 48 kHz float steps in, each format's default rate out): "
          f"LAME {alone['mp3']:.2f} ms CPU per audio s, libopus {alone['opus']:.2f} ms.")  # fmt: skip
    print(f"\nFirst audio at one stream (median of 20): engine alone {engine_first:.1f} ms; " + "; ".join(
        f"`--workers {s['workers']}` {s['first_audio_ms']:.1f} ms" for s in shapes))  # fmt: skip
    hits = "; ".join(
        f"`--workers {s['workers']}`: {s['hit']['rps']:,.0f} req/s against bare uvicorn --workers "
        f"{s['workers']} {s['bare']['rps']:,.0f} (×{s['hit']['rps'] / s['bare']['rps']:.3f}; "
        f"{s['hit']['rps'] / s['workers'] / (s['bare']['rps'] / s['workers']):.3f} per worker)"
        for s in shapes
    )
    print(f"\nCache hits at c=32 (wrk): {hits}")
    if len(shapes) > 1:
        print(f"Hits, {shapes[-1]['workers']} workers / {shapes[0]['workers']}: "
              f"{shapes[-1]['hit']['rps'] / shapes[0]['hit']['rps']:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"alone": alone, "engine_first_ms": engine_first,
                                               "shapes": shapes}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
