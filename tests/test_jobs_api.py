"""Speech jobs and batches through a real server process (`--engine sim`: many segments, fast) and a real
webhook receiver on loopback. The audio itself is checked on the reference engine in
test_jobs_resume.py."""

from __future__ import annotations

import io
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.audio_check import decode
from tests.conftest import TEST_WORKERS, ServerProcess
from tests.webhook_receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {"model": "tts-1", "voice": "alloy", "response_format": "wav", "seed": 7}


def sim_server(data: Path, *extra: str) -> ServerProcess:
    # max_concurrent 2: one job runs at a time (the other slot is the live reserve), so jobs queue.
    return ServerProcess(["--engine", "sim", "--data-dir", str(data), "--max-length", "12",
                          "--sim-step-ms", "1", "--max-concurrent", "2", "--webhook-secret", SECRET,
                          "--webhook-retry-s", "300", "--workers", TEST_WORKERS, *extra])  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = sim_server(tmp_path_factory.mktemp("jobs-data"), "--webhook-allow-hosts", "127.0.0.1")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def long_text(chars: int) -> str:
    out, i = [], 0
    while sum(map(len, out)) + len(out) < chars:
        out.append(f"This is sentence number {i}, spoken by the job runner.")
        i += 1
    return " ".join(out)[:chars]


def wait_for(api: httpx.Client, job_id: str, until=lambda j: j["status"] not in ("queued", "running"),
             timeout: float = 300) -> dict:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/audio/speech/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.05)
    raise TimeoutError(job)


