"""The two kinds of process the supervisor spawns: the engine host (`host_main`) and an HTTP worker
(`worker_main`: the whole app, create_app unchanged, over a RemoteEngine and a RemoteAdmission, served by
uvicorn on the listening socket the supervisor bound)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import signal
import socket
from typing import Any

from voxport.config import Settings

log = logging.getLogger("voxport.topology")

FATAL = 2  # a worker that exits with this will fail the same way again: the supervisor stops the server


def identity(index: int, pid: int) -> str:
    return f"w{index}-{pid}"


async def _serve(settings: Settings, model_dir: str, address: str, index: int, sock: socket.socket) -> int:
    from voxport.app import create_app
    from voxport.cache import AudioCache
    from voxport.cli import draining_server
    from voxport.engine.base import EngineError
    from voxport.lexicon import LexiconError
    from voxport.metrics import share
    from voxport.topology.client import HostLink
    from voxport.topology.flight import Flight
    from voxport.topology.remote import RemoteAdmission, RemoteEngine
    from voxport.voices import VoicesFileError

    share(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # one /metrics over every worker (voxport.metrics)
    link = HostLink(address, identity(index, os.getpid()))
    await link.start()
    try:
        app = create_app(settings, checkpoint_dir=model_dir, engine=RemoteEngine(link, settings, model_dir),
                         admission=functools.partial(RemoteAdmission, link),
                         # One job runner: worker 0's (with Redis, the shared queue lets every one run).
                         run_jobs=index == 0 or bool(settings.redis_url))  # fmt: skip
    except (VoicesFileError, LexiconError, EngineError) as exc:
        log.error("voxport serve: %s", exc)
        return FATAL
    speech = app.state.speech
    link.on_seek = speech.tickets.cancel  # POST /v1/audio/speech/cancel, across workers
    speech.elsewhere = link.seek
    jobs = app.state.jobs
    link.on_seek_job = jobs.runner.cancel  # a job cancelled through another worker stops here within a step
    if not settings.redis_url:  # (with Redis, each runner watches the shared store)
        jobs.elsewhere = functools.partial(_stop_job, link)
    if isinstance(speech.cache, AudioCache):  # the disk cache (with Redis, the shared one coordinates)
        speech.cache.across = Flight(link, speech.cache.peek, settings.request_timeout_s)
    server = draining_server(app, settings)
    await server.serve(sockets=[sock])
    return 0 if server.started else 3


async def _stop_job(link: Any, job_id: str) -> bool:
    """Stop the work of a job (cancelled in the store) that another worker runs; whether one did."""
    from voxport.engine.base import EngineUnavailable

    with contextlib.suppress(EngineUnavailable):  # the host went away: the runner sees the store at the end
        return await link.seek(job_id, job=True)
    return False


def worker_main(
    overrides: dict[str, Any], model_dir: str, address: str, index: int, sock: socket.socket
) -> None:
    from voxport.cli import _configure_logging, _keep_writes_in

    if index != 0:  # one Wyoming server, as one job runner: worker 0's (docs/home-assistant.md)
        overrides = {**overrides, "wyoming_port": None}
    settings = Settings(**overrides)
    _configure_logging(settings.log_level)
    tagged = logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [worker {index}]: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(tagged)
    _keep_writes_in(settings.data_dir)
    run: Any = asyncio.run
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        run = uvloop.run
    raise SystemExit(run(_serve(settings, model_dir, address, index, sock)))


def host_main(overrides: dict[str, Any], model_dir: str, address: str) -> None:
    """The engine host process (spawned by the supervisor)."""
    import zmq

    from voxport.cli import _configure_logging, _keep_writes_in
    from voxport.engine import create_engine
    from voxport.engine.base import EngineError
    from voxport.topology.host import EngineDied, EngineHost

    settings = Settings(**overrides)
    _configure_logging(settings.log_level)
    _keep_writes_in(settings.data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        host = EngineHost(settings, create_engine(settings, model_dir), address)
        await host.run(stop)

    try:
        asyncio.run(main())
    except EngineDied:
        raise SystemExit(1) from None  # restarted by the supervisor
    except EngineError as exc:
        log.error("engine host: %s", exc)
        raise SystemExit(FATAL) from None
    with contextlib.suppress(Exception):
        zmq.Context.instance().term()  # the one its sockets (topology/loopsock.py) were made in
