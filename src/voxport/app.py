"""create_app(settings) -> FastAPI. The lifespan loads the engine before the first request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from voxport import __version__
from voxport.api.errors import install_error_handlers
from voxport.api.jobs import router as jobs_router
from voxport.api.limits import BodyLimitMiddleware, BodyLimits
from voxport.api.middleware import AccessPolicy, RequestContextMiddleware
from voxport.api.routes import router
from voxport.cache import AudioCache, checkpoint_fingerprint
from voxport.config import Settings
from voxport.engine import create_engine
from voxport.engine.base import Engine
from voxport.jobs.service import JobService
from voxport.metrics import Metrics
from voxport.speech import SpeechService
from voxport.voices import VoiceRegistry

log = logging.getLogger("voxport")


def create_app(
    settings: Settings, checkpoint_dir: str | None = None, engine: Engine | None = None
) -> FastAPI:
    """Build the app. `checkpoint_dir` is the resolved local model directory (default: settings.model)."""
    model_dir = checkpoint_dir or settings.model
    engine = engine or create_engine(settings, model_dir)
    voices = VoiceRegistry(
        engine,
        settings.voices_file,
        settings.voices_dir,
        settings.data_dir,
        settings.default_voice,
        max_user_voices=settings.max_user_voices,
        max_user_bytes=int(settings.max_user_voices_mb * 2**20),
        design_clip_seconds=settings.design_clip_seconds,
    )
    voices.validate_file()  # a bad voices.json stops start-up before anything is loaded
    metrics = Metrics()
    cache = AudioCache(
        settings.data_dir / "cache",
        ttl_seconds=settings.cache_ttl_minutes * 60,
        max_bytes=int(settings.cache_max_mb * 2**20),
    )
    cache.on_evict = metrics.cache_evictions.inc
    speech = SpeechService(settings, engine, voices, cache, metrics)
    metrics.bind(
        queue_depth=lambda: speech.queued,
        in_flight=lambda: speech.in_flight,
        engine_ready=lambda: float(speech.accepts_requests),
        cache_bytes=lambda: cache.bytes,
        cache_entries=lambda: cache.entries,
    )
    metrics.generating.set_function(lambda: speech.generating)
    jobs = JobService(settings, speech, metrics)
    limits = {"engine_batch": engine.capacity, "max_concurrent": speech.max_concurrent,
              "max_queue": speech.max_queue}  # fmt: skip
    for limit, value in limits.items():
        metrics.capacity.labels(limit).set(value)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        if Path(model_dir).is_dir():
            speech.weights_fingerprint = await asyncio.to_thread(checkpoint_fingerprint, model_dir)
        else:  # no weights (the sim engine): its audio and clips must never pass for a model's
            speech.weights_fingerprint = f"engine:{engine.info.name}"
        await voices.load(speech.weights_fingerprint)
        sweeper = None
        if cache.enabled:
            await asyncio.to_thread(cache.load_index)
            sweeper = asyncio.create_task(cache.run_sweeper(settings.cache_sweep_s))
        await jobs.start()
        log.info(
            "voxport %s ready: model %s, engine %s", __version__, settings.served_model_id, engine.info.name
        )
        try:
            yield
        finally:
            await jobs.close()  # before the engine: running jobs stop and resume at the next start
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await engine.close()

    app = FastAPI(title="voxport", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.speech = speech
    app.state.metrics = metrics
    app.state.jobs = jobs
    # The directory name only: server paths are never shown to clients.
    app.state.checkpoint_name = Path(model_dir).name if Path(model_dir).is_dir() else settings.model
    install_error_handlers(app)
    policy = AccessPolicy(
        api_keys=tuple(settings.all_api_keys()),
        admin_key=settings.admin_api_key,
        metrics_require_key=settings.metrics_require_key,
        log_request_text=settings.log_request_text,
    )
    app.state.api_keys_configured = bool(policy.api_keys)  # jobs then belong to the key that made them
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
        ),
    )
    app.add_middleware(RequestContextMiddleware, policy=policy, metrics=metrics)
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
    app.include_router(router)
    app.include_router(jobs_router)
    return app
