"""Continuity on the speech socket: each segment after a context's first reaches the engine as a
continuation of the previous one (its text and its audio as the prompt). The engine is the real one,
wrapped in a named recording stand-in that notes each request and the audio it gave back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import TEST_MAX_LENGTH, make_settings
from voxport.app import create_app
from voxport.engine.base import GenerationStats, SynthesisRequest
from voxport.engine.reference import ReferenceEngine
from voxport.engine.sim import SimEngine


class RecordingEngine:
    """The real engine, unchanged, plus a record of every request it was given and the samples it made."""

    def __init__(self, engine):
        self._engine = engine
        self.requests: list[SynthesisRequest] = []
        self.made: list[list[np.ndarray]] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @property
    def info(self):
        return self._engine.info

    @property
    def ready(self):
        return self._engine.ready

    @property
    def capacity(self):
        return self._engine.capacity

    async def start(self) -> None:
        await self._engine.start()
        self.requests.clear()  # the warm-ups are not ours
        self.made.clear()

    def generate(self, request: SynthesisRequest, stats: GenerationStats | None = None):
        self.requests.append(request)
        made: list[np.ndarray] = []
        self.made.append(made)

        async def counted():
            async for chunk in self._engine.generate(request, stats):
                made.append(chunk.copy())
                yield chunk

        return counted()


def _speak(app, text: str) -> list[dict]:
    events = []
    with TestClient(app) as client, client.websocket_connect("/v1/audio/speech/ws") as ws:
        ws.send_text(json.dumps({"context_id": "c", "text": text, "response_format": "pcm", "seed": 3}))
        ws.send_text(json.dumps({"context_id": "c", "close": True}))
        while not events or events[-1]["type"] not in ("done", "error"):
            events.append(json.loads(ws.receive_text()))
    return events


@pytest.mark.parametrize("kind", ["reference", "sim"])
def test_each_segment_is_generated_as_a_continuation_of_the_previous(
    kind: str, tiny_model: Path, tmp_path: Path
) -> None:
    real = ReferenceEngine(str(tiny_model), cpu_threads=1) if kind == "reference" else SimEngine()
    engine = RecordingEngine(real)
    settings = make_settings(tiny_model, tmp_path, engine=kind, cache_ttl_minutes=0)
    events = _speak(create_app(settings, engine=engine), "First part here. Second part here. Third.")
    assert events[-1]["type"] == "done", events[-1]
    segments = [e for e in events if e["type"] == "segment"]
    assert [s["text"] for s in segments] == ["First part here.", "Second part here.", "Third."]
    requests = engine.requests[-3:]  # before them: the voice's design clip, made when the context opened
    assert [r.text.rsplit(")", 1)[-1] for r in requests] == [
        "First part here.",
        "Second part here.",
        "Third.",
    ]
    assert requests[0].continuation is None
    for previous, current, made in zip(requests, requests[1:], engine.made[-3:], strict=False):
        assert current.continuation is not None
        assert current.continuation.text == previous.text  # what the model read for the previous one
        # Its audio is the audio the previous generation made, sample for sample.
        assert len(current.continuation.audio) == TEST_MAX_LENGTH * real.info.samples_per_step
        assert np.array_equal(current.continuation.audio, np.concatenate(made))
    assert [s["continued"] for s in segments] == [False, True, True]


def test_a_context_refused_at_admission_gets_the_429_envelope(tiny_model: Path, tmp_path: Path) -> None:
    """Contexts go through the same admission as HTTP requests: one slot, no queue, and the second context
    asks while the first is generating."""
    settings = make_settings(tiny_model, tmp_path, max_length=400, max_concurrent=1, max_queue=0)
    app = create_app(settings, engine=ReferenceEngine(str(tiny_model), cpu_threads=1))
    with TestClient(app) as client, client.websocket_connect("/v1/audio/speech/ws") as ws:
        ws.send_text(json.dumps({"context_id": "long", "text": "word " * 25 + "end.", "max_length": 400,
                                 "response_format": "pcm", "close": True}))  # fmt: skip
        while json.loads(ws.receive_text())["type"] != "audio":
            pass
        ws.send_text(json.dumps({"context_id": "late", "text": "Refused.", "close": True}))
        while (event := json.loads(ws.receive_text()))["context_id"] != "late":
            pass
        assert event["type"] == "error"
        assert event["error"]["type"] == "requests" and event["error"]["code"] == "rate_limit_exceeded"
        ws.send_text(json.dumps({"context_id": "long", "cancel": True}))
        while (event := json.loads(ws.receive_text()))["type"] != "cancelled":
            pass
