"""`voxport serve | dummy-model | bench`. Each subcommand imports only what it uses: `serve` never loads
the benchmark (or its HTTP client)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from voxport import __version__
from voxport.config import Settings


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse options for a Settings field type."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _flag_type(inner[0])
    if origin is typing.Annotated:
        return _flag_type(get_args(annotation)[0])
    if origin is Literal:
        return str, {"choices": list(get_args(annotation))}
    if annotation is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return str, {"metavar": "A,B,..."}
    if annotation in (int, float):
        return annotation, {}
    return str, {}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        kind, extra = _flag_type(field.annotation)
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, **extra}
        if kind is not None:
            options["type"] = kind
        env = f"VOXPORT_{name.upper()}"
        options["help"] = f"{field.description} [env {env}]"
        parser.add_argument(f"--{name.replace('_', '-')}", **options)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _keep_writes_in(data_dir: Path) -> None:
    """The server writes only under its data directory: spooled uploads and other temporary files (this
    process's and its children's: ffmpeg, nano-vllm's worker) go to <data-dir>/tmp, and numba's compiled
    cache (librosa's resampling kernels) to <data-dir>/numba-cache instead of the installed packages."""
    scratch = data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(data_dir / "numba-cache"))


def _stopped(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _draining_server(base: type, speech: Any, drain_s: float) -> type:
    """uvicorn's Server (passed in: only `serve` imports uvicorn), with a drain period between the first
    SIGTERM and the listener closing."""
    import time

    log = logging.getLogger("voxport")

    class DrainingServer(base):  # type: ignore[misc, valid-type]
        drain_until: float | None = None
        drain_logged = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            # The first SIGTERM once serving (during start-up there is nothing to drain).
            first = self.drain_until is None and not self.should_exit
            if sig == signal.SIGTERM and drain_s > 0 and self.started and first:
                # A signal handler: only flags are set here; the main loop's next tick logs and acts.
                self.drain_until = time.monotonic() + drain_s
                speech.draining = True
                return
            super().handle_exit(sig, frame)  # a second SIGTERM, or SIGINT: stop now

        async def on_tick(self, counter: int) -> bool:
            if self.drain_until is not None and not self.should_exit:
                if not self.drain_logged:
                    self.drain_logged = True
                    log.info("SIGTERM: draining for %g s (/ready answers 503), then stopping", drain_s)
                self.should_exit = time.monotonic() >= self.drain_until
            return await super().on_tick(counter)

    return DrainingServer


def _unlistenable(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (taken, not an address of this host), or None. uvicorn
    binds only after the lifespan start-up, i.e. after the model has loaded."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}."
    return None


def draining_server(app: Any, settings: Settings, **where: Any) -> Any:
    """uvicorn's server for the app, with the drain period (also each worker's with --workers)."""
    import uvicorn

    from voxport.api.serving import Deadlines, uvicorn_options

    # uvloop and httptools where installed, httptools with our limit on a request head's size.
    deadlines = Deadlines(settings.connection_idle_s, settings.request_head_timeout_s,
                          settings.request_body_timeout_s)  # fmt: skip
    options = uvicorn_options(settings.max_header_kb * 1024, deadlines)
    if "port" not in where:  # a worker on an inherited socket, in a loop already running
        options.pop("loop")
    # log_config=None: uvicorn's lines in voxport's format (_configure_logging), not its own.
    config = uvicorn.Config(app, log_level=settings.log_level, access_log=False, log_config=None,
                            timeout_graceful_shutdown=settings.shutdown_grace_s,
                            timeout_keep_alive=settings.keep_alive_s, **where, **options)  # fmt: skip
    return _draining_server(uvicorn.Server, app.state.speech, settings.drain_s)(config)


def _workers(settings: Settings) -> int:
    from voxport.topology.supervisor import default_workers

    return default_workers(settings)


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"voxport serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    if taken := _unlistenable(settings.host, settings.port):  # now, not after minutes of model loading
        print(f"voxport serve: {taken}", file=sys.stderr)
        return 2
    _keep_writes_in(settings.data_dir)
    from voxport.checkpoint import CheckpointUnavailable, resolve_checkpoint

    checkpoint = None  # the sim engine has no weights: a fresh clone serves with it
    try:
        if settings.engine != "sim":
            checkpoint = resolve_checkpoint(settings.model)
    except CheckpointUnavailable as exc:
        print(f"voxport serve: {exc}", file=sys.stderr)
        return 2
    workers = _workers(settings)
    if workers > 1:  # the engine host and N HTTP workers (voxport/topology)
        from voxport.topology.supervisor import Supervisor

        return Supervisor(settings, overrides, checkpoint or settings.model, workers).run()
    from voxport.app import create_app
    from voxport.engine.base import EngineError
    from voxport.lexicon import LexiconError
    from voxport.voices import VoicesFileError

    try:
        app = create_app(settings, checkpoint_dir=checkpoint)
    except (VoicesFileError, LexiconError, EngineError) as exc:
        print(f"voxport serve: {exc}", file=sys.stderr)
        return 2
    # On SIGTERM the server first drains for drain_s (still serving; /ready answers 503, so that a load
    # balancer moves new requests elsewhere); then uvicorn stops accepting, lets in-flight requests finish
    # within the grace period, and runs the lifespan shutdown, which stops the engine. A SIGTERM that
    # uvicorn saw itself is re-raised to the handler that was there before it: this one, which makes a
    # stop that was asked for and completed exit 0 (and a SIGTERM before uvicorn took over exit 0 at once).
    signal.signal(signal.SIGTERM, _stopped)
    server = draining_server(app, settings, host=settings.host, port=settings.port)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 3  # 3: uvicorn's own status when start-up failed


def _dummy_model(args: argparse.Namespace) -> int:
    from voxport.engine.dummy import build_checkpoint

    summary = build_checkpoint(args.dir, size=args.size, seed=args.seed)
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxport", description="OpenAI-compatible speech server for VoxCPM2."
    )
    parser.add_argument("--version", action="version", version=f"voxport {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Start the HTTP server.")
    _add_settings_flags(serve)
    serve.set_defaults(run=_serve)

    dummy = commands.add_parser(
        "dummy-model",
        help="Write a random-weight VoxCPM2 checkpoint (real architecture) for tests and benchmarks.",
    )
    dummy.add_argument("dir", help="Output directory.")
    dummy.add_argument(
        "--size", choices=["tiny", "full"], default="tiny", help="tiny: seconds to build; full: real dims."
    )
    dummy.add_argument("--seed", type=int, default=0, help="Seed for the random weights.")
    dummy.set_defaults(run=_dummy_model)

    # Listed here for `voxport --help`; its own flags live with it and load only when it runs (see main).
    commands.add_parser(
        "bench",
        add_help=False,
        help="Load-check a speech server (and optionally the raw engine); `voxport bench --help`.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from voxport.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
