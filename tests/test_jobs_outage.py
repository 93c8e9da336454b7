"""A job survives an engine outage: it pauses instead of failing, and finishes once the engine is back.
In-process, around the sim engine with the fault injector (tests/faults.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.faults import FaultInjectingEngine
from tests.waiting import until
from voxport.app import create_app
from voxport.config import Settings
from voxport.engine import create_engine


async def test_an_engine_outage_pauses_a_job_and_it_finishes_afterwards(tmp_path: Path) -> None:
    settings = Settings(engine="sim", data_dir=tmp_path, max_length=12, sim_step_ms=1, max_concurrent=2)
    engine = FaultInjectingEngine(create_engine(settings, settings.model))
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://voxport.test") as http:
            text = " ".join(f"Sentence {i} of a long job." for i in range(600))
            body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav", "seed": 1}
            job = (await http.post("/v1/audio/speech/jobs", json=body)).json()
            runner = app.state.jobs.runner

            async def get() -> dict:
                return (await http.get(f"/v1/audio/speech/jobs/{job['id']}")).json()

            await until(lambda: _segments_done(get, 2), "two segments done")
            engine.kill()
            # Paused either way: a segment generating when the engine died is interrupted, or, killed
            # between two segments, the next one waits for the engine to take work again.
            await until(lambda: runner.interrupted or runner.work.priority.waiting, "the job to pause")
            paused = await get()
            assert paused["status"] == "running" and paused["error"] is None
            engine.killed = False  # the engine is back
            done = await until(lambda: _finished(get), "the job to finish", every=0.05)
            assert done["status"] == "succeeded", done
            assert done["progress"]["segments_done"] == done["progress"]["segments_total"]


async def _segments_done(get: Callable[[], Awaitable[dict]], n: int) -> bool:
    return (await get())["progress"]["segments_done"] >= n


async def _finished(get: Callable[[], Awaitable[dict]]) -> dict | None:
    job = await get()
    return job if job["status"] != "running" else None
