"""The sweep: concurrency levels run one after another against a target, each request's measurements,
and a level's summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxport.bench.plan import LoadPlan, RequestSpec
from voxport.bench.targets import RequestResult, Target

ERROR_SAMPLES_PER_LEVEL = 5
# How often GPU memory is read during a level (from /health for the server, NVML for the engine side).
GPU_SAMPLE_INTERVAL_S = 0.5
# Written level by level while a run with --out goes on, removed when its full report is written.
PARTIAL_FILE = "levels.partial.jsonl"


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
