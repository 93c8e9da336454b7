"""Issue 29, item 3: stall detection judged from the engine's own progress, and recovering by itself.

An engine that stops answering makes requests 503 and /ready fail (tests/faults.py's
FaultInjectingEngine stalls a real engine); once it answers again, a probe generation notices and requests
go through, without a restart. An event loop blocked for longer than `engine_stall_s` while the engine
keeps producing is not a stall."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.faults import FaultInjectingEngine
from tests.test_serving import SPEECH, running
from voxport.engine.reference import ReferenceEngine


async def _wait_ready(http, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await http.get("/ready")).status_code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("/ready did not come back")


async def test_a_stall_that_recovers_lets_requests_through_again(tiny_model: Path, tmp_path: Path) -> None:
    engine = FaultInjectingEngine(ReferenceEngine(str(tiny_model), device="cpu"))
    async with running(tiny_model, tmp_path, engine=engine, engine_stall_s=0.5) as (_, http):
        assert (await http.post("/v1/audio/speech", json={**SPEECH, "input": "Warm up."})).status_code == 200
        engine.stall()
        assert (await http.post("/v1/audio/speech", json=SPEECH)).status_code == 503
        assert (await http.get("/health")).json()["engine_state"] == "stalled"
        assert (await http.get("/ready")).status_code == 503
        await asyncio.sleep(3)  # probes fail while the engine stays stalled
        assert (await http.get("/ready")).status_code == 503
        refused = await http.post("/v1/audio/speech", json={**SPEECH, "input": "Still stalled?"})
        assert refused.status_code == 503
        engine.recover()
        await _wait_ready(http)  # a probe generation succeeded
        assert (await http.get("/health")).json()["engine_state"] == "ready"
        again = await http.post("/v1/audio/speech", json={**SPEECH, "input": "Back again."})
        assert again.status_code == 200 and again.headers["x-cache"] == "MISS"


async def test_a_blocked_event_loop_is_not_an_engine_stall(tiny_model: Path, tmp_path: Path) -> None:
    engine = FaultInjectingEngine(ReferenceEngine(str(tiny_model), device="cpu"))
    async with running(tiny_model, tmp_path, engine=engine, engine_stall_s=0.5) as (app, http):
        assert (await http.post("/v1/audio/speech", json={**SPEECH, "input": "Warm up."})).status_code == 200
        engine.pace(0.3)  # each chunk needs the event loop, as nano-vllm's do
        request = asyncio.create_task(http.post("/v1/audio/speech", json={**SPEECH, "input": "Blocked."}))
        while app.state.speech.admission.generating < 1:
            await asyncio.sleep(0.01)
        time.sleep(2.0)  # noqa: ASYNC251 - the point: the event loop blocked 4x engine_stall_s
        response = await request
        assert response.status_code == 200, response.text
        health = (await http.get("/health")).json()
        assert health["engine_state"] == "ready" and health["ready"] is True
