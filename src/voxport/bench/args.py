"""`voxport bench`'s flags."""

from __future__ import annotations

import argparse

from voxport.audio import FORMATS
from voxport.config import Settings

_SIM_DEFAULTS = {name: Settings.model_fields[name].default for name in ("sim_step_ms", "sim_step_ms_per_seq")}


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


def define(parser: argparse.ArgumentParser) -> None:
    """Every flag of `voxport bench`, in its groups."""
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
    target.add_argument(
        "--spawn-server",
        action="store_true",
        help="Start `voxport serve` here on a free port with the engine settings below (--engine, "
        "--sim-step-ms, ..., or --engine-model), measure it, stop it; --url is then ignored.",
    )
    target.add_argument(
        "--server-arg",
        action="append",
        metavar="ARG",
        help="An extra flag for the spawned server (repeat it: --server-arg=--max-queue --server-arg=8).",
    )
    target.add_argument(
        "--workers",
        type=_concurrency_list,
        default=None,
        metavar="N,N,...",
        help="With --spawn-server: run the whole bench once per `voxport serve --workers N` (reports under "
        "--out/workers-N when --out is given).",
    )
    target.add_argument(
        "--server-pid",
        type=_positive_int,
        default=None,
        help="The server's process id on this machine, to read its CPU time per level (automatic with "
        "--spawn-server).",
    )
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
    engine.add_argument(
        "--engine",
        choices=["auto", "reference", "nanovllm", "sim"],
        default="auto",
        help="sim: the simulated batching engine, no checkpoint (the raw side always runs then).",
    )
    engine.add_argument(
        "--sim-step-ms",
        type=float,
        default=_SIM_DEFAULTS["sim_step_ms"],
        help="sim: fixed cost of one batch step, ms (both sides).",
    )
    engine.add_argument(
        "--sim-step-ms-per-seq",
        type=float,
        default=_SIM_DEFAULTS["sim_step_ms_per_seq"],
        help="sim: cost of one batch step per running sequence, ms (both sides).",
    )
    engine.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", default=None, metavar="DIR", help="Write bench.json, bench.md and bench.png here."
    )
