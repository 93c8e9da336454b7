"""create_app(settings) -> FastAPI. The lifespan loads the engine before the first request."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from voxport import __version__
from voxport.api.errors import install_error_handlers
from voxport.api.middleware import RequestContextMiddleware
from voxport.api.routes import router
from voxport.config import Settings
from voxport.engine import create_engine
from voxport.engine.base import Engine
from voxport.speech import SpeechService
from voxport.voices import VoicesFileError, load_voices

log = logging.getLogger("voxport")


def create_app(
    settings: Settings, checkpoint_dir: str | None = None, engine: Engine | None = None
) -> FastAPI:
    """Build the app. `checkpoint_dir` is the resolved local model directory (default: settings.model)."""
    model_dir = checkpoint_dir or settings.model
    voices = load_voices(settings.voices_file)
    if settings.default_voice not in voices:
        raise VoicesFileError(f"default voice {settings.default_voice!r} is not in {settings.voices_file}")
    engine = engine or create_engine(settings, model_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        log.info(
            "voxport %s ready: model %s, engine %s", __version__, settings.served_model_id, engine.info.name
        )
        try:
            yield
        finally:
            await engine.close()

    app = FastAPI(title="voxport", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.speech = SpeechService(settings, engine, voices)
    # The directory name only: server paths are never shown to clients.
    app.state.checkpoint_name = Path(model_dir).name if Path(model_dir).is_dir() else settings.model
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(router)
    return app
