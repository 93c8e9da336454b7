"""Serving under load: the audio cache, admission control, failures, health, metrics, keys, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.asgi_driver import ASGIRequest
from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, ServerProcess, make_settings
from tests.faults import FaultInjectingEngine
from tests.waiting import until
from voxport.app import create_app
from voxport.config import DEFAULT_VOICES_FILE
from voxport.engine.reference import ReferenceEngine

# The buffered form: these tests are about the whole-file path (its deadline, its cache entry).
SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Cache me if you can.", "response_format": "wav",
          "stream": False}  # fmt: skip


@asynccontextmanager
async def running(tiny_model: Path, data_dir: Path, engine=None, client=("127.0.0.1", 40000), **overrides):
    app = create_app(make_settings(tiny_model, data_dir, **overrides), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://voxport.test", timeout=60) as http:
            yield app, http


def cache_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "cache").rglob("*") if p.is_file())


# -- the audio cache ------------------------------------------------------------------------------


async def test_miss_then_hit_with_identical_bytes(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (app, http):
        first = await http.post("/v1/audio/speech", json=SPEECH)
        steps = app.state.speech.engine.steps_generated
        second = await http.post("/v1/audio/speech", json=SPEECH)
        assert (first.headers["x-cache"], first.headers["x-route"]) == ("MISS", "HOT")
        assert (second.headers["x-cache"], second.headers["x-route"]) == ("HIT", "CACHE")
        assert second.content == first.content
        assert second.headers["x-audio-duration"] == first.headers["x-audio-duration"]
        assert app.state.speech.engine.steps_generated == steps  # no synthesis for the hit
        assert len(cache_files(tmp_path)) == 1


async def test_a_hit_needs_no_tokenizer_no_voice_prompt_and_no_engine(
    tiny_model: Path, tmp_path: Path
) -> None:
    async with running(tiny_model, tmp_path) as (app, http):
        speech = app.state.speech
        first = await http.post("/v1/audio/speech", json=SPEECH)
        assert first.headers["x-cache"] == "MISS"

        def untouchable(*_args, **_kwargs):
            raise AssertionError("a cache hit reached model-side work")

        engine, voices = speech.engine, speech.voices
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(engine, "count_tokens", untouchable)
            patch.setattr(engine, "generate", untouchable)
            patch.setattr(voices, "prompt", untouchable)
            second = await http.post("/v1/audio/speech", json=SPEECH)
        assert second.headers["x-cache"] == "HIT" and second.content == first.content


@pytest.mark.parametrize(
    ("body_extra", "headers"),
    [({"cache": False}, {}), ({}, {"Cache-Control": "no-cache"}), ({}, {"Cache-Control": "no-store"})],
    ids=["body", "no-cache", "no-store"],
)
async def test_opt_out_reads_and_writes_nothing(
    tiny_model: Path, tmp_path: Path, body_extra, headers
) -> None:
    async with running(tiny_model, tmp_path) as (app, http):
        await http.post("/v1/audio/speech", json=SPEECH)  # a cached entry that an opt-out must not read
        before = [(p, p.stat().st_mtime_ns, p.stat().st_atime_ns) for p in cache_files(tmp_path)]
        hits = app.state.speech.cache.stats.hits
        response = await http.post("/v1/audio/speech", json={**SPEECH, **body_extra}, headers=headers)
        assert response.headers["x-cache"] == "BYPASS"
        other = await http.post(
            "/v1/audio/speech", json={**SPEECH, "input": "Never stored.", **body_extra}, headers=headers
        )
        assert other.headers["x-cache"] == "BYPASS"
        assert [(p, p.stat().st_mtime_ns, p.stat().st_atime_ns) for p in cache_files(tmp_path)] == before
        assert app.state.speech.cache.stats.hits == hits


async def test_disabled_cache(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path, cache_ttl_minutes=0) as (_, http):
        for _ in range(2):
            assert (await http.post("/v1/audio/speech", json=SPEECH)).headers["x-cache"] == "DISABLED"
    assert not (tmp_path / "cache").exists() or cache_files(tmp_path) == []


async def test_single_flight(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (app, http):
        await http.post("/v1/audio/speech", json={**SPEECH, "input": "Warm the voice up."})
        steps = app.state.speech.engine.steps_generated
        responses = await asyncio.gather(*(http.post("/v1/audio/speech", json=SPEECH) for _ in range(6)))
        assert all(r.status_code == 200 for r in responses)
        assert len({r.content for r in responses}) == 1
        assert sorted(r.headers["x-cache"] for r in responses) == ["HIT"] * 5 + ["MISS"]
        assert app.state.speech.engine.steps_generated - steps == 12


async def test_crash_leftovers_and_corrupt_entries_are_never_served(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        good = await http.post("/v1/audio/speech", json=SPEECH)
        other = {**SPEECH, "input": "A second entry."}
        await http.post("/v1/audio/speech", json=other)
    entries = cache_files(tmp_path)
    assert len(entries) == 2
    # A write killed before its rename leaves a temp file; another entry is cut short on disk.
    leftover = entries[0].parent / ".tmp-killed"
    leftover.write_bytes(entries[0].read_bytes()[:100])
    truncated = entries[1]
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    async with running(tiny_model, tmp_path) as (app, http):
        assert not leftover.exists()  # swept at start-up
        responses = [await http.post("/v1/audio/speech", json=b) for b in (SPEECH, other)]
        states = {r.headers["x-cache"] for r in responses}
        assert states == {"HIT", "MISS"}  # the intact entry is served, the truncated one is not
        assert app.state.speech.cache.stats.corrupt == 1
        for response in responses:
            assert decode(response.content, "wav").duration == pytest.approx(12 * STEP_SECONDS, abs=1e-3)
        assert responses[0].content == good.content


async def test_ttl_expiry(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path, cache_ttl_minutes=60) as (_, http):
        await http.post("/v1/audio/speech", json=SPEECH)
    (entry,) = cache_files(tmp_path)
    two_hours_ago = time.time() - 7200
    os.utime(entry, (two_hours_ago, two_hours_ago))
    async with running(tiny_model, tmp_path, cache_ttl_minutes=60) as (_, http):
        assert (await http.post("/v1/audio/speech", json=SPEECH)).headers["x-cache"] == "MISS"
        assert (await http.post("/v1/audio/speech", json=SPEECH)).headers["x-cache"] == "HIT"


async def test_size_cap_evicts_least_recently_used(tiny_model: Path, tmp_path: Path) -> None:
    # 1.92 s of 8 kHz s16 wav is ~30 KiB: two entries fit under 70 KiB, three do not.
    small = {**SPEECH, "sample_rate": 8000}
    a, b, c = ({**small, "input": f"Entry {name}."} for name in "ABC")
    async with running(tiny_model, tmp_path, cache_max_mb=70 / 1024) as (app, http):
        for body in (a, b):
            assert (await http.post("/v1/audio/speech", json=body)).headers["x-cache"] == "MISS"
        assert (await http.post("/v1/audio/speech", json=a)).headers["x-cache"] == "HIT"  # A is now recent
        assert (await http.post("/v1/audio/speech", json=c)).headers["x-cache"] == "MISS"  # evicts B
        assert app.state.speech.cache.stats.evictions == 1
        assert (await http.post("/v1/audio/speech", json=a)).headers["x-cache"] == "HIT"
        assert (await http.post("/v1/audio/speech", json=b)).headers["x-cache"] == "MISS"


async def test_cache_survives_restart_and_a_changed_voice_invalidates(
    tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with running(tiny_model, data) as (_, http):
        original = await http.post("/v1/audio/speech", json=SPEECH)
    async with running(tiny_model, data) as (_, http):
        again = await http.post("/v1/audio/speech", json=SPEECH)
        assert again.headers["x-cache"] == "HIT" and again.content == original.content
    voices = json.loads(DEFAULT_VOICES_FILE.read_text())
    for voice in voices["voices"]:
        if voice["id"] == "alloy":
            voice["description"] = "a completely different voice"
    changed = tmp_path / "voices.json"
    changed.write_text(json.dumps(voices))
    async with running(tiny_model, data, voices_file=changed) as (_, http):
        assert (await http.post("/v1/audio/speech", json=SPEECH)).headers["x-cache"] == "MISS"


async def test_streams_fill_the_cache_once_complete(tiny_model: Path, tmp_path: Path) -> None:
    body = {**SPEECH, "response_format": "mp3"}
    async with running(tiny_model, tmp_path) as (_, http):
        first = await http.post("/v1/audio/speech/stream", json=body)
        second = await http.post("/v1/audio/speech/stream", json=body)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert second.content == first.content
        buffered = await http.post("/v1/audio/speech", json=body)
        assert buffered.headers["x-cache"] == "MISS"  # streamed and buffered bodies are different entries


# -- admission, deadlines and failures ------------------------------------------------------------


async def test_full_server_answers_429_at_once(tiny_model: Path, tmp_path: Path) -> None:
    slow = {**SPEECH, "max_length": 200, "cache": False}
    async with running(tiny_model, tmp_path, max_length=200, max_concurrent=1, max_queue=1) as (app, http):
        speech = app.state.speech
        first = ASGIRequest(app, "/v1/audio/speech", slow)
        await until(lambda: speech.admission.generating >= 1, "the first request to generate")
        second = ASGIRequest(app, "/v1/audio/speech", slow)
        await until(lambda: speech.admission.queued >= 1, "the second request to queue")
        refused = await http.post("/v1/audio/speech", json=slow)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "x-should-retry" not in refused.headers  # the SDK may retry a 429 after Retry-After
        speech.tickets.cancel(first.scope["state"]["request_id"])
        speech.tickets.cancel(second.scope["state"]["request_id"])
        for request in (first, second):
            await request.finish()
        assert (speech.admission.generating, speech.admission.queued, speech.tickets.in_flight) == (0, 0, 0)


async def test_deadline_answers_504(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path, max_length=2048, request_timeout_s=0.3) as (app, http):
        response = await http.post("/v1/audio/speech", json={**SPEECH, "max_length": 2048, "cache": False})
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        assert app.state.speech.tickets.in_flight == 0
        ok = await http.post("/v1/audio/speech", json={**SPEECH, "max_length": 1})
        assert ok.status_code == 200


async def test_dead_engine_fails_fast_with_503(tiny_model: Path, tmp_path: Path) -> None:
    engine = FaultInjectingEngine(ReferenceEngine(str(tiny_model), device="cpu"))
    async with running(tiny_model, tmp_path, engine=engine, max_length=200) as (app, http):
        assert (await http.get("/ready")).status_code == 200
        short = {**SPEECH, "max_length": 2}
        assert (await http.post("/v1/audio/speech", json=short)).headers["x-cache"] == "MISS"
        in_flight = asyncio.create_task(http.post("/v1/audio/speech", json={**SPEECH, "max_length": 200}))
        await until(lambda: app.state.speech.admission.generating >= 1, "the request to generate")
        engine.kill()
        assert (await in_flight).status_code == 503
        after = await http.post("/v1/audio/speech", json={**SPEECH, "input": "Anyone there?"})
        assert after.status_code == 503 and after.json()["error"]["code"] == "engine_unavailable"
        health = (await http.get("/health")).json()
        assert health["ready"] is False and health["engine_state"] == "unavailable"
        assert health["routing"]["accepts_requests"] is False
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        # Cached answers are still served: they need no engine.
        assert (await http.post("/v1/audio/speech", json=short)).headers["x-cache"] == "HIT"


async def test_stalled_engine_turns_into_503_not_a_hang(tiny_model: Path, tmp_path: Path) -> None:
    engine = FaultInjectingEngine(ReferenceEngine(str(tiny_model), device="cpu"))
    async with running(tiny_model, tmp_path, engine=engine, engine_stall_s=0.3) as (_, http):
        assert (await http.post("/v1/audio/speech", json={**SPEECH, "input": "Warm up."})).status_code == 200
        engine.stall()
        response = await http.post("/v1/audio/speech", json=SPEECH)
        assert response.status_code == 503
        assert (await http.get("/health")).json()["engine_state"] == "stalled"
        assert (await http.get("/ready")).status_code == 503
        refused = await http.post("/v1/audio/speech", json={**SPEECH, "input": "Next."})
        assert refused.status_code == 503


# -- health, metrics, keys, CORS ---------------------------------------------------------------------


async def test_health_reports_load_and_cache(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        await http.post("/v1/audio/speech", json=SPEECH)
        await http.post("/v1/audio/speech", json=SPEECH)
        health = (await http.get("/health")).json()
        assert health["engine_state"] == "ready" and health["ready"] is True
        assert health["cache"]["enabled"] is True and health["cache"]["entries"] == 1
        assert (health["cache"]["hits"], health["cache"]["misses"]) == (1, 1)
        assert health["routing"] == {"load_score": 0.0, "accepts_requests": True}
        assert health["requests_queued"] == 0 and health["rss_bytes"] > 0
        # The reference engine runs one generation at a time; admission is sized from that.
        assert health["capacity"] == {"engine_batch": 1, "max_concurrent": 8, "max_queue": 32}
        assert (await http.get("/ready")).json() == {"ready": True}


async def test_metrics_scrape_accounts_for_requests(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        for _ in range(3):
            await http.post("/v1/audio/speech", json=SPEECH)
        await http.post("/v1/audio/speech", json={**SPEECH, "speed": 9})
        text = (await http.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    speech_route = ("route", "/v1/audio/speech")
    assert samples[("voxport_requests_total", (speech_route, ("status", "200")))] == 3
    assert samples[("voxport_requests_total", (speech_route, ("status", "400")))] == 1
    assert samples[("voxport_cache_lookups_total", (("state", "HIT"),))] == 2
    assert samples[("voxport_cache_lookups_total", (("state", "MISS"),))] == 1
    assert samples[("voxport_first_audio_seconds_count", ())] == 1
    assert samples[("voxport_audio_seconds_total", ())] == pytest.approx(12 * STEP_SECONDS)
    assert samples[("voxport_engine_ready", ())] == 1
    assert samples[("voxport_cache_entries", ())] == 1
    assert samples[("voxport_requests_generating", ())] == 0
    assert samples[("voxport_capacity", (("limit", "engine_batch"),))] == 1
    assert samples[("voxport_capacity", (("limit", "max_queue"),))] == 32


async def test_api_keys(tiny_model: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nsecond-key\n")
    async with running(tiny_model, tmp_path, api_keys="first-key", api_keys_file=keys) as (_, http):
        missing = await http.get("/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        wrong = await http.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        for key in ("first-key", "second-key"):
            assert (
                await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            ).status_code == 200
        for open_path in ("/health", "/ready", "/metrics"):
            assert (await http.get(open_path)).status_code == 200
        sdk = openai.AsyncOpenAI(
            api_key="second-key", base_url="http://voxport.test/v1", http_client=http, max_retries=0
        )
        assert (
            await sdk.audio.speech.create(model="tts-1", voice="alloy", input="Keyed.", response_format="pcm")
        ).content
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(
                api_key="bad", base_url="http://voxport.test/v1", http_client=http, max_retries=0
            ).models.list()
    async with running(tiny_model, tmp_path, api_keys="k", metrics_require_key=True) as (_, http):
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Bearer k"})).status_code == 200


async def test_without_keys_everything_is_open(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/models")).status_code == 200


async def test_admin_routes(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):  # no admin key: loopback only
        await http.post("/v1/audio/speech", json=SPEECH)
        assert (await http.post("/admin/cache/clear")).json() == {"removed": 1}
    async with running(tiny_model, tmp_path, client=("203.0.113.7", 5000)) as (_, http):
        refused = await http.post("/admin/cache/clear")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    async with running(
        tiny_model, tmp_path, api_keys="user", admin_api_key="root", client=("203.0.113.7", 5000)
    ) as (
        _,
        http,
    ):
        assert (
            await http.post("/admin/cache/clear", headers={"Authorization": "Bearer user"})
        ).status_code == 401
        assert (
            await http.post("/admin/cache/clear", headers={"Authorization": "Bearer root"})
        ).status_code == 200


async def test_cors(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path, cors_allow_origins="https://app.example") as (_, http):
        preflight = await http.options(
            "/v1/audio/speech",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        response = await http.post("/v1/audio/speech", json=SPEECH, headers={"Origin": "https://app.example"})
        assert "x-cache" in response.headers["access-control-expose-headers"].lower()
    async with running(tiny_model, tmp_path) as (_, http):
        response = await http.get("/health", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers


# -- a real server: a burst, and SIGTERM ------------------------------------------------------------


def test_burst_is_answered_200_or_429_and_metrics_account_for_it(tiny_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(
        ["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length", "4",
         "--max-concurrent", "4", "--max-queue", "8"]
    )  # fmt: skip
    try:
        server.wait_ready()

        async def burst() -> list[httpx.Response]:
            limit = asyncio.Semaphore(32)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:

                async def one(i: int) -> httpx.Response:
                    # Buffered: identical requests in flight share one synthesis (streams do not).
                    body = {"model": "tts-1", "input": f"Sentence {i % 20}.", "response_format": "pcm",
                            "stream": False}  # fmt: skip
                    async with limit:
                        return await http.post("/v1/audio/speech", json=body)

                return await asyncio.gather(*(one(i) for i in range(200)))

        responses = asyncio.run(burst())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}
        assert statuses.count(200) >= 20
        assert any(r.headers.get("x-cache") == "HIT" for r in responses)
        text = httpx.get(f"{server.base_url}/metrics").text
        counted = {
            s.labels["status"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "voxport_requests_total" and s.labels["route"] == "/v1/audio/speech"
        }
        assert counted == {str(code): float(statuses.count(code)) for code in set(statuses)}
        assert sum(counted.values()) == 200
    finally:
        server.stop()


def test_sigterm_drains_a_running_request(tiny_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length", "120"])
    server.wait_ready()
    result: dict = {}

    def request() -> None:
        body = {"model": "tts-1", "input": "Finish me before you go.", "response_format": "wav"}
        result["response"] = httpx.post(f"{server.base_url}/v1/audio/speech", json=body, timeout=120)

    worker = threading.Thread(target=request)
    worker.start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.base_url}/health").json()["requests_in_flight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    worker.join(120)
    server.proc.wait(timeout=60)
    output = server.output()  # the server logs to a file (ServerProcess), not a pipe
    assert server.proc.returncode == 0, output  # a stop that was asked for and completed
    assert "Traceback" not in output and "Exception in ASGI application" not in output
    assert "Application shutdown complete" in output
    response = result["response"]
    assert response.status_code == 200
    assert decode(response.content, "wav").duration == pytest.approx(120 * STEP_SECONDS, abs=1e-3)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/health")


def test_request_text_is_not_logged_by_default(tiny_model: Path, tmp_path: Path) -> None:
    secret = "Zebra crossing at midnight."
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length", "2"])
    try:
        server.wait_ready()
        assert (
            httpx.post(f"{server.base_url}/v1/audio/speech", json={**SPEECH, "input": secret}).status_code
            == 200
        )
    finally:
        output = server.stop()
    assert secret not in output and "Zebra" not in output
    assert "route=/v1/audio/speech status=200" in output and "cache=MISS" in output


def test_a_stream_cut_at_the_grace_limit_ends_cleanly(tiny_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length", "2048",
                            "--shutdown-grace-s", "1"])  # fmt: skip
    server.wait_ready()
    body = {"model": "tts-1", "input": "Longer than the grace period.", "response_format": "pcm"}
    received = 0
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech", json=body, timeout=120) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        received += len(next(chunks))
        server.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(httpx.HTTPError):  # the body is cut short: the client may see either
            received += sum(len(c) for c in chunks)
    server.proc.wait(timeout=60)
    output = server.output()
    assert server.proc.returncode == 0, output
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
    assert 0 < received < 2048 * 7680 // 2  # some audio, not the whole of it
