"""Tenants (docs/configuration.md, "Tenants"): with two API keys, each key's in-flight requests, library
voices, consents, cached audio and jobs are its own; built-in voices are shared; the admin key sees all.
Against a real server, and two real replicas sharing a real redis-server for the Redis mode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess
from tests.redis_server import RedisServer
from tests.test_voices import audio_file

A, B, ADMIN = "key-tenant-a", "key-tenant-b", "key-admin"
KEYS = ["--api-keys", f"{A},{B}", "--admin-api-key", ADMIN]


def _args(tiny_model: Path, data: Path, *extra: str) -> list[str]:
    return ["--model", str(tiny_model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH),
            "--design-clip-seconds", "1", *KEYS, *extra]  # fmt: skip


def _started(*procs: ServerProcess) -> None:
    for proc in procs:
        try:
            proc.wait_ready()
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"a server did not start ({exc}):\n{proc.output()[-4000:]}")


@pytest.fixture(scope="module")
def tenants(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "me.wav").write_bytes(audio_file("wav"))
    proc = ServerProcess(_args(tiny_model, tmp_path_factory.mktemp("tenants"), "--allowed-prompt-dir",
                               str(allowed)))  # fmt: skip
    try:
        _started(proc)
        yield proc
    finally:
        proc.stop()


def call(server: ServerProcess, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, f"{server.base_url}{path}", headers=headers, timeout=120, **kwargs)


def consent(server: ServerProcess, key: str, name: str = "Ann") -> str:
    made = call(server, key, "POST", "/v1/audio/voice_consents", data={"name": name, "language": "en-US"},
                files={"recording": ("consent.wav", audio_file("wav", 2.0))})  # fmt: skip
    assert made.status_code == 201, made.text
    return made.json()["id"]


def voice(server: ServerProcess, key: str, name: str, consent_id: str = "true") -> httpx.Response:
    return call(server, key, "POST", "/v1/audio/voices", data={"name": name, "consent": consent_id},
                files={"audio_sample": ("sample.wav", audio_file("wav", 2.0))})  # fmt: skip


def voice_ids(server: ServerProcess, key: str) -> set[str]:
    listed = call(server, key, "GET", "/v1/audio/voices")
    assert listed.status_code == 200
    return {v["id"] for v in listed.json()["voices"]}


def speak(server: ServerProcess, key: str, text: str, voice_id: str = "alloy") -> httpx.Response:
    body = {"model": "tts-1", "voice": voice_id, "input": text, "response_format": "wav"}
    return call(server, key, "POST", "/v1/audio/speech", json=body)


def test_cancel_reaches_only_the_callers_own_requests(tenants: ServerProcess) -> None:
    text = " ".join(f"Sentence number {i}." for i in range(8))
    body = {"model": "tts-1", "input": text, "response_format": "wav"}
    headers = {"Authorization": f"Bearer {A}"}
    with httpx.stream("POST", f"{tenants.base_url}/v1/audio/speech/stream", json=body, headers=headers,
                      timeout=120) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        chunks = response.iter_bytes()
        next(chunks)
        other = call(tenants, B, "POST", "/v1/audio/speech/cancel", json={"request_id": request_id})
        unknown = call(tenants, B, "POST", "/v1/audio/speech/cancel", json={"request_id": "req_unknown"})
        assert other.status_code == 404 and other.json()["error"]["code"] == "request_not_found"
        assert other.json()["error"].keys() == unknown.json()["error"].keys()
        own = call(tenants, A, "POST", "/v1/audio/speech/cancel", json={"request_id": request_id})
        assert own.status_code == 200 and own.json()["cancelled"] is True
        b"".join(chunks)


def test_library_voices_and_consents_belong_to_their_key(tenants: ServerProcess) -> None:
    mine = consent(tenants, A, "Ann")
    made = voice(tenants, A, "Ann's voice", mine)
    assert made.status_code == 201, made.text
    voice_id = made.json()["id"]
    assert voice_id in voice_ids(tenants, A) and voice_id not in voice_ids(tenants, B)
    assert voice_id in voice_ids(tenants, ADMIN)  # the admin sees every tenant's
    assert "alloy" in voice_ids(tenants, B)  # built-in voices are shared
    listed = call(tenants, B, "GET", "/v1/voices").json()["data"]
    assert voice_id not in {v["id"] for v in listed}

    used = speak(tenants, B, "Not yours.", voice_id)
    assert used.status_code == 400 and used.json()["error"]["code"] == "voice_not_found"
    assert speak(tenants, A, "Mine.", voice_id).status_code == 200
    job = call(tenants, B, "POST", "/v1/audio/speech/jobs", json={"model": "tts-1", "voice": voice_id,
                                                                  "input": "Not yours either."})  # fmt: skip
    assert job.status_code == 400 and job.json()["error"]["code"] == "voice_not_found"

    # B cannot see, rename or use A's consent: 404 (or 400 naming `consent`) as for an unknown one.
    assert call(tenants, B, "GET", f"/v1/audio/voice_consents/{mine}").status_code == 404
    renamed = call(tenants, B, "POST", f"/v1/audio/voice_consents/{mine}", json={"name": "Taken"})
    assert renamed.status_code == 404 and renamed.json()["error"]["code"] == "consent_not_found"
    borrowed = voice(tenants, B, "Borrowed", mine)
    assert borrowed.status_code == 400 and borrowed.json()["error"]["code"] == "consent_not_found"
    assert mine not in {c["id"] for c in call(tenants, B, "GET", "/v1/audio/voice_consents").json()["data"]}
    after = call(tenants, B, "GET", "/v1/audio/voice_consents", params={"after": mine})
    assert after.status_code == 400 and after.json()["error"]["param"] == "after"
    assert call(tenants, A, "GET", f"/v1/audio/voice_consents/{mine}").json()["name"] == "Ann"

    # Names are per tenant: B's "Ann's voice" is another voice; replacing touches only B's own.
    theirs = voice(tenants, B, "Ann's voice")
    assert theirs.status_code == 201 and theirs.json()["id"] != voice_id
    path_body = {"voice_name": "Ann's voice", "prompt_wav_path": "me.wav", "replace": True}
    replaced = call(tenants, B, "POST", "/v1/voices", json=path_body)
    assert replaced.status_code == 201 and replaced.json()["id"] == theirs.json()["id"]
    assert speak(tenants, A, "Still mine.", voice_id).status_code == 200

    # Deleting is the admin's, for every tenant's voices and consents.
    assert call(tenants, B, "DELETE", f"/v1/audio/voices/{voice_id}").status_code == 401
    assert call(tenants, ADMIN, "DELETE", f"/v1/audio/voices/{voice_id}").status_code == 200
    assert call(tenants, ADMIN, "DELETE", f"/v1/audio/voice_consents/{mine}").status_code == 200
    assert voice_id not in voice_ids(tenants, A)


def test_the_cache_does_not_tell_one_key_what_another_spoke(tenants: ServerProcess) -> None:
    text = "A sentence only tenant A has spoken."
    assert speak(tenants, A, text).headers["x-cache"] == "MISS"
    assert speak(tenants, A, text).headers["x-cache"] == "HIT"
    other = speak(tenants, B, text)
    assert other.status_code == 200 and other.headers["x-cache"] == "MISS"


def test_job_listing_gives_no_existence_oracle(tenants: ServerProcess) -> None:
    made = call(tenants, A, "POST", "/v1/audio/speech/jobs", json={"model": "tts-1", "input": "Mine."})
    assert made.status_code == 202, made.text
    job_id = made.json()["id"]
    other = call(tenants, B, "GET", "/v1/audio/speech/jobs", params={"after": job_id})
    unknown = call(tenants, B, "GET", "/v1/audio/speech/jobs", params={"after": "speechjob_" + "0" * 24})
    assert other.status_code == unknown.status_code == 400
    assert other.json()["error"]["code"] == unknown.json()["error"]["code"]
    assert other.json()["error"]["message"].replace(job_id, "X") == unknown.json()["error"][
        "message"
    ].replace("speechjob_" + "0" * 24, "X")
    assert call(tenants, A, "GET", "/v1/audio/speech/jobs", params={"after": job_id}).status_code == 200
    assert call(tenants, B, "GET", f"/v1/audio/speech/jobs/{job_id}").status_code == 404


def test_a_single_tenant_deployment_can_share_the_cache(tiny_model: Path, tmp_path: Path) -> None:
    proc = ServerProcess(_args(tiny_model, tmp_path, "--cache-shared-across-keys"))
    try:
        _started(proc)
        text = "One tenant, two keys."
        assert speak(proc, A, text).headers["x-cache"] == "MISS"
        assert speak(proc, B, text).headers["x-cache"] == "HIT"
    finally:
        proc.stop()


def test_the_rules_hold_across_replicas_sharing_redis(tiny_model: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    procs = [ServerProcess(_args(tiny_model, tmp_path / n, "--redis-url", redis.url)) for n in "12"]
    try:
        _started(*procs)
        one, two = procs
        mine = consent(one, A)
        made = voice(one, A, "Across", mine)
        assert made.status_code == 201, made.text
        voice_id = made.json()["id"]
        assert voice_id in voice_ids(two, A) and voice_id not in voice_ids(two, B)
        assert speak(two, B, "Not yours.", voice_id).json()["error"]["code"] == "voice_not_found"
        assert call(two, B, "GET", f"/v1/audio/voice_consents/{mine}").status_code == 404
        assert call(two, A, "GET", f"/v1/audio/voice_consents/{mine}").status_code == 200
        text = "Spoken by A on one replica."
        assert speak(one, A, text).headers["x-cache"] == "MISS"
        assert speak(two, A, text).headers["x-cache"] == "HIT"
        assert speak(two, B, text).headers["x-cache"] == "MISS"
    finally:
        for proc in procs:
            proc.stop()
        redis.stop()
