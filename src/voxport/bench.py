"""`voxport bench`: a concurrency sweep against an OpenAI-compatible speech server and the raw engine.

Every request asks for the same bounded amount of work (a fixed `max_length` and one sentence per prompt),
so that runs on random-weight checkpoints, whose stop head never fires, are comparable: each request then
yields exactly `max_length` × 0.16 s of audio. Comparing the server's figures with the raw engine's at the
same concurrency shows what HTTP, queueing, encoding and the cache add or save.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from voxport import __version__
from voxport.metrics import gpu_memory_bytes, process_rss_bytes

STEP_SECONDS = 0.16
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
WAV_HEADER_BYTES = 44
HEALTH_TIMEOUT_S = 10.0
ERROR_SAMPLES_PER_LEVEL = 5
# How often GPU memory is read during a level (from /health for the server, NVML for the engine side).
GPU_SAMPLE_INTERVAL_S = 0.5
# Written level by level while a run with --out goes on, removed when its full report is written.
PARTIAL_FILE = "levels.partial.jsonl"
RESPONSE_SNIPPET_CHARS = 2000
SCHEMA = "voxport-bench/1"

RTF_DEFINITION = (
    "RTF = mean over successful requests of (request total time / seconds of audio it returned); "
    "below 1 is faster than real time. Total time runs from sending the request to its last byte "
    "(or last engine chunk), so it includes queueing behind other requests."
)

# One sentence each: streaming synthesises one segment per sentence, and a single segment is what makes
# the audio per request exactly max_length x 0.16 s on checkpoints that never stop by themselves.
PROMPTS: tuple[str, ...] = (
    "Good morning.",
    "The kettle is whistling in the kitchen.",
    "Please leave the parcel with the neighbour across the street.",
    "Rain is expected to spread from the west during the late afternoon.",
    "Could you read the last paragraph once more, a little more slowly?",
    "The library closes early on public holidays, so plan your visit accordingly.",
    "Seven silver swans swam silently across the still, dark lake at dawn.",
    "Our train to the coast leaves from platform four in twenty minutes.",
    "She tuned the old piano by ear, one stubborn key at a time.",
    "Thank you for calling, all of our agents are currently helping other customers.",
    "The recipe calls for two cups of flour, a pinch of salt and three ripe bananas.",
    "When the power came back on, every clock in the house blinked twelve at once.",
    "Turn left at the roundabout, then keep going until you see the blue gate.",
    "A gentle breeze carried the smell of cut grass and woodsmoke over the hills, "
    "and somewhere far away a dog began to bark.",
    "Remember to back up your files before installing the update, because the process "
    "cannot be undone once it has started.",
    "The committee weighed every proposal with care, comparing cost, schedule and risk, "
    "before it finally chose the smallest and most modest plan on the table.",
)


# -- the load plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestSpec:
    index: int  # position in the run, across levels: names the request in the server's log
    prompt_index: int
    text: str
    seed: int
    repeat: bool  # the same text and seed as a request that already succeeded in this run


class LoadPlan:
    """Which prompt and seed each request gets.

    Fresh requests get a seed no earlier request of the run used (a per-run nonce plus a counter), so
    a caching server misses them. Repeats reuse the (text, seed) of a request that has already
    *completed* successfully: a streamed response is cached only once its body is complete, so repeating
    one still in flight would measure nothing but a second miss. A repeat due before anything has
    completed is sent fresh instead (and counted as fresh).
    """

    def __init__(self, nonce: int, repeat_fraction: float):
        self.nonce = nonce
        self.repeat_fraction = repeat_fraction
        self._rng = random.Random(nonce)
        self._done: list[RequestSpec] = []
        self._fresh = 0
        self._sent = 0

    def repeat_due(self, position: int) -> bool:
        """Spread the repeats evenly through a level rather than drawing them at random, so that a level
        of n requests carries round-down(n × fraction) of them whatever the seed."""

        def share(k: int) -> int:
            # Rounding first keeps 0.1 × 10 from landing at 0.999... and losing a repeat.
            return math.floor(round(k * self.repeat_fraction, 9))

        return share(position + 1) > share(position)

    def next(self, position: int) -> RequestSpec:
        index = self._sent
        self._sent += 1
        if self.repeat_due(position) and self._done:
            original = self._rng.choice(self._done)
            return RequestSpec(index, original.prompt_index, original.text, original.seed, repeat=True)
        k = self._fresh
        self._fresh += 1
        prompt = k % len(PROMPTS)
        return RequestSpec(index, prompt, PROMPTS[prompt], (self.nonce + k) % 2**32, repeat=False)

    def completed(self, spec: RequestSpec) -> None:
        if not spec.repeat:
            self._done.append(spec)


# -- one request's measurements --------------------------------------------------------------------------


@dataclass
class RequestResult:
    index: int
    prompt_index: int
    seed: int
    repeat: bool
    sent_at_s: float = 0.0  # since the level started: shows who waited behind whom
    status: int | None = None  # HTTP status, 200 for a successful engine generation, None: no answer
    error: str | None = None  # a failure besides the status: no answer, cut-off body, timeout, engine error
    first_audio_s: float | None = None
    total_s: float = 0.0
    bytes: int = 0
    audio_s: float | None = None
    cache: str | None = None  # the X-Cache header
    detail: dict[str, Any] | None = field(default=None, repr=False)  # a failed response, for error_samples

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class LevelStats:
    concurrency: int
    requests: int
    completed: int = 0
    errors: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    repeats: int = 0
    cache: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    wall_s: float = 0.0
    first_audio_ms: dict[str, float | None] = field(default_factory=dict)
    total_ms: dict[str, float | None] = field(default_factory=dict)
    requests_per_s: float = 0.0
    audio_s_per_s: float | None = None
    rtf: float | None = None
    audio_s: dict[str, float | None] = field(default_factory=dict)
    bytes_total: int = 0
    peak_gpu_bytes: int | None = None
    rss_before_bytes: int | None = None
    rss_after_bytes: int | None = None
    error_samples: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    # Linear interpolation between closest ranks, as numpy's default does.
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def summarise(
    concurrency: int, results: list[RequestResult], wall_s: float, error_samples: list[dict[str, Any]]
) -> LevelStats:
    ok = [r for r in results if r.ok]
    stats = LevelStats(concurrency=concurrency, requests=len(results), wall_s=round(wall_s, 6))
    stats.completed = len(ok)
    failures: Counter[str] = Counter()
    for r in results:
        if r.ok:
            continue
        if r.status == 429:
            stats.rejected += 1
        else:
            failures[r.error.split(":")[0] if r.error else str(r.status)] += 1
    stats.errors = sum(failures.values())
    stats.errors_by_status = dict(sorted(failures.items()))
    stats.repeats = sum(r.repeat for r in results)
    stats.cache = dict(sorted(Counter(r.cache for r in results if r.cache).items()))
    stats.cache_hits = stats.cache.get("HIT", 0)
    first = [r.first_audio_s for r in ok if r.first_audio_s is not None]
    totals = [r.total_s for r in ok]
    stats.first_audio_ms = {"p50": _ms(_percentile(first, 50)), "p95": _ms(_percentile(first, 95))}
    stats.total_ms = {"p50": _ms(_percentile(totals, 50)), "p95": _ms(_percentile(totals, 95))}
    stats.requests_per_s = round(len(ok) / wall_s, 6) if wall_s > 0 else 0.0
    audio = [r.audio_s for r in ok if r.audio_s is not None]
    if ok and len(audio) == len(ok):
        stats.audio_s_per_s = round(sum(audio) / wall_s, 6) if wall_s > 0 else None
        ratios = [r.total_s / r.audio_s for r in ok if r.audio_s]
        stats.rtf = round(sum(ratios) / len(ratios), 6) if ratios else None
        stats.audio_s = {
            "total": round(sum(audio), 6),
            "mean": round(sum(audio) / len(audio), 6),
            "min": round(min(audio), 6),
            "max": round(max(audio), 6),
        }
    else:
        stats.audio_s = {"total": None, "mean": None, "min": None, "max": None}
    stats.bytes_total = sum(r.bytes for r in results)
    stats.error_samples = error_samples
    stats.results = [{k: v for k, v in asdict(r).items() if k != "detail"} for r in results]
    return stats


# -- targets ---------------------------------------------------------------------------------------------


class Target(Protocol):
    name: str

    async def before_level(self) -> dict[str, Any]: ...

    def describe(self, spec: RequestSpec) -> dict[str, Any]:
        """The exact request, for error reports."""
        ...

    async def send(self, spec: RequestSpec, result: RequestResult) -> None:
        """Make the request, filling `result` as it goes: a timeout keeps whatever had arrived."""
        ...

    async def after_level(self, before: dict[str, Any]) -> dict[str, Any]: ...

    async def gpu_memory(self) -> int | None:
        """GPU memory the measured side holds now (its process and children), None when unknown."""
        ...


def _audio_seconds(fmt: str, nbytes: int, rate: int) -> float | None:
    """Seconds of s16le mono audio in a raw body; compressed formats cannot be counted from bytes."""
    if fmt == "pcm":
        return nbytes / 2 / rate
    if fmt == "wav":
        return max(0, nbytes - WAV_HEADER_BYTES) / 2 / rate
    return None


class ServerTarget:
    name = "server"

    def __init__(self, client: httpx.AsyncClient, args: argparse.Namespace, run_id: str):
        self.client = client
        self.args = args
        self.run_id = run_id
        self.path = "/v1/audio/speech/stream" if args.stream_route else "/v1/audio/speech"

    def body(self, spec: RequestSpec) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.args.model,
            "voice": self.args.voice,
            "input": spec.text,
            "response_format": self.args.format,
            "sample_rate": self.args.sample_rate,
            "max_length": self.args.max_length,
            "seed": spec.seed,
        }
        if not self.args.stream_route:
            body["stream"] = True
        return body

    async def health(self) -> dict[str, Any] | None:
        try:
            response = await self.client.get("/health", timeout=HEALTH_TIMEOUT_S)
            data = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def before_level(self) -> dict[str, Any]:
        health = await self.health()
        return {"rss_bytes": health.get("rss_bytes") if health else None}

    async def after_level(self, before: dict[str, Any]) -> dict[str, Any]:
        health = await self.health()
        return {
            "rss_before_bytes": before.get("rss_bytes"),
            "rss_after_bytes": health.get("rss_bytes") if health else None,
            "peak_gpu_bytes": None,  # sampled during the level from /health instead
        }

    async def gpu_memory(self) -> int | None:
        health = await self.health()
        value = health.get("gpu_memory_bytes") if health else None
        return value if isinstance(value, int) else None

    def request_id(self, spec: RequestSpec) -> str:
        return f"bench-{self.run_id}-{spec.index}"

    def describe(self, spec: RequestSpec) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.args.url}{self.path}",
            "headers": {"X-Request-Id": self.request_id(spec)},
            "body": self.body(spec),
        }

    async def send(self, spec: RequestSpec, result: RequestResult) -> None:
        headers = {"X-Request-Id": self.request_id(spec)}
        started = time.perf_counter()
        snippet = b""
        rate = self.args.sample_rate
        try:
            async with self.client.stream(
                "POST", self.path, json=self.body(spec), headers=headers
            ) as response:
                result.status = response.status_code
                result.cache = response.headers.get("x-cache")
                if response.status_code != 200:
                    result.detail = {"response_headers": dict(response.headers), "response_body": ""}
                # Decoded bytes: a proxy that compresses the body must not change the audio count.
                async for chunk in response.aiter_bytes():
                    if not chunk:
                        continue
                    if result.first_audio_s is None:
                        result.first_audio_s = time.perf_counter() - started
                    result.bytes += len(chunk)
                    if result.detail is not None and len(snippet) < RESPONSE_SNIPPET_CHARS:
                        snippet += chunk
                        result.detail["response_body"] = snippet[:RESPONSE_SNIPPET_CHARS].decode(
                            errors="replace"
                        )
                rate = int(response.headers.get("x-sample-rate") or self.args.sample_rate)
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        if result.ok:
            result.audio_s = _audio_seconds(self.args.format, result.bytes, rate)


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch, or a broken one: no GPU figures
        return False


class EngineTarget:
    name = "engine"

    def __init__(self, engine: Any, max_length: int, voice: Any = None):
        self.engine = engine
        self.max_length = max_length
        self.voice = voice  # the same encoded voice prompt the server would use
        self.cuda = _cuda_available()

    async def before_level(self) -> dict[str, Any]:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        # The engine lives in this process, so this process's RSS is the engine's footprint.
        return {"rss_bytes": process_rss_bytes()}

    async def after_level(self, before: dict[str, Any]) -> dict[str, Any]:
        peak = None
        if self.cuda:
            import torch

            peak = int(torch.cuda.max_memory_allocated())
        return {
            "rss_before_bytes": before.get("rss_bytes"),
            "rss_after_bytes": process_rss_bytes(),
            "peak_gpu_bytes": peak,
        }

    async def gpu_memory(self) -> int | None:
        # This process and its children: nano-vllm's model worker is one.
        return await asyncio.to_thread(gpu_memory_bytes) if self.cuda else None

    def describe(self, spec: RequestSpec) -> dict[str, Any]:
        return {"engine_generate": {"text": spec.text, "max_length": self.max_length, "seed": spec.seed}}

    async def send(self, spec: RequestSpec, result: RequestResult) -> None:
        from voxport.engine.base import SynthesisRequest

        request = SynthesisRequest(
            text=spec.text, voice=self.voice, max_length=self.max_length, seed=spec.seed
        )
        started = time.perf_counter()
        samples = 0
        chunks = self.engine.generate(request)
        try:
            async for chunk in chunks:
                if result.first_audio_s is None:
                    result.first_audio_s = time.perf_counter() - started
                samples += len(chunk)
                result.bytes = samples * 4  # float32
            result.status = 200
        except Exception as exc:  # every engine failure is one failed request, never a dead sweep
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            # Closing the iterator is what stops the engine's worker when we leave early (timeout).
            await chunks.aclose()
        if result.ok:
            result.audio_s = samples / self.engine.info.sample_rate


# -- the sweep -------------------------------------------------------------------------------------------


def requests_for(concurrency: int, requests: int | None) -> int:
    return requests if requests is not None else max(8, 2 * concurrency)


async def run_level(
    target: Target, plan: LoadPlan, concurrency: int, requests: int, timeout: float
) -> LevelStats:
    before = await target.before_level()
    results: list[RequestResult] = []
    errors: list[dict[str, Any]] = []
    position = 0

    async def one(spec: RequestSpec) -> RequestResult:
        started = time.perf_counter()
        result = RequestResult(
            spec.index, spec.prompt_index, spec.seed, spec.repeat, sent_at_s=started - level_started
        )
        try:
            await asyncio.wait_for(target.send(spec, result), timeout)
        except asyncio.TimeoutError:
            result.error = "timeout"
        except Exception as exc:  # a bug in one request must not take the level down with it
            result.error = f"{type(exc).__name__}: {exc}"
        result.total_s = time.perf_counter() - started
        if not result.ok and result.status != 429 and len(errors) < ERROR_SAMPLES_PER_LEVEL:
            errors.append(
                {
                    "request": target.describe(spec),
                    "status": result.status,
                    "error": result.error,
                    **(result.detail or {}),
                    "sent_at_s": round(result.sent_at_s, 3),
                    "elapsed_s": round(result.total_s, 3),
                    "bytes_received": result.bytes,
                }
            )
        return result

    async def worker() -> None:
        nonlocal position
        while position < requests:
            # Single-threaded event loop: taking the position and planning happen with no await between.
            spec = plan.next(position)
            position += 1
            result = await one(spec)
            results.append(result)
            if result.ok:
                plan.completed(spec)

    gpu_samples: list[int] = []

    async def sample_gpu() -> None:
        while True:
            value = await target.gpu_memory()
            if value is None:
                return  # nothing to sample on this side
            gpu_samples.append(value)
            await asyncio.sleep(GPU_SAMPLE_INTERVAL_S)

    sampler = asyncio.create_task(sample_gpu())
    level_started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    wall = time.perf_counter() - level_started
    results.sort(key=lambda r: r.index)
    stats = summarise(concurrency, results, wall, errors)
    after = await target.after_level(before)
    stats.rss_before_bytes = after["rss_before_bytes"]
    stats.rss_after_bytes = after["rss_after_bytes"]
    peaks = [v for v in (after["peak_gpu_bytes"], max(gpu_samples, default=None)) if v is not None]
    stats.peak_gpu_bytes = max(peaks, default=None)
    return stats


async def sweep(
    target: Target,
    levels: Sequence[int],
    args: argparse.Namespace,
    nonce: int,
    progress: Callable[[str], None],
) -> list[LevelStats]:
    # One plan per target and run: repeats may reach back to earlier levels, where the cache was filled.
    plan = LoadPlan(nonce, args.repeat_fraction)
    out = []
    for concurrency in levels:
        n = requests_for(concurrency, args.requests)
        progress(f"{target.name}: concurrency {concurrency}, {n} requests ...")
        stats = await run_level(target, plan, concurrency, n, args.timeout)
        progress(
            f"{target.name}: concurrency {concurrency}: {stats.completed}/{n} ok, {stats.errors} errors, "
            f"{stats.rejected} rejected, {stats.cache_hits} cache hits in {stats.wall_s:.2f} s"
        )
        out.append(stats)
        if getattr(args, "out", None):
            # Each level as it completes, so that a run cut short (a time limit, a crash) keeps what it
            # finished; the full report replaces this file when the run ends.
            partial = Path(args.out) / PARTIAL_FILE
            partial.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"side": target.name, **asdict(stats)}) + "\n")
    return out


# -- reporting -------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": None,
        "cuda_device": None,
        "voxport": __version__,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["torch"] = importlib.metadata.version("torch")
    if _cuda_available():
        import torch

        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def markdown_table(levels_by_side: dict[str, list[dict[str, Any]] | None]) -> str:
    header = (
        "| side | concurrency | requests | ok | errors | rejected (429) | repeats | cache hits "
        "| first audio p50 / p95 (ms) | total p50 / p95 (ms) | req/s | audio s/s | RTF | audio s/req "
        "| peak GPU (MiB) | RSS before → after (MiB) |"
    )
    rows = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for side, levels in levels_by_side.items():
        for lv in levels or []:
            rows.append(
                f"| {side} | {lv['concurrency']} | {lv['requests']} | {lv['completed']} | {lv['errors']} "
                f"| {lv['rejected']} | {lv['repeats']} | {lv['cache_hits']} "
                f"| {_fmt(lv['first_audio_ms']['p50'])} / {_fmt(lv['first_audio_ms']['p95'])} "
                f"| {_fmt(lv['total_ms']['p50'])} / {_fmt(lv['total_ms']['p95'])} "
                f"| {_fmt(lv['requests_per_s'], 2)} | {_fmt(lv['audio_s_per_s'], 2)} | {_fmt(lv['rtf'], 3)} "
                f"| {_fmt(lv['audio_s']['mean'], 3)} | {_mib(lv['peak_gpu_bytes'])} "
                f"| {_mib(lv['rss_before_bytes'])} → {_mib(lv['rss_after_bytes'])} |"
            )
    return "\n".join(rows)


def markdown_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    machine = report["machine"]
    lines = [
        "# voxport bench",
        "",
        f"Run {report['created']} on {machine['platform']} ({machine['cpu_count']} CPUs"
        + (f", {machine['cuda_device']}" if machine["cuda_device"] else "")
        + f"), voxport {machine['voxport']}, torch {machine['torch']}.",
        "",
    ]
    server = report["server_info"]
    if report["levels"]["server"] is not None:
        where = f"`POST {s['url']}{s['route']}`"
        if server:
            where += (
                f" (voxport {server.get('version')}, engine {server.get('engine')} on "
                f"{server.get('device')}, checkpoint {server.get('checkpoint')})"
            )
        lines.append(f"- **server**: streamed requests to {where}.")
    engine = report["engine_info"]
    if engine:
        lines.append(
            f"- **engine**: the raw {engine['name']} engine in the bench's own process, "
            f"checkpoint `{engine['model']}` on {engine['device']} ({engine['dtype']})"
            + (f", attention {engine['attention']}" if engine.get("attention") else "")
            + "."
        )
    lines += [
        f"- Every request: one sentence from a fixed set of {len(s['prompts'])}, `max_length` "
        f"{s['max_length']} (at most {s['max_length'] * STEP_SECONDS:.2f} s of audio), format "
        f"`{s['format']}` at {s['sample_rate']} Hz, voice `{s['voice']}`, model `{s['model']}`.",
        f"- Repeat fraction {s['repeat_fraction']}: that share of requests repeats an earlier, completed "
        "request's text and seed (a caching server answers it from its cache); the rest are fresh.",
        f"- Per-request timeout {s['timeout']} s. Rejected = 429; errors = every other failure.",
        f"- {RTF_DEFINITION}",
        "- First audio: request sent to first body byte (server) or first engine chunk (engine).",
        "",
        markdown_table(report["levels"]),
        "",
    ]
    return "\n".join(lines)


def write_plot(path: Path, levels_by_side: dict[str, list[dict[str, Any]] | None]) -> str | None:
    """bench.png, or why it was not written."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed: bench.png skipped (pip install matplotlib to get the plot)"
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark hosts
    import matplotlib.pyplot as plt

    fig, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks: set[int] = set()
    for side, levels in levels_by_side.items():
        if not levels:
            continue
        xs = [lv["concurrency"] for lv in levels]
        ticks.update(xs)
        audio = [lv["audio_s_per_s"] if lv["audio_s_per_s"] is not None else float("nan") for lv in levels]
        first = [
            lv["first_audio_ms"]["p50"] if lv["first_audio_ms"]["p50"] is not None else float("nan")
            for lv in levels
        ]
        throughput.plot(xs, audio, marker="o", label=side)
        latency.plot(xs, first, marker="o", label=side)
    for ax, title, ylabel in (
        (throughput, "Throughput", "audio seconds per second"),
        (latency, "First-audio latency (p50)", "ms"),
    ):
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks))
        ax.set_xticklabels([str(t) for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- CLI -------------------------------------------------------------------------------------------------


def _concurrency_list(value: str) -> list[int]:
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {value!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return levels


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `bench` to a `voxport` subcommand set; `args.run(args)` runs it and returns the exit code."""
    parser = subparsers.add_parser(
        "bench",
        help="Load-check a speech server (and optionally the raw engine) over a concurrency sweep.",
        description="Streamed requests against an OpenAI-compatible /v1/audio/speech endpoint at each "
        "concurrency level, optionally the same prompts through the raw engine in-process; prints a "
        "Markdown table. Exit code: 0 when no level had errors other than 429, 1 otherwise, 2 when the "
        "run could not start.",
    )
    target = parser.add_argument_group("server")
    target.add_argument("--url", default="http://127.0.0.1:8000", help="Server base URL (no /v1).")
    target.add_argument("--api-key", default=None, help="Sent as `Authorization: Bearer KEY`.")
    target.add_argument(
        "--stream-route",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="POST /v1/audio/speech/stream (default); --no-stream-route: /v1/audio/speech with stream=true.",
    )
    target.add_argument("--skip-server", action="store_true", help="Measure only the raw engine.")
    body = parser.add_argument_group("requests")
    body.add_argument("--model", default="tts-1", help="Request `model`.")
    body.add_argument("--voice", default="alloy", help="Request `voice` (the engine side clones it too).")
    body.add_argument(
        "--design-clip-seconds",
        type=float,
        default=6.0,
        help="Reference clip length for a designed voice on the engine side; match the server's setting.",
    )
    body.add_argument("--format", choices=FORMATS, default="pcm", help="Request `response_format`.")
    body.add_argument(
        "--sample-rate",
        type=_positive_int,
        default=24000,
        help="Request `sample_rate`; audio seconds = bytes / 2 / rate for pcm and wav (n/a otherwise).",
    )
    body.add_argument(
        "--max-length",
        type=_positive_int,
        default=32,
        help="Request `max_length` (steps of 0.16 s), the same for every request so runs compare.",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=[1, 4, 16],
        metavar="N,N,...",
        help="Concurrency levels, run in order (default 1,4,16).",
    )
    load.add_argument(
        "--requests", type=_positive_int, default=None, help="Requests per level (default max(8, 2 × level))."
    )
    load.add_argument(
        "--repeat-fraction",
        type=_fraction,
        default=0.0,
        help="Share of requests that repeat an earlier completed request's text and seed (cache hits).",
    )
    load.add_argument(
        "--timeout", type=_positive_float, default=300.0, help="Per-request timeout, seconds (default 300)."
    )
    load.add_argument(
        "--nonce",
        type=int,
        default=None,
        help="Base of the fresh requests' seeds (default: random per run, so fresh requests miss the cache).",
    )
    engine = parser.add_argument_group("raw engine (in-process)")
    engine.add_argument("--engine-model", default=None, metavar="DIR", help="Checkpoint directory to load.")
    engine.add_argument("--engine", choices=["auto", "reference", "nanovllm"], default="auto")
    engine.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", default=None, metavar="DIR", help="Write bench.json, bench.md and bench.png here."
    )
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxport")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """`voxport bench ARGS` on its own: argv without the `bench` word."""
    args = build_parser().parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.run(args)


def run(args: argparse.Namespace) -> int:
    if args.skip_server and not args.engine_model:
        print("voxport bench: --skip-server needs --engine-model", file=sys.stderr)
        return 2
    return asyncio.run(_bench(args))


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _levels_dicts(levels: list[LevelStats] | None) -> list[dict[str, Any]] | None:
    return None if levels is None else [asdict(lv) for lv in levels]


async def _bench_server(
    args: argparse.Namespace, nonce: int, run_id: str
) -> tuple[dict[str, Any] | None, list[LevelStats] | None, str | None]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    top = max(args.concurrency)
    # httpx pools 100 connections by default: more concurrency than that would queue inside the client.
    limits = httpx.Limits(max_connections=top + 4, max_keepalive_connections=top + 4)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=httpx.Timeout(args.timeout), limits=limits
    ) as client:
        target = ServerTarget(client, args, run_id)
        health = await target.health()
        if health is None:
            return None, None, f"no answer from {args.url}/health"
        if not health.get("ready", True):
            _progress(f"warning: {args.url} says it is not ready: {json.dumps(health)}")
        return health, await sweep(target, args.concurrency, args, nonce, _progress), None


async def _bench_engine(
    args: argparse.Namespace, nonce: int
) -> tuple[dict[str, Any] | None, list[LevelStats] | None, str | None]:
    from voxport.config import Settings
    from voxport.engine import create_engine
    from voxport.voices import VoiceRegistry

    try:
        settings = Settings(model=args.engine_model, engine=args.engine, device=args.device)
        engine = create_engine(settings, args.engine_model)
        _progress(f"engine: loading {args.engine_model} ...")
        await engine.start()
    except Exception as exc:  # any load failure ends the run, with its reason
        return None, None, f"the engine could not start: {type(exc).__name__}: {exc}"
    try:
        info = engine.info
        engine_info = {
            "name": info.name,
            "model": info.model,
            "device": info.device,
            "dtype": info.dtype,
            "sample_rate": info.sample_rate,
            "samples_per_step": info.samples_per_step,
            "max_model_len": info.max_model_len,
            "attention": getattr(info, "attention", None),
        }
        # Same work as the server: the server clones its voice (a designed voice from a reference clip),
        # so the engine gets that voice's prompt too, built by the same registry code.
        with tempfile.TemporaryDirectory(prefix="voxport-bench-") as scratch:
            voices = VoiceRegistry(
                engine,
                settings.voices_file,
                settings.voices_dir,
                Path(scratch),
                args.voice,
                design_clip_seconds=args.design_clip_seconds,
            )
            await voices.load("bench")
            voice = voices.get(args.voice)
            if voice is None:
                return None, None, f"no voice {args.voice!r} in {settings.voices_file}"
            prompt = await voices.prompt(voice)
            engine_info["voice"] = {"id": voice.id, "kind": voice.kind, "prompt_positions": prompt.positions}
            target = EngineTarget(engine, args.max_length, prompt)
            levels = await sweep(target, args.concurrency, args, nonce, _progress)
    finally:
        await engine.close()
    return engine_info, levels, None


async def _bench(args: argparse.Namespace) -> int:
    nonce = args.nonce if args.nonce is not None else random.SystemRandom().randrange(2**31)
    run_id = f"{nonce:x}"
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    server_info: dict[str, Any] | None = None
    server_levels: list[LevelStats] | None = None
    if args.out:
        (Path(args.out) / PARTIAL_FILE).unlink(missing_ok=True)  # a previous run's leftovers
    if not args.skip_server:
        server_info, server_levels, problem = await _bench_server(args, nonce, run_id)
        if problem:
            print(f"voxport bench: {problem}", file=sys.stderr)
            return 2
    engine_info: dict[str, Any] | None = None
    engine_levels: list[LevelStats] | None = None
    if args.engine_model:
        engine_info, engine_levels, problem = await _bench_engine(args, nonce)
        if problem:
            print(f"voxport bench: {problem}", file=sys.stderr)
            return 2
    if server_info and server_info.get("attention") and engine_info and not engine_info["attention"]:
        engine_info["attention"] = server_info["attention"]

    levels = {"server": _levels_dicts(server_levels), "engine": _levels_dicts(engine_levels)}
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": created,
        "settings": {
            "url": None if args.skip_server else args.url,
            "route": "/v1/audio/speech/stream" if args.stream_route else "/v1/audio/speech",
            "stream_route": args.stream_route,
            "api_key": bool(args.api_key),
            "model": args.model,
            "voice": args.voice,
            "format": args.format,
            "sample_rate": args.sample_rate,
            "max_length": args.max_length,
            "concurrency": list(args.concurrency),
            "requests": {str(c): requests_for(c, args.requests) for c in args.concurrency},
            "repeat_fraction": args.repeat_fraction,
            "timeout": args.timeout,
            "nonce": nonce,
            "engine_model": args.engine_model,
            "engine": args.engine if args.engine_model else None,
            "device": args.device if args.engine_model else None,
            "prompts": list(PROMPTS),
        },
        "machine": await asyncio.to_thread(machine_info),
        "server_info": server_info,
        "engine_info": engine_info,
        "rtf_definition": RTF_DEFINITION,
        "levels": levels,
    }
    print(markdown_table(levels))
    print()
    print(RTF_DEFINITION)
    for side, side_levels in levels.items():
        for lv in side_levels or []:
            for sample in lv["error_samples"][:1]:
                _progress(f"{side} c={lv['concurrency']}: first error: {json.dumps(sample)}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out / "bench.md").write_text(markdown_report(report), encoding="utf-8")
        skipped = await asyncio.to_thread(write_plot, out / "bench.png", levels)
        if skipped:
            _progress(skipped)
        _progress(f"wrote {out / 'bench.json'}, {out / 'bench.md'}" + ("" if skipped else ", bench.png"))
        (out / PARTIAL_FILE).unlink(missing_ok=True)
    failed = any(lv["errors"] for side_levels in levels.values() for lv in side_levels or [])
    return 1 if failed else 0
