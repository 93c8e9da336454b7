"""Speech jobs with `--workers 2`: worker 0 runs them, and a cancel that reaches worker 1 stops worker 0's
work on the job at once (through the engine host), not at the job's end. Real processes, sim engine: the
test is about the process topology, not the audio."""

from __future__ import annotations

import functools
import re
import time

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.test_topology import health, log_of, start, wait_for

JOBS = "/v1/audio/speech/jobs"
# About 20 sentences of 4.5 s of generation each at 40 ms a step: a job of a minute and a half.
LONG_JOB = "This sentence goes on for quite a while so that the job lasts. " * 20


@pytest.fixture(scope="module")
def sim2(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("workers-jobs")
    proc = start(["--engine", "sim", "--data-dir", str(data), "--sim-step-ms", "40", "--max-length", "2048",
                  "--drain-s", "0"])  # fmt: skip
    yield proc
    proc.stop()


def answered_by(proc: ServerProcess, request_id: str) -> str | None:
    found = re.findall(rf"\[worker (\d)\]: request_id={re.escape(request_id)} ", log_of(proc))
    return found[-1] if found else None


def job_status(base: str, job_id: str) -> str:
    return httpx.get(f"{base}{JOBS}/{job_id}", timeout=10).json()["status"]


def generating(base: str, job_id: str) -> bool:
    return job_status(base, job_id) == "running" and health(base)["requests_generating"] > 0


def test_a_cancel_through_worker_1_stops_the_job_worker_0_runs(sim2: ServerProcess):
    base = sim2.base_url
    for attempt in range(10):  # until a cancel lands on worker 1 (the kernel picks the worker)
        body = {"model": "tts-1", "voice": "alloy", "input": f"{LONG_JOB} Attempt {attempt}.",
                "response_format": "pcm"}  # fmt: skip
        created = httpx.post(base + JOBS, json=body, timeout=30)
        assert created.status_code in (200, 201, 202), created.text
        job_id = created.json()["id"]
        wait_for(functools.partial(generating, base, job_id), timeout=60)
        request_id = f"jobcancel-{attempt}"
        with httpx.Client(timeout=30) as client:  # a new connection: either worker
            cancelled = client.post(f"{base}{JOBS}/{job_id}/cancel", headers={"X-Request-Id": request_id})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        cancelled_at = time.monotonic()
        # Worker 0 runs jobs: its engine work stops within a step or two, wherever the cancel came in.
        wait_for(lambda: health(base)["requests_generating"] == 0, timeout=30, every=0.05)
        stopped_after = time.monotonic() - cancelled_at
        assert job_status(base, job_id) == "cancelled"
        wait_for(lambda r=request_id: answered_by(sim2, r) is not None, timeout=10)
        if answered_by(sim2, request_id) == "1":
            # Well before the segment in generation (seconds) would have ended by itself.
            assert stopped_after < 2.0, stopped_after
            time.sleep(1.0)
            assert health(base)["requests_generating"] == 0  # and no next segment started
            return
    pytest.fail("no cancel reached worker 1")
