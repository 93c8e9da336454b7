"""create_app(settings) -> FastAPI: the composition root. Every collaborator is built here and passed
in at construction; what is only known once the engine has started (the checkpoint's fingerprint) is
passed as a provider. The lifespan loads the engine before the first request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from voxport import __version__
from voxport.agents.session import LiveService
from voxport.api.auth import AccessPolicy
from voxport.api.errors import install_error_handlers
from voxport.api.limits import BodyLimitMiddleware, BodyLimits
from voxport.api.middleware import RequestContextMiddleware
from voxport.api.openapi import install_openapi
from voxport.api.probes import Probes
from voxport.api.routes import ROUTERS
from voxport.api.stack import create_api
from voxport.cache import AudioCache, AudioStore, checkpoint_fingerprint
from voxport.config import Settings
from voxport.engine import create_engine
from voxport.engine.base import Engine
from voxport.faultlog import OncePerCause
from voxport.jobs.service import JobService
from voxport.lexicon import Lexicon
from voxport.metrics import Gauges, Metrics, ResourceSampler
from voxport.speech import SpeechService
from voxport.speech.admission import Admission
from voxport.speech.tickets import TicketRegistry
from voxport.voices import VoiceRegistry
from voxport.voices.designed import warm

if TYPE_CHECKING:
    from voxport.cluster.redis import SharedRedis
    from voxport.wyoming_server import WyomingServer

log = logging.getLogger("voxport")


@dataclass
class Loaded:
    """What start-up learns about the checkpoint."""

    fingerprint: str = ""


def _shared(settings: Settings) -> SharedRedis | None:
    """The shared Redis, only with --redis-url: without it, no Redis module is even imported."""
    if not settings.redis_url:
        return None
    from voxport.cluster.redis import SharedRedis

    return SharedRedis(settings.redis_url, settings.redis_prefix)


def _voices(settings: Settings, engine: Engine, shared: SharedRedis | None) -> VoiceRegistry:
    library = None
    if shared is not None:
        from voxport.cluster.voices import SharedVoiceLibrary

        library = SharedVoiceLibrary(shared)
    return VoiceRegistry(
        engine, settings.voices_file, settings.voices_dir, settings.data_dir, settings.default_voice,
        max_user_voices=settings.max_user_voices, max_user_bytes=int(settings.max_user_voices_mb * 2**20),
        design_clip_seconds=settings.design_clip_seconds, lexicon=Lexicon(settings.lexicon_file),
        shared_library=library,
    )  # fmt: skip


def _cache(settings: Settings, metrics: Metrics, shared: SharedRedis | None) -> AudioStore:
    """The audio cache: on disk, or in the shared Redis (the same interface)."""
    if shared is None:
        return AudioCache(
            settings.data_dir / "cache",
            ttl_seconds=settings.cache_ttl_minutes * 60,
            max_bytes=int(settings.cache_max_mb * 2**20),
            on_evict=metrics.cache_evictions.inc,
            memory_bytes=int(settings.cache_memory_mb * 2**20),
        )
    from prometheus_client import Counter

    from voxport.cluster.cache import RedisAudioCache

    errors = Counter("voxport_redis_errors", "Failed Redis commands, by operation.", ["op"],
                     registry=metrics.registry)  # fmt: skip
    shared.on_error = lambda op: errors.labels(op).inc()
    return RedisAudioCache(shared, settings.cache_ttl_minutes * 60, wait_s=settings.request_timeout_s)


async def _watch(shared: SharedRedis | None, voices: VoiceRegistry) -> None:
    """Keep Redis' reachability current, and the voice library with it (or with what other workers on
    this data dir changed) even on an idle replica."""
    errors = OncePerCause(log)
    while True:
        await asyncio.sleep(1.0)
        try:
            if shared is None or await shared.ping():
                await voices.refresh()
        except Exception as exc:  # the watcher must outlive any one failure
            errors.report("shared voice library refresh", exc)


def _speech(settings: Settings, engine: Engine, voices: VoiceRegistry, loaded: Loaded,
            shared: SharedRedis | None, admits: Callable[..., Admission]) -> SpeechService:  # fmt: skip
    speech: SpeechService | None = None  # the gauges read it once it exists
    # Sized from the engine (what it runs at once) unless the settings say otherwise.
    max_concurrent, max_queue = settings.admission(engine.capacity)
    limits = {"engine_batch": engine.capacity, "max_concurrent": max_concurrent, "max_queue": max_queue}
    metrics = Metrics(
        Gauges(
            queue_depth=lambda: admission.queued,
            generating=lambda: admission.generating,
            engine_ready=lambda: float(speech is not None and speech.accepts_requests),
            cache_bytes=lambda: cache.bytes,
            cache_entries=lambda: cache.entries,
        ),
        limits,
    )
    cache = _cache(settings, metrics, shared)
    admission = admits(max_concurrent, max_queue, engine.capacity, on_reject=metrics.rejected.inc)
    tickets = TicketRegistry(on_cancelled=metrics.cancelled.inc, on_in_flight=metrics.in_flight.set)
    speech = SpeechService(settings, engine, voices, cache, metrics, admission, tickets,
                           weights_fingerprint=lambda: loaded.fingerprint)  # fmt: skip
    return speech


async def _warm(speech: SpeechService) -> None:
    try:
        await warm(speech.voices)
    finally:
        speech.warming = False


async def _wyoming(settings: Settings, speech: SpeechService) -> WyomingServer | None:
    """The built-in Wyoming server, with --wyoming-port: in this process, on this SpeechService. (Imported
    only then.) With several HTTP worker processes, one of them runs it (docs/home-assistant.md)."""
    if settings.wyoming_port is None:
        return None
    from voxport.wyoming_server import WyomingServer

    server = WyomingServer(speech, settings.wyoming_host or settings.host, settings.wyoming_port)
    await server.start()
    return server


def create_app(
    settings: Settings,
    checkpoint_dir: str | None = None,
    engine: Engine | None = None,
    admission: Callable[..., Admission] = Admission,
    run_jobs: bool = True,
) -> FastAPI:
    """Build the app. `checkpoint_dir` is the resolved local model directory (default: settings.model);
    `engine`, `admission` and `run_jobs` are given by a worker of the process topology (voxport/topology)."""
    model_dir = checkpoint_dir or settings.model
    engine = engine or create_engine(settings, model_dir)
    shared = _shared(settings)
    voices = _voices(settings, engine, shared)
    voices.validate_file()  # a bad voices.json (or lexicon) stops start-up before anything is loaded
    voices.lexicon.use(voices.lexicon.read())
    loaded = Loaded()
    speech = _speech(settings, engine, voices, loaded, shared, admission)
    cache = speech.cache
    backend = None
    if shared is not None:  # imported only then: the embedded default needs no Redis
        from voxport.cluster.jobs import redis_backend

        backend = redis_backend(shared)
    jobs = JobService(settings, speech, speech.metrics, backend=backend, runs=run_jobs)
    sampler = ResourceSampler(cuda=lambda: engine.ready and (engine.info.device or "").startswith("cuda"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        if Path(model_dir).is_dir():
            loaded.fingerprint = await asyncio.to_thread(checkpoint_fingerprint, model_dir)
        else:  # no weights (the sim engine): its audio and clips must never pass for a model's
            loaded.fingerprint = f"engine:{engine.info.name}"
        if shared is not None:  # reachable or not: a replica starts (and serves) without Redis too
            await shared.ping()
        watcher = asyncio.create_task(_watch(shared, voices))
        await voices.load(loaded.fingerprint)
        sweeper = None
        if cache.enabled:
            await asyncio.to_thread(cache.load_index)
            sweeper = asyncio.create_task(cache.run_sweeper(settings.cache_sweep_s))
        await jobs.start()
        await asyncio.to_thread(sampler.sample)  # the first /health has figures
        sampling = asyncio.create_task(sampler.run())
        warming = None
        if settings.warm_voices:  # served meanwhile, but /ready waits for it (a first use is slow)
            speech.warming = True
            warming = asyncio.create_task(_warm(speech))
        wyoming = await _wyoming(settings, speech)
        log.info(
            "voxport %s ready: model %s, engine %s", __version__, settings.served_model_id, engine.info.name
        )
        try:
            yield
        finally:
            if wyoming is not None:  # first: its open streams end before the engine does
                await wyoming.stop()
            await jobs.close()  # before the engine: running jobs stop and resume at the next start
            for task in (warming, sweeper, sampling, watcher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await speech.watch.close()
            await engine.close()
            if shared is not None:
                await shared.close()

    # /docs and /redoc with their scripts and styles served from the fastapi-offline package: no CDN; and
    # no validator badge, which Swagger UI would otherwise fetch from validator.swagger.io.
    app = create_api(
        title="voxport", version=__version__, lifespan=lifespan, swagger_ui_parameters={"validatorUrl": None}
    )
    app.state.settings = settings
    app.state.speech = speech
    app.state.live = LiveService(settings, speech)  # the speech socket's per-process state
    app.state.metrics = speech.metrics
    app.state.jobs = jobs
    app.state.redis = shared
    app.state.policy = AccessPolicy(
        api_keys=tuple(settings.all_api_keys()),
        admin_key=settings.admin_api_key,
        metrics_require_key=settings.metrics_require_key,
    )
    # The directory name only: server paths are never shown to clients.
    app.state.checkpoint_name = Path(model_dir).name if Path(model_dir).is_dir() else settings.model
    app.state.probes = probes = Probes(speech, jobs, app.state.checkpoint_name, sampler, shared)
    install_error_handlers(app)
    # Inside the request context: a body is refused only after its request was authenticated and logged.
    app.add_middleware(
        BodyLimitMiddleware,
        limits=BodyLimits(
            json_bytes=settings.max_json_body_bytes,
            upload_bytes=settings.max_upload_body_bytes,
            read_timeout_s=settings.body_read_timeout_s,
            json_bytes_by_path=(
                ("/v1/audio/speech/jobs", settings.max_job_body_bytes),
                ("/v1/audio/speech/batches", settings.max_batch_body_bytes),
            ),
            param_by_path=(("/v1/audio/speech/batches", "requests"),),
        ),
    )
    app.add_middleware(
        RequestContextMiddleware, metrics=speech.metrics, log_request_text=settings.log_request_text,
        fast=probes.routes(),
    )  # fmt: skip
    if settings.cors_allow_origins:
        # Outermost, so that preflights are answered before auth and errors carry CORS headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials="*" not in settings.cors_allow_origins,
            allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Request-Id", "X-Sample-Rate", "X-Audio-Duration", "X-Cache", "X-Route"],
        )
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app)
    return app
