"""`voxport bench`: its arguments, and a run: the server side, the engine side, the report files."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import random
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from voxport.audio import FORMATS
from voxport.bench.report import (
    RTF_DEFINITION,
    build_report,
    machine_info,
    markdown_report,
    markdown_table,
    write_plot,
)
from voxport.bench.sweep import PARTIAL_FILE, LevelStats, sweep
from voxport.bench.targets import EngineTarget, ServerTarget


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
    body.add_argument("--format", choices=tuple(FORMATS), default="pcm", help="Request `response_format`.")
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
    machine = await asyncio.to_thread(machine_info)
    report = build_report(args, created, nonce, machine, server_info, engine_info, levels)
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
