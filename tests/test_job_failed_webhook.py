"""`speech.job.failed` end to end (docs/jobs.md, issue 30): a job the engine refuses fails with OpenAI's
error object, and its webhook_url receives one signed `speech.job.failed` event carrying the failed job.
The real engine on the tiny checkpoint behind `RefusingEngine`, a named fault-injection stand-in that
refuses, as the engine refuses input it cannot generate, any text holding a marker; the webhook goes to a
real receiver on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from tests.conftest import make_settings
from tests.faults import FaultInjectingEngine
from tests.waiting import until
from tests.webhook_receiver import Receiver
from voxport.app import create_app
from voxport.engine.base import EngineInputError
from voxport.engine.reference import ReferenceEngine

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MARKER = "Unspeakable"


class RefusingEngine(FaultInjectingEngine):
    async def generate(self, request, stats=None):
        if MARKER in request.text:
            raise EngineInputError("the engine cannot speak this text", param="input")
        async for chunk in super().generate(request, stats):
            yield chunk


async def test_a_failed_job_sends_one_signed_speech_job_failed(tiny_model: Path, tmp_path: Path) -> None:
    engine = RefusingEngine(ReferenceEngine(str(tiny_model), device="cpu"))
    settings = make_settings(tiny_model, tmp_path, webhook_secret=SECRET, webhook_allow_hosts=["127.0.0.1"])
    application = create_app(settings, engine=engine)
    with Receiver() as receiver:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://voxport.test", timeout=60
            ) as http:
                body = {"model": "tts-1", "voice": "alloy", "input": f"{MARKER} words.",
                        "response_format": "wav", "webhook_url": receiver.url}  # fmt: skip
                submitted = await http.post("/v1/audio/speech/jobs", json=body)
                assert submitted.status_code == 202, submitted.text
                job_id = submitted.json()["id"]
                await until(receiver.accepted, "the speech.job.failed webhook", timeout=120, every=0.05)
                job = (await http.get(f"/v1/audio/speech/jobs/{job_id}")).json()
        assert job["status"] == "failed" and job["result"] is None
        assert job["error"]["param"] == "input" and "cannot speak" in job["error"]["message"]
        (delivery,) = receiver.accepted()
        event = Webhook(SECRET).verify(delivery.body, delivery.headers)
        assert event["type"] == "speech.job.failed"
        assert event["data"]["id"] == job_id and event["data"]["status"] == "failed"
        assert event["data"]["error"] == job["error"]
        assert json.loads(delivery.body)["type"] == "speech.job.failed"
