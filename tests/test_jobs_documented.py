"""Job behaviours docs/jobs.md promises that had no test (issue 30): content and captions are 409 before the
job succeeds and 404 once its audio expired; cancelling a finished job is 409; a batch is created all or
none (a bad request, or one job too many for the quota, creates no job at all) and a quota refusal says
when to retry. Through a real server (`--engine sim`, for its many fast steps, as test_jobs_api.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.test_jobs_api import BODY, long_text, sim_server, wait_for

JOBS = "/v1/audio/speech/jobs"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    # 30 ms steps: a long job stays unfinished long enough to be asked about; results expire after ~1 s.
    proc = sim_server(tmp_path_factory.mktemp("jobs-documented"), "--sim-step-ms", "30",
                      "--job-result-ttl-hours", "0.0003", "--max-queued-jobs", "3")  # fmt: skip
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.base_url, timeout=30) as client:
            yield client
    finally:
        proc.stop()


def all_job_ids(api: httpx.Client) -> set[str]:
    page = api.get(JOBS, params={"limit": 100})
    assert page.status_code == 200, page.text
    return {job["id"] for job in page.json()["data"]}


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_audio_and_captions_before_success_then_after_expiry(api: httpx.Client) -> None:
    job = api.post(JOBS, json={**BODY, "input": long_text(3000)}).json()
    unfinished = api.get(f"{JOBS}/{job['id']}").json()
    if unfinished["status"] in ("queued", "running"):  # asked before it finished: 409 for both
        assert error(api.get(f"{JOBS}/{job['id']}/content"), 409)["code"] == "job_not_succeeded"
        assert error(api.get(f"{JOBS}/{job['id']}/captions"), 409)["code"] == "job_not_succeeded"
    else:
        pytest.fail(f"the 3000-character job finished before it could be asked about: {unfinished}")
    done = wait_for(api, job["id"])
    assert done["status"] == "succeeded", done
    # Cancelling a finished job: 409, and the job stays succeeded.
    assert error(api.post(f"{JOBS}/{job['id']}/cancel"), 409)["code"] == "job_finished"
    assert api.get(f"{JOBS}/{job['id']}").json()["status"] == "succeeded"
    # Once the audio expired: 404 for the audio and for its captions.
    wait_for(api, job["id"], lambda j: j["result"] is None, timeout=60)
    assert api.get(f"{JOBS}/{job['id']}/content").status_code == 404
    assert api.get(f"{JOBS}/{job['id']}/captions").status_code == 404


def test_a_batch_is_created_all_or_none(api: httpx.Client) -> None:
    before = all_job_ids(api)
    bad = [
        {**BODY, "input": "fine"},
        {**BODY, "input": "fine too"},
        {**BODY, "input": "x", "voice": "nobody"},
    ]
    assert error(api.post("/v1/audio/speech/batches", json={"requests": bad}), 400)["param"] == (
        "requests[2].voice"
    )
    assert all_job_ids(api) == before
    # Four jobs against a quota of three unfinished: refused whole, with a Retry-After, and nothing made.
    four = [{**BODY, "input": f"Request {i}."} for i in range(4)]
    refused = api.post("/v1/audio/speech/batches", json={"requests": four})
    assert error(refused, 429)["code"] == "job_quota_exceeded"
    assert refused.headers["retry-after"] == "60"  # docs/jobs.md
    assert all_job_ids(api) == before
    # Within the quota the whole batch is made.
    made = api.post("/v1/audio/speech/batches", json={"requests": four[:2]})
    assert made.status_code in (200, 201, 202), made.text
    assert len(all_job_ids(api) - before) == 2