def wait_until(predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError


def test_submit_poll_content(api: httpx.Client) -> None:
    r = api.post("/v1/audio/speech/jobs", json={**BODY, "input": "Hello there. A second sentence.",
                                                "metadata": {"project": "demo"}})  # fmt: skip
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["object"] == "speech.job" and job["id"].startswith("speechjob_") and job["status"] == "queued"
    assert job["error"] is None and job["result"] is None and job["metadata"] == {"project": "demo"}
    done = wait_for(api, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["segments_done"] == done["progress"]["segments_total"] >= 1
    assert done["started_at"] is not None and done["finished_at"] is not None
    content = api.get(f"/v1/audio/speech/jobs/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "audio/wav"
    assert len(content.content) == done["result"]["bytes"]
    with wave.open(io.BytesIO(content.content)) as w:
        assert abs(w.getnframes() / w.getframerate() - done["result"]["duration_seconds"]) < 0.01
    part = api.get(f"/v1/audio/speech/jobs/{job['id']}/content", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == content.content[4:12]
    size = len(content.content)
    for bad, status, code in (
        (f"bytes={size + 10}-", 416, "range_not_satisfiable"),
        ("pages=1-2", 400, "invalid_range"),
    ):
        refused = api.get(f"/v1/audio/speech/jobs/{job['id']}/content", headers={"Range": bad})
        assert refused.status_code == status and refused.json()["error"]["code"] == code, refused.text
    assert refused.json()["error"]["param"] == "Range"
    listed = api.get("/v1/audio/speech/jobs", params={"limit": 1}).json()
    assert listed["object"] == "list" and listed["first_id"] == job["id"] == listed["data"][0]["id"]


def test_fifty_thousand_characters_complete_with_progress(api: httpx.Client, server: ServerProcess) -> None:
    text = long_text(50_000)
    job = api.post("/v1/audio/speech/jobs", json={**BODY, "input": text}).json()
    seen: list[int] = []

    def progressed(j: dict) -> bool:
        seen.append(j["progress"]["segments_done"])
        return j["status"] not in ("queued", "running")

    done = wait_for(api, job["id"], progressed)
    progress = done["progress"]
    assert done["status"] == "succeeded", done
    assert progress["segments_total"] >= 50_000 // 300
    assert progress["segments_done"] == progress["segments_total"]
    assert seen == sorted(seen)  # progress only moves forward
    # Progress counts each segment whole; the joined audio overlaps each join by the 10 ms cross-fade.
    joins = progress["segments_total"] - 1
    assert abs(progress["audio_seconds"] - joins * 0.01 - done["result"]["duration_seconds"]) < 0.05
    metrics = api.get("/metrics").text
    assert "voxport_job_segments_total" in metrics and 'voxport_jobs{status="succeeded"}' in metrics


def test_idempotent_resubmit_returns_the_same_job(api: httpx.Client) -> None:
    body = {**BODY, "input": "Said once."}
    first = api.post("/v1/audio/speech/jobs", json=body, headers={"Idempotency-Key": "abc-1"}).json()
    again = api.post("/v1/audio/speech/jobs", json=body, headers={"Idempotency-Key": "abc-1"}).json()
    other = api.post("/v1/audio/speech/jobs", json=body, headers={"Idempotency-Key": "abc-2"}).json()
    assert first["id"] == again["id"] != other["id"]


def test_a_live_request_is_served_while_a_job_runs(api: httpx.Client) -> None:
    job = api.post("/v1/audio/speech/jobs", json={**BODY, "input": long_text(30_000)}).json()
    wait_for(api, job["id"], lambda j: j["progress"]["segments_done"] >= 1)
    live = api.post("/v1/audio/speech", json={**BODY, "input": "Not behind the job.", "cache": False})
    assert live.status_code == 200 and live.content[:4] == b"RIFF"
    during = api.get(f"/v1/audio/speech/jobs/{job['id']}").json()
    assert during["status"] == "running"  # the live request did not wait for the job to finish
    api.post(f"/v1/audio/speech/jobs/{job['id']}/cancel")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_cancel_while_running_and_while_queued(api: httpx.Client, receiver: Receiver) -> None:
    running = api.post("/v1/audio/speech/jobs", json={**BODY, "input": long_text(20_000),
                                                      "webhook_url": receiver.url}).json()  # fmt: skip
    queued = api.post("/v1/audio/speech/jobs", json={**BODY, "input": "Never spoken."}).json()
    wait_for(api, running["id"], lambda j: j["progress"]["segments_done"] >= 1)
    r = api.post(f"/v1/audio/speech/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = api.post(f"/v1/audio/speech/jobs/{running['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    stopped = r.json()["progress"]["segments_done"]
    assert stopped < r.json()["progress"]["segments_total"]
    # One job runs at a time here: a job submitted now finishing shows the cancelled one let go of it.
    follower = api.post("/v1/audio/speech/jobs", json={**BODY, "input": "After the cancel."}).json()
    assert wait_for(api, follower["id"])["status"] == "succeeded"
    after = api.get(f"/v1/audio/speech/jobs/{running['id']}").json()
    assert after["status"] == "cancelled" and after["progress"]["segments_done"] <= stopped + 1
    never = api.get(f"/v1/audio/speech/jobs/{queued['id']}").json()
    assert never["status"] == "cancelled" and never["started_at"] is None
    assert api.get(f"/v1/audio/speech/jobs/{running['id']}/content").status_code == 409
    got = wait_until(lambda: receiver.accepted())
    assert Webhook(SECRET).verify(got[0].body, got[0].headers)["type"] == "speech.job.cancelled"
    assert api.post(f"/v1/audio/speech/jobs/{running['id']}/cancel").json()["status"] == "cancelled"
    deleted = api.delete(f"/v1/audio/speech/jobs/{running['id']}")
    assert deleted.json() == {"id": running["id"], "object": "speech.job.deleted", "deleted": True}
    assert api.get(f"/v1/audio/speech/jobs/{running['id']}").status_code == 404


def _webhook_types(receiver: Receiver) -> list[str]:
    """Each accepted delivery's event type (and, for a job's, the job id), in arrival order."""
    events = [Webhook(SECRET).verify(r.body, r.headers) for r in receiver.accepted()]
    return [
        e["type"] + (f" {e['data']['id']}" if e["type"].startswith("speech.job.") else "") for e in events
    ]


def test_batch_of_twenty_fires_one_signed_webhook(api: httpx.Client) -> None:
    with Receiver() as receiver:
        requests = [{**BODY, "input": f"Batch item {i}."} for i in range(20)]
        r = api.post("/v1/audio/speech/batches", json={"requests": requests, "webhook_url": receiver.url,
                                                        "metadata": {"k": "v"}})  # fmt: skip
        assert r.status_code == 202, r.text
        batch = r.json()
        assert batch["object"] == "speech.batch" and len(batch["job_ids"]) == 20
        assert batch["request_counts"]["total"] == 20
        got = wait_until(lambda: receiver.accepted())
        # A later event to the same receiver, instead of a pause: deliveries go out in the order they fall
        # due, so a second delivery of the batch's event (due when the batch finished) would come first.
        later = api.post(
            "/v1/audio/speech/jobs", json={**BODY, "input": "Later.", "webhook_url": receiver.url}
        )
        wait_until(lambda: len(receiver.accepted()) >= 2)
        assert _webhook_types(receiver) == [
            "speech.batch.completed",
            f"speech.job.succeeded {later.json()['id']}",
        ]
        event = Webhook(SECRET).verify(got[0].body, got[0].headers)
        assert event["type"] == "speech.batch.completed" and event["data"]["id"] == batch["id"]
        assert event["data"]["request_counts"]["succeeded"] == 20
    final = api.get(f"/v1/audio/speech/batches/{batch['id']}").json()
    assert final["status"] == "completed" and final["job_ids"] == batch["job_ids"]
    for job_id in final["job_ids"][:3]:
        assert api.get(f"/v1/audio/speech/jobs/{job_id}").json()["batch_id"] == batch["id"]


def test_failing_receiver_is_retried(api: httpx.Client) -> None:
    with Receiver(fail_first=2) as receiver:
        job = api.post("/v1/audio/speech/jobs", json={**BODY, "input": "Retry me.",
                                                      "webhook_url": receiver.url}).json()  # fmt: skip
        got = wait_until(lambda: receiver.accepted(), timeout=60)
        assert [r.status for r in receiver.received] == [500, 500, 204]
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
        event = Webhook(SECRET).verify(got[0].body, got[0].headers)
        assert event["type"] == "speech.job.succeeded" and event["data"]["id"] == job["id"]
    metrics = api.get("/metrics").text
    assert 'voxport_webhook_deliveries_total{outcome="retry"} 2.0' in metrics


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x",
            "ftp://example.com/x", "http://127.0.0.2/x"],
)  # fmt: skip
def test_private_webhook_address_is_refused_at_submission(api: httpx.Client, url: str) -> None:
    r = api.post("/v1/audio/speech/jobs", json={**BODY, "input": "x", "webhook_url": url})
    assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url", r.text
    r = api.post("/v1/audio/speech/batches", json={"requests": [{**BODY, "input": "x"}], "webhook_url": url})
    assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**BODY, "input": "x", "voice": "nobody"}, "voice"),
        ({**BODY, "input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({**BODY, "input": "x", "metadata": {"k": "v" * 513}}, "metadata"),
        ({**BODY, "input": "x" * 200_001}, "input"),
        ({**BODY, "input": "x", "bogus": 1}, "bogus"),
    ],
)
def test_bad_job_bodies_name_the_field(api: httpx.Client, body: dict, param: str) -> None:
    r = api.post("/v1/audio/speech/jobs", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_bad_batch_names_the_request(api: httpx.Client) -> None:
    requests = [{**BODY, "input": "fine"}, {**BODY, "input": "x", "speed": 9}]
    r = api.post("/v1/audio/speech/batches", json={"requests": requests})
    assert r.status_code == 400 and r.json()["error"]["param"] == "requests[1].speed", r.text


def test_health_reports_the_job_queue(api: httpx.Client) -> None:
    assert set(api.get("/health").json()["jobs"]) == {"queued", "running"}


def test_name_resolving_to_loopback_is_refused_at_delivery(tmp_path: Path) -> None:
    proc = sim_server(tmp_path)  # no allowlist
    try:
        proc.wait_ready()
        with Receiver() as receiver, httpx.Client(base_url=proc.base_url, timeout=30) as api:
            url = f"http://localhost:{receiver.port}/hook"
            r = api.post("/v1/audio/speech/jobs", json={**BODY, "input": "Hi.", "webhook_url": url})
            assert r.status_code == 202  # a name: judged by its addresses when delivered
            assert wait_for(api, r.json()["id"])["status"] == "succeeded"
            wait_until(lambda: 'outcome="refused"} 1.0' in api.get("/metrics").text, timeout=30)
            assert receiver.received == []
    finally:
        proc.stop()


def test_jobs_belong_to_the_key_that_made_them(tmp_path: Path) -> None:
    proc = sim_server(tmp_path, "--api-keys", "key-a,key-b")
    try:
        proc.wait_ready()
        a = httpx.Client(base_url=proc.base_url, headers={"Authorization": "Bearer key-a"}, timeout=30)
        b = httpx.Client(base_url=proc.base_url, headers={"Authorization": "Bearer key-b"}, timeout=30)
        with a, b:
            job = a.post(
                "/v1/audio/speech/jobs", json={**BODY, "input": "Mine."}, headers={"Idempotency-Key": "x"}
            )
            job_id = job.json()["id"]
            assert a.get(f"/v1/audio/speech/jobs/{job_id}").status_code == 200
            assert b.get(f"/v1/audio/speech/jobs/{job_id}").status_code == 404
            assert b.post(f"/v1/audio/speech/jobs/{job_id}/cancel").status_code == 404
            assert b.get("/v1/audio/speech/jobs").json()["data"] == []
            theirs = b.post(
                "/v1/audio/speech/jobs", json={**BODY, "input": "Mine."}, headers={"Idempotency-Key": "x"}
            )
            assert theirs.json()["id"] != job_id  # idempotency keys are per API key too
            assert httpx.get(f"{proc.base_url}/v1/audio/speech/jobs").status_code == 401
    finally:
        proc.stop()


def test_quota_and_result_expiry(tmp_path: Path) -> None:
    proc = sim_server(tmp_path, "--max-queued-jobs-per-key", "1", "--job-result-ttl-hours", "0.0003")
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.base_url, timeout=30) as api:
            first = api.post("/v1/audio/speech/jobs", json={**BODY, "input": long_text(20_000)}).json()
            refused = api.post("/v1/audio/speech/jobs", json={**BODY, "input": "One too many."})
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "job_quota_exceeded"
            done = wait_for(api, first["id"])
            assert done["status"] == "succeeded" and done["expires_at"] is not None
            # About a second later the audio is gone; the job stays, without a result.
            gone = wait_for(api, first["id"], lambda j: j["result"] is None, timeout=60)
            assert gone["status"] == "succeeded"
            assert api.get(f"/v1/audio/speech/jobs/{first['id']}/content").status_code == 404
            assert (
                api.post("/v1/audio/speech/jobs", json={**BODY, "input": "Now there is room."}).status_code
                == 202
            )
    finally:
        proc.stop()


MP3_STARTS = (b"ID3", b"\xff\xfb", b"\xff\xf3")


@pytest.mark.parametrize(("fmt", "content_type", "magic"), [("mp3", "audio/mpeg", MP3_STARTS),
                         ("flac", "audio/flac", (b"fLaC",)), ("pcm", "audio/pcm", None)])  # fmt: skip
def test_other_formats(
    api: httpx.Client, fmt: str, content_type: str, magic: tuple[bytes, ...] | None
) -> None:
    """Each format decodes (pcm: raw 16-bit at 24 kHz, no header), and `speed: 1.5` is applied: the
    same job at speed 1.0 is 1.5 times as long."""
    durations = {}
    for speed in (1.0, 1.5):
        body = {**BODY, "response_format": fmt, "speed": speed, "input": "One sentence. And another one."}
        job = api.post("/v1/audio/speech/jobs", json=body).json()
        done = wait_for(api, job["id"])
        assert done["status"] == "succeeded", done
        content = api.get(f"/v1/audio/speech/jobs/{job['id']}/content")
        assert content.headers["content-type"] == content_type
        assert len(content.content) == done["result"]["bytes"]
        if magic is not None:
            assert content.content.startswith(magic)
        durations[speed] = decode(content.content, fmt).duration
    assert durations[1.0] > 1  # two sentences of 12 sim steps each
    assert durations[1.0] / durations[1.5] == pytest.approx(1.5, rel=0.1)
