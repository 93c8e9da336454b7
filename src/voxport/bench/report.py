"""The run's report: machine facts, the Markdown table and page, and the PNG plot."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

from voxport import __version__
from voxport.bench.plan import PROMPTS
from voxport.bench.sweep import requests_for
from voxport.bench.targets import cuda_available
from voxport.engine.base import SAMPLE_RATE, SAMPLES_PER_STEP

SCHEMA = "voxport-bench/1"
RTF_DEFINITION = (
    "RTF = mean over successful requests of (request total time / seconds of audio it returned); "
    "below 1 is faster than real time. Total time runs from sending the request to its last byte "
    "(or last engine chunk), so it includes queueing behind other requests."
)


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
    if cuda_available():
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


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compare(server: dict[str, Any], engine: dict[str, Any] | None) -> dict[str, Any]:
    """What the server adds at one level: throughput against the engine's, first-audio overhead (the
    server's percentile less the engine's), CPU per second of audio delivered."""
    ratio = None
    if engine and server["audio_s_per_s"] and engine["audio_s_per_s"]:
        ratio = server["audio_s_per_s"] / engine["audio_s_per_s"]
    first, engine_first = server["first_audio_ms"], (engine or {}).get("first_audio_ms", {})
    cpu = server.get("server_cpu_s")
    children = server.get("server_children_cpu_s") or 0.0
    audio = server["audio_s"]["total"]
    per_audio = None if cpu is None or not audio else (cpu + children) * 1000 / audio
    return {
        "concurrency": server["concurrency"],
        "server_audio_s_per_s": server["audio_s_per_s"],
        "engine_audio_s_per_s": engine["audio_s_per_s"] if engine else None,
        "ratio": ratio,
        "first_audio_overhead_ms": {q: _delta(first.get(q), engine_first.get(q)) for q in ("p50", "p99")},
        "errors": server["errors"],
        "rejected": server["rejected"],
        "cpu_ms_per_audio_s": per_audio,
        "children_cpu_share": None if not cpu else children / (cpu + children),
        "rss_after_bytes": server["rss_after_bytes"],
    }


def comparisons(levels_by_side: dict[str, list[dict[str, Any]] | None]) -> list[dict[str, Any]]:
    engine = {lv["concurrency"]: lv for lv in levels_by_side.get("engine") or []}
    return [compare(lv, engine.get(lv["concurrency"])) for lv in levels_by_side.get("server") or []]


def comparison_table(levels_by_side: dict[str, list[dict[str, Any]] | None]) -> str:
    rows = [
        "| concurrency | server audio s/s | engine audio s/s | server / engine | first-audio overhead "
        "p50 / p99 (ms) | errors | 429 | server CPU ms per audio s | of which encoders | server RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons(levels_by_side):
        over = c["first_audio_overhead_ms"]
        share = c["children_cpu_share"]
        rows.append(
            f"| {c['concurrency']} | {_fmt(c['server_audio_s_per_s'])} | {_fmt(c['engine_audio_s_per_s'])} "
            f"| {_fmt(c['ratio'], 3)} | {_fmt(over['p50'])} / {_fmt(over['p99'])} | {c['errors']} "
            f"| {c['rejected']} | {_fmt(c['cpu_ms_per_audio_s'], 2)} "
            f"| {'n/a' if share is None else f'{share:.0%}'} | {_mib(c['rss_after_bytes'])} |"
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
    step_seconds = SAMPLES_PER_STEP / SAMPLE_RATE  # VoxCPM2's step; no engine is loaded here
    lines += [
        f"- Every request: one sentence from a fixed set of {len(s['prompts'])}, `max_length` "
        f"{s['max_length']} (at most {step_seconds * s['max_length']:.2f} s of audio), format "
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
    if report["levels"]["server"] and report["levels"]["engine"]:
        lines += [comparison_table(report["levels"]), ""]
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
        concurrency_axes(ax, ticks, title, ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def build_report(
    args: argparse.Namespace,
    created: str,
    nonce: int,
    machine: dict[str, Any],
    server_info: dict[str, Any] | None,
    engine_info: dict[str, Any] | None,
    levels: dict[str, list[dict[str, Any]] | None],
) -> dict[str, Any]:
    """bench.json's content: the settings, the machine, both sides' facts and levels."""
    return {
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
            "engine": args.engine if args.engine_model or args.engine == "sim" else None,
            "device": args.device if args.engine_model else None,
            "sim_step_ms": args.sim_step_ms if args.engine == "sim" else None,
            "sim_step_ms_per_seq": args.sim_step_ms_per_seq if args.engine == "sim" else None,
            "spawn_server": args.spawn_server,
            "server_command": getattr(args, "server_command", None),
            "prompts": list(PROMPTS),
        },
        "machine": machine,
        "server_info": server_info,
        "engine_info": engine_info,
        "rtf_definition": RTF_DEFINITION,
        "levels": levels,
        "comparison": comparisons(levels),
    }


def concurrency_axes(ax: Any, ticks: set[int], title: str, ylabel: str, xlabel: str = "concurrency",
                     legend_size: int | None = None) -> None:  # fmt: skip
    """One plot of a sweep: concurrency on a log axis, ticked at the levels measured."""
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels([str(t) for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size)
