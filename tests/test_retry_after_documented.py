"""`Retry-After` values docs/api.md gives that had no test (issue 30): 503 `engine_unavailable` says 5 s, for
a dead engine and for a stalled one. (429 `rate_limit_exceeded`'s 1 s is in test_serving.py, the job quota's
60 s in test_jobs_documented.py.) The real engine on the tiny checkpoint behind the fault-injecting stand-in
of tests/faults.py."""

from __future__ import annotations

from pathlib import Path

from tests.faults import FaultInjectingEngine
from tests.test_serving import SPEECH, running
from voxport.engine.reference import ReferenceEngine


async def test_a_dead_engine_says_retry_after_5(tiny_model: Path, tmp_path: Path) -> None:
    engine = FaultInjectingEngine(ReferenceEngine(str(tiny_model), device="cpu"))
    async with running(tiny_model, tmp_path, engine=engine) as (_, http):
        assert (await http.post("/v1/audio/speech", json={**SPEECH, "max_length": 2})).status_code == 200
        engine.kill()
        refused = await http.post("/v1/audio/speech", json={**SPEECH, "input": "Anyone there?"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_unavailable"
        assert refused.headers["retry-after"] == "5"


async def test_a_stalled_engine_says_retry_after_5(tiny_model: Path, tmp_path: Path) -> None:
    engine = FaultInjectingEngine(ReferenceEngine(str(tiny_model), device="cpu"))
    async with running(tiny_model, tmp_path, engine=engine, engine_stall_s=0.3) as (_, http):
        assert (await http.post("/v1/audio/speech", json={**SPEECH, "input": "Warm up."})).status_code == 200
        engine.stall()
        assert (await http.post("/v1/audio/speech", json=SPEECH)).status_code == 503
        refused = await http.post("/v1/audio/speech", json={**SPEECH, "input": "Next."})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_unavailable"
        assert refused.headers["retry-after"] == "5"
