"""Issue 29's smaller items, against a real server: batch items validated as strictly as /speech and /jobs
(with a code, naming `requests[i].field`); Range errors in OpenAI's envelope and HEAD on a job's audio;
the JSON body caps fit the largest valid requests; a reused Idempotency-Key with another body is 409;
library recordings and the job database are private (0600)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import tiny_server
from tests.test_voices import audio_file
from voxport.config import Settings
from voxport.lexicon import MAX_KEY_CHARS, MAX_RESPELLING_CHARS
from voxport.protocol.fields import MAX_PRONUNCIATIONS
from voxport.protocol.timings import MAX_TURNS

BODY = {"model": "tts-1", "voice": "alloy", "response_format": "wav"}
ASTRAL = "\U0001f600"  # 12 bytes in JSON as json.dumps writes it by default (a surrogate pair of escapes)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edges")


@pytest.fixture(scope="module")
def api(tiny_model: Path, data: Path) -> Iterator[httpx.Client]:
    with tiny_server(tiny_model, data) as proc, httpx.Client(base_url=proc.base_url, timeout=120) as client:
        yield client


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        ({"seed": "5"}, "seed", "invalid_value"),
        ({"speed": "1.5"}, "speed", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_value"),
        ({"bogus": 1}, "bogus", "unknown_parameter"),
        ({"input": None}, "input", "missing_required_parameter"),
    ],
)
def test_batch_items_are_validated_as_speech_and_jobs_are(api: httpx.Client, item: dict, param: str,
                                                          code: str) -> None:  # fmt: skip
    body = {**BODY, "input": "Fine.", **item}
    if item.get("input", "") is None:
        del body["input"]
    batch = api.post(
        "/v1/audio/speech/batches",
        json={"requests": [{**BODY, "input": "Fine."}, {**BODY, "input": "Fine."}, body]},
    )
    found = error(batch, 400)
    assert found["param"] == f"requests[2].{param}" and found["code"] == code, found
    job = error(api.post("/v1/audio/speech/jobs", json=body), 400)
    assert job["param"] == param and job["code"] == code, job
    if code != "missing_required_parameter":  # /speech names a missing input differently (or dialogue)
        speech = error(api.post("/v1/audio/speech", json=body), 400)
        assert speech["param"] == param and speech["code"] == code, speech


def finished_job(api: httpx.Client, text: str) -> str:
    made = api.post("/v1/audio/speech/jobs", json={**BODY, "input": text})
    assert made.status_code == 202, made.text
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = api.get(f"/v1/audio/speech/jobs/{made.json()['id']}").json()
        if job["status"] not in ("queued", "running"):
            assert job["status"] == "succeeded", job
            return job["id"]
        time.sleep(0.1)
    raise TimeoutError(made.json())


def test_range_errors_are_enveloped_and_head_works(api: httpx.Client) -> None:
    job_id = finished_job(api, "Bytes to range over.")
    url = f"/v1/audio/speech/jobs/{job_id}/content"
    whole = api.get(url)
    assert whole.status_code == 200 and len(whole.content) > 44
    head = api.head(url)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(whole.content)
    assert head.headers["accept-ranges"] == "bytes"
    part = api.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole.content[:10]
    past = api.get(url, headers={"Range": f"bytes={len(whole.content) + 10}-"})
    found = error(past, 416)
    assert found["code"] == "range_not_satisfiable" and found["param"] == "Range"
    assert past.headers["content-range"] == f"bytes */{len(whole.content)}"
    for malformed in ("bytes=abc", "lines=0-9", "bytes=9-2"):
        found = error(api.get(url, headers={"Range": malformed}), 400)
        assert found["code"] == "invalid_range" and found["param"] == "Range"
    assert api.head("/v1/audio/speech/jobs/speechjob_000000000000000000000000/content").status_code == 404


def test_a_reused_idempotency_key_needs_the_same_body(api: httpx.Client) -> None:
    body = {**BODY, "input": "Said once, with a key."}
    key = {"Idempotency-Key": "edges-1"}
    first = api.post("/v1/audio/speech/jobs", json=body, headers=key)
    again = api.post("/v1/audio/speech/jobs", json=body, headers=key)
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    other = api.post("/v1/audio/speech/jobs", json={**body, "input": "Another text."}, headers=key)
    found = error(other, 409)
    assert found["code"] == "idempotency_key_reused" and found["param"] == "Idempotency-Key"
    meta = api.post("/v1/audio/speech/jobs", json={**body, "metadata": {"a": "b"}}, headers=key)
    assert error(meta, 409)["code"] == "idempotency_key_reused"

    batch = {"requests": [{**BODY, "input": "One."}, {**BODY, "input": "Two."}]}
    key = {"Idempotency-Key": "edges-2"}
    made = api.post("/v1/audio/speech/batches", json=batch, headers=key)
    same = api.post("/v1/audio/speech/batches", json=batch, headers=key)
    assert made.status_code == same.status_code == 202 and made.json()["id"] == same.json()["id"]
    changed = {"requests": [{**BODY, "input": "One."}, {**BODY, "input": "Three."}]}
    assert error(api.post("/v1/audio/speech/batches", json=changed, headers=key), 409)["code"] == (
        "idempotency_key_reused"
    )


def largest_speech_body() -> bytes:
    """A dialogue of every turn, each with the longest instructions, and every pronunciation at its
    longest, all in characters JSON escapes as surrogate pairs: the largest body a valid request is."""
    per_turn = 4096 // MAX_TURNS
    turns = [
        {"voice": "alloy", "input": ASTRAL * per_turn, "instructions": ASTRAL * 4096}
        for _ in range(MAX_TURNS)
    ]
    words = {
        f"{i:03d}" + ASTRAL * (MAX_KEY_CHARS - 3): ASTRAL * MAX_RESPELLING_CHARS
        for i in range(MAX_PRONUNCIATIONS)
    }
    body = {**BODY, "instructions": ASTRAL * 4096, "dialogue": turns, "pronunciations": words,
            "stream": False, "cache": False}  # fmt: skip
    body["dialogue"][0]["voice"] = "nobody-by-this-name"  # refused after the body is read and validated
    return json.dumps(body).encode()


def test_the_largest_valid_bodies_fit_under_the_caps(api: httpx.Client) -> None:
    raw = largest_speech_body()
    cap = Settings().max_json_body_bytes
    assert len(raw) <= cap, (len(raw), cap)
    sent = api.post("/v1/audio/speech", content=raw, headers={"Content-Type": "application/json"})
    found = error(sent, 400)  # read, parsed and validated: only the unknown voice is wrong
    assert found["code"] == "voice_not_found" and found["param"] == "dialogue[0].voice"
    over = api.post(
        "/v1/audio/speech", content=b" " * (cap + 1), headers={"Content-Type": "application/json"}
    )
    assert error(over, 413)["code"] == "request_too_large"


def test_library_recordings_and_the_job_database_are_private(api: httpx.Client, data: Path) -> None:
    made = api.post("/v1/audio/voices", data={"name": "Private", "consent": "true"},
                    files={"audio_sample": ("sample.wav", audio_file("wav", 2.0))})  # fmt: skip
    assert made.status_code == 201, made.text
    folder = data / "voices" / "library" / made.json()["id"]
    for path in (folder / "audio.wav", folder / "voice.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert api.post("/v1/audio/speech/jobs", json={**BODY, "input": "A row."}).status_code == 202
    found = [p for p in (data / "jobs").glob("jobs.sqlite3*") if p.is_file()]
    assert data / "jobs" / "jobs.sqlite3" in found
    for path in found:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
