"""The speech WebSocket for voice agents, on `--engine sim`: `python benchmarks/agents.py [--rounds 30]`.

Starts `voxport serve --engine sim` (audio cache off) and measures, over the `websockets` client:
- sentence to first audio: from sending the text that completes a sentence (with the space after it, which
  confirms the boundary) to that context's first `audio` event, against the engine's own first audio (one
  sim step) and the HTTP streaming route's time to first byte;
- barge-in: from sending `cancel` mid-segment to the `cancelled` event (which follows the context's last
  audio), and the first audio of a context opened right after the cancel;
- load: 64 sockets x 2 contexts at once, each context's text in three messages: contexts done, lost and
  refused, and the server's CPU seconds per second of audio, against 128 concurrent HTTP streams of the
  same text (CPU from /proc: Linux only).
Prints a Markdown table (docs/benchmarks.md keeps one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import websockets
from _local import free_port, wait_ok

SENTENCE = "The quick brown fox jumps over the lazy dog. "
STEP_S = 0.16


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def first_audio(url: str, rounds: int, max_length: int) -> list[float]:
    out = []
    async with websockets.connect(url, max_size=None) as ws:
        for i in range(rounds):
            cid = f"c{i}"
            started = time.perf_counter()
            await ws.send(json.dumps({"context_id": cid, "text": SENTENCE, "response_format": "pcm",
                                      "max_length": max_length, "max_buffer_delay_ms": 60000}))  # fmt: skip
            await ws.send(json.dumps({"context_id": cid, "close": True}))
            seen = False
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "audio" and not seen:
                    out.append(time.perf_counter() - started)
                    seen = True
                if event["type"] in ("done", "error"):
                    break
    return out


async def http_first_byte(base: str, rounds: int, max_length: int) -> list[float]:
    out = []
    body = {"model": "tts-1", "input": SENTENCE.strip(), "response_format": "pcm", "max_length": max_length,
            "cache": False, "stream": True}  # fmt: skip
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            async with client.stream("POST", f"{base}/v1/audio/speech", json=body) as response:
                async for _chunk in response.aiter_bytes():
                    out.append(time.perf_counter() - started)
                    break
    return out


async def barge_in(url: str, rounds: int) -> tuple[list[float], list[int], list[float]]:
    stops, late, next_first = [], [], []
    async with websockets.connect(url, max_size=None) as ws:
        for i in range(rounds):
            cid, nxt = f"long{i}", f"next{i}"
            await ws.send(json.dumps({"context_id": cid, "text": SENTENCE * 3, "response_format": "pcm",
                                      "max_length": 500, "close": True}))  # fmt: skip
            while json.loads(await ws.recv())["type"] != "audio":
                pass
            await asyncio.sleep(0.05)  # mid-segment
            cancelled_at = time.perf_counter()
            await ws.send(json.dumps({"context_id": cid, "cancel": True}))
            await ws.send(json.dumps({"context_id": nxt, "text": SENTENCE, "response_format": "pcm",
                                      "max_length": 8, "close": True}))  # fmt: skip
            frames, done = 0, False
            while not done:
                event = json.loads(await ws.recv())
                if event["context_id"] == cid and event["type"] == "audio":
                    frames += 1
                if event["context_id"] == cid and event["type"] == "cancelled":
                    stops.append(time.perf_counter() - cancelled_at)
                    late.append(frames)
                if event["context_id"] == nxt and event["type"] == "audio" and len(next_first) <= i:
                    next_first.append(time.perf_counter() - cancelled_at)
                done = len(stops) > i and len(next_first) > i
            while json.loads(await ws.recv())["type"] != "done":
                pass
    return stops, late, next_first


async def load(url: str, sockets: int, contexts: int, max_length: int) -> tuple[int, int, int, float]:
    """(done, errors, lost, audio seconds) for `sockets` x `contexts` contexts at once."""
    words = SENTENCE.split(" ")
    pieces = [" ".join(words[:3]) + " ", " ".join(words[3:6]) + " ", " ".join(words[6:])]

    async def one_socket(n: int) -> tuple[int, int, float]:
        done = errors = 0
        audio = 0.0
        async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
            for piece in pieces:
                for c in range(contexts):
                    message = {"context_id": f"s{n}c{c}", "text": piece}
                    if piece is pieces[0]:
                        message.update(response_format="pcm", max_length=max_length)
                    await ws.send(json.dumps(message))
            for c in range(contexts):
                await ws.send(json.dumps({"context_id": f"s{n}c{c}", "close": True}))
            while done + errors < contexts:
                event = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if event["type"] == "done":
                    done += 1
                    audio += event["usage"]["output_tokens"] * STEP_S
                elif event["type"] == "error":
                    errors += 1
        return done, errors, audio

    results = await asyncio.gather(*(one_socket(n) for n in range(sockets)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, tuple)]
    lost = sockets * contexts - sum(d + e for d, e, _ in ok)
    return sum(d for d, _, _ in ok), sum(e for _, e, _ in ok), lost, sum(a for _, _, a in ok)


async def http_load(base: str, streams: int, max_length: int) -> float:
    body = {"model": "tts-1", "input": SENTENCE.strip(), "response_format": "pcm", "max_length": max_length,
            "cache": False, "stream": True}  # fmt: skip
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=streams)) as client:

        async def one() -> float:
            size = 0
            async with client.stream("POST", f"{base}/v1/audio/speech", json=body) as response:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
            return size / 2 / 24000

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def run(args: argparse.Namespace, base: str, pid: int) -> None:
    url = base.replace("http://", "ws://") + "/v1/audio/speech/ws"
    first = await first_audio(url, args.rounds, 8)
    ttfb = await http_first_byte(base, args.rounds, 8)
    stops, late, next_first = await barge_in(url, max(5, args.rounds // 3))
    before = cpu_seconds(pid)
    done, errors, lost, ws_audio = await load(url, 64, 2, 32)
    ws_cpu = cpu_seconds(pid) - before
    before = cpu_seconds(pid)
    http_audio = await http_load(base, 128, 32)
    http_cpu = cpu_seconds(pid) - before
    step_ms = args.sim_step_ms + args.sim_step_ms_per_seq
    print("| Measure | p50 | p95 | Target |\n|---|---|---|---|")
    print(f"| Sentence end -> first audio, socket (ms) | {p(first, .5):.1f} | {p(first, .95):.1f} | "
          f"<= engine first audio ({step_ms:.2f} ms, one sim step) + 15 |")  # fmt: skip
    print(
        f"| HTTP streaming, time to first byte (ms) | {p(ttfb, 0.5):.1f} | {p(ttfb, 0.95):.1f} | reference |"
    )
    print(f"| Barge-in: cancel -> cancelled, after the last audio (ms) | {p(stops, .5):.1f} | "
          f"{p(stops, .95):.1f} | <= one engine step + 10 |")  # fmt: skip
    print(f"| Audio frames after the cancel was sent | {statistics.median(late):.0f} | {max(late)} | |")
    print(f"| Next context's first audio, from the cancel (ms) | {p(next_first, .5):.1f} | "
          f"{p(next_first, .95):.1f} | not delayed by the cancelled one |")  # fmt: skip
    print(f"\n64 sockets x 2 contexts: {done} done, {errors} refused or failed, {lost} lost; "
          f"{ws_audio:.0f} s of audio for {ws_cpu:.2f} CPU s "
          f"({1000 * ws_cpu / max(ws_audio, 1e-9):.1f} ms CPU per audio second). "
          f"128 HTTP streams: {http_audio:.0f} s of audio for {http_cpu:.2f} CPU s "
          f"({1000 * http_cpu / max(http_audio, 1e-9):.1f} ms per audio second).")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sim-step-ms", type=float, default=10.0)
    parser.add_argument("--sim-step-ms-per-seq", type=float, default=0.06)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "voxport", "serve", "--engine", "sim", "--port", str(port),
             "--data-dir", data, "--cache-ttl-minutes", "0", "--log-level", "warning",
             "--sim-step-ms", str(args.sim_step_ms), "--sim-step-ms-per-seq", str(args.sim_step_ms_per_seq)]
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ok(f"{base}/ready")
            asyncio.run(run(args, base, server.pid))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
