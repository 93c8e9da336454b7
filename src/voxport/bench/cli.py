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

from voxport.bench.args import define
from voxport.bench.report import (
    RTF_DEFINITION,
    build_report,
    comparison_table,
    machine_info,
    markdown_report,
    markdown_table,
    write_plot,
)
from voxport.bench.spawn import SpawnedServer
from voxport.bench.sweep import PARTIAL_FILE, LevelStats, sweep
from voxport.bench.targets import EngineTarget, ServerTarget
from voxport.config import Settings

KEEPALIVE_EXPIRY_S = 2.0


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
    define(parser)
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


def _engine_side(args: argparse.Namespace) -> bool:
    return bool(args.engine_model) or args.engine == "sim"


def run(args: argparse.Namespace) -> int:
    if args.skip_server and not _engine_side(args):
        print("voxport bench: --skip-server needs --engine-model or --engine sim", file=sys.stderr)
        return 2
    if args.workers and not args.spawn_server:
        print("voxport bench: --workers needs --spawn-server", file=sys.stderr)
        return 2
    if args.spawn_server and args.engine != "sim" and not args.engine_model:
        print("voxport bench: --spawn-server needs --engine sim or --engine-model", file=sys.stderr)
        return 2
    if not args.workers:
        return asyncio.run(_bench(args))
    status = 0
    for workers in args.workers:  # the same bench against each server shape
        one = argparse.Namespace(**vars(args))
        one.server_arg = [*(args.server_arg or []), "--workers", str(workers)]
        one.out = str(Path(args.out) / f"workers-{workers}") if args.out else None
        print(f"## --workers {workers}\n")
        status = max(status, asyncio.run(_bench(one)))
    return status


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _levels_dicts(levels: list[LevelStats] | None) -> list[dict[str, Any]] | None:
    return None if levels is None else [asdict(lv) for lv in levels]


async def _bench_server(
    args: argparse.Namespace, nonce: int, run_id: str
) -> tuple[dict[str, Any] | None, list[LevelStats] | None, str | None]:
    spawned = None
    if args.spawn_server:
        log = Path(args.out) / "server.log" if args.out else None
        spawned = SpawnedServer(args, log)
        _progress(f"server: starting {' '.join(spawned.command)}")
        problem = await asyncio.to_thread(spawned.wait_ready)
        if problem:
            await asyncio.to_thread(spawned.stop)
            return None, None, problem
        args.url = spawned.url
        args.server_command = spawned.command
    try:
        return await _sweep_server(args, nonce, run_id, spawned.pid if spawned else args.server_pid)
    finally:
        if spawned is not None:
            await asyncio.to_thread(spawned.stop)


async def _sweep_server(
    args: argparse.Namespace, nonce: int, run_id: str, pid: int | None
) -> tuple[dict[str, Any] | None, list[LevelStats] | None, str | None]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    top = max(args.concurrency)
    # httpx pools 100 connections by default: more concurrency than that would queue inside the client.
    # Idle connections are dropped well before the server's keep-alive timeout (default 5 s, httpx's
    # default too): a request sent on a connection the server is closing at that moment fails with
    # ReadError and no byte, which is the client's race, not a server failure.
    limits = httpx.Limits(
        max_connections=top + 4, max_keepalive_connections=top + 4, keepalive_expiry=KEEPALIVE_EXPIRY_S
    )
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=httpx.Timeout(args.timeout), limits=limits
    ) as client:
        target = ServerTarget(client, args, run_id, pid)
        health = await target.health()
        if health is None:
            return None, None, f"no answer from {args.url}/health"
        if not health.get("ready", True):
            _progress(f"warning: {args.url} says it is not ready: {json.dumps(health)}")
        return health, await sweep(target, args.concurrency, args, nonce, _progress), None


async def _bench_engine(
    args: argparse.Namespace, nonce: int
) -> tuple[dict[str, Any] | None, list[LevelStats] | None, str | None]:
    from voxport.engine import create_engine
    from voxport.voices import VoiceRegistry

    try:
        settings = Settings(
            engine=args.engine,
            device=args.device,
            sim_step_ms=args.sim_step_ms,
            sim_step_ms_per_seq=args.sim_step_ms_per_seq,
            **({"model": args.engine_model} if args.engine_model else {}),
        )
        engine = create_engine(settings, args.engine_model or settings.model)
        _progress(f"engine: loading {args.engine_model or args.engine} ...")
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
    if _engine_side(args):
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
    if levels["server"] and levels["engine"]:
        print(comparison_table(levels))
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
