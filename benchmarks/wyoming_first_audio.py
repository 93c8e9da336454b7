"""Wyoming's first audio against HTTP streaming's first byte, same server, same request:
`python benchmarks/wyoming_first_audio.py [--rounds 20] [--model DIR]`.

Starts `voxport serve --wyoming-port` on the tiny random checkpoint (built into a temporary directory
unless --model names one) with the audio cache off, so that every request is generated. Then, round by
round and alternating which goes first, times one request each way on a kept-open connection:
- HTTP: `POST /v1/audio/speech` (`pcm`, streamed), from sending the request to the first body byte;
- Wyoming: `synthesize` with the `wyoming` library's client, from writing the event to the first
  `audio-chunk`.
Prints a Markdown table (median, p90, best) and the difference of the medians; the issue's target is
Wyoming <= HTTP + 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _local import free_port, wait_ok
from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.tts import Synthesize, SynthesizeVoice

TEXT = "Your table is ready."
VOICE = "alloy"


async def _http(client: httpx.AsyncClient) -> float:
    body = {"model": "tts-1", "voice": VOICE, "input": TEXT, "response_format": "pcm", "stream": True}
    start = time.perf_counter()
    async with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        first = None
        async for piece in response.aiter_raw():  # all of it: the next request starts on an idle server
            if piece and first is None:
                first = time.perf_counter() - start
    assert first is not None
    return first


async def _wyoming(client: AsyncTcpClient) -> float:
    start = time.perf_counter()
    await client.write_event(Synthesize(TEXT, voice=SynthesizeVoice(VOICE)).event())
    first = None
    while True:
        event = await client.read_event()
        assert event is not None, "the Wyoming server closed the connection"
        if Error.is_type(event.type):
            raise SystemExit(f"Wyoming error: {Error.from_event(event).text}")
        if AudioChunk.is_type(event.type) and first is None:
            first = time.perf_counter() - start
        if event.type == "audio-stop":
            assert first is not None
            return first


async def _measure(http_port: int, wyoming_port: int, rounds: int) -> tuple[list[float], list[float]]:
    http_times, wyoming_times = [], []
    url = f"http://127.0.0.1:{http_port}"
    async with (
        httpx.AsyncClient(base_url=url, timeout=300) as client,
        AsyncTcpClient("127.0.0.1", wyoming_port) as wyoming,
    ):
        await _http(client), await _wyoming(wyoming)  # warm-up: first use of each path
        for index in range(rounds):
            if index % 2:
                http_times.append(await _http(client))
                wyoming_times.append(await _wyoming(wyoming))
            else:
                wyoming_times.append(await _wyoming(wyoming))
                http_times.append(await _http(client))
    return http_times, wyoming_times


def _row(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"| {name} | {statistics.median(times) * 1000:.1f} | {p90 * 1000:.1f} | {ordered[0] * 1000:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a tiny random one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            model = Path(scratch) / "tiny"
            subprocess.run([sys.executable, "-m", "voxport", "dummy-model", str(model), "--size", "tiny"],
                           check=True, capture_output=True)  # fmt: skip
        http_port, wyoming_port = free_port(), free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "voxport", "serve", "--model", str(model), "--port", str(http_port),
             "--wyoming-port", str(wyoming_port), "--data-dir", str(Path(scratch) / "data"),
             "--cache-ttl-minutes", "0", "--max-length", "12", "--no-warm-voices", "--log-level", "warning"],
            env={**os.environ},
        )  # fmt: skip
        try:
            wait_ok(f"http://127.0.0.1:{http_port}/ready", 300)
            http_times, wyoming_times = asyncio.run(_measure(http_port, wyoming_port, args.rounds))
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, {args.rounds} rounds, tiny checkpoint, reference engine\n"
    )
    print("| Path | first audio p50 (ms) | p90 (ms) | best (ms) |")
    print("|---|---|---|---|")
    print(_row("HTTP `POST /v1/audio/speech` (pcm, streamed): first byte", http_times))
    print(_row("Wyoming `synthesize`: first `audio-chunk`", wyoming_times))
    delta = (statistics.median(wyoming_times) - statistics.median(http_times)) * 1000
    verdict = "met" if delta <= 10 else "NOT met"
    print(f"\nWyoming - HTTP (medians): {delta:+.1f} ms (target: <= +10 ms): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
