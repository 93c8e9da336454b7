"""`/metrics` and `/health` with `voxport serve --workers 2`, as real processes: one view over both workers,
whichever of them answers the scrape (counters summed, requests in flight summed, the engine host's global
slots), and a worker killed mid-stream leaves the sums (its in-flight requests) but not the totals."""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tests.test_topology import LONG, SPEECH, TIMEOUT, log_of, pid_of, served_by, speak, start, wait_for

SPOKEN = ("voxport_requests_total", (("route", SPEECH), ("status", "200")))
TIMED = ("voxport_request_seconds_count", (("route", SPEECH),))
IN_FLIGHT = ("voxport_requests_in_flight", ())
GENERATING = ("voxport_requests_generating", ())
CANCELLED = ("voxport_requests_cancelled_total", ())


@pytest.fixture(scope="module")
def sim2(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("workers-metrics")
    proc = start(["--engine", "sim", "--data-dir", str(data), "--sim-step-ms", "40", "--max-concurrent", "16",
                  "--drain-s", "0"])  # fmt: skip
    yield proc
    out = proc.stop()
    assert not list((data / "tmp").glob("metrics-*")), out[-2000:]  # the supervisor removed its directory


def answered_by(proc: ServerProcess, request_id: str) -> str:
    """The worker whose access log line carries `request_id` (written just after the answer)."""
    pattern = rf"\[worker (\d)\]: request_id={re.escape(request_id)} "
    wait_for(lambda: re.search(pattern, log_of(proc)) is not None, timeout=30, every=0.05)
    return re.search(pattern, log_of(proc)).group(1)


def scrape(proc: ServerProcess) -> tuple[dict[tuple[str, tuple], float], str]:
    """(every sample of one /metrics answer, the worker that answered), on a connection of its own."""
    request_id = f"scrape-{uuid.uuid4().hex[:12]}"
    answer = httpx.get(proc.base_url + "/metrics", headers={"X-Request-Id": request_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    samples, families = {}, []
    for family in text_string_to_metric_families(answer.text):
        families.append(family.name)
        for sample in family.samples:
            assert "pid" not in sample.labels, sample  # no per-process series: one view
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert len(families) == len(set(families)), families  # each metric once
    return samples, answered_by(proc, request_id)


def health(proc: ServerProcess) -> tuple[dict, str]:
    request_id = f"health-{uuid.uuid4().hex[:12]}"
    answer = httpx.get(proc.base_url + "/health", headers={"X-Request-Id": request_id}, timeout=30)
    return answer.json(), answered_by(proc, request_id)


def seen_by_both(read: Callable[[], tuple[float, str]], expected: float, timeout: float = 60) -> None:
    """Until each worker has answered `expected` (a request accounted just after its last byte)."""
    workers: set[str] = set()

    def check() -> bool:
        value, worker = read()
        if value == expected:
            workers.add(worker)
        return workers == {"0", "1"}

    try:
        wait_for(check, timeout=timeout, every=0.05)
    except TimeoutError:
        pytest.fail(f"{expected} not seen from both workers (seen from {workers}; last {read()})")


def metric(proc: ServerProcess, key: tuple[str, tuple]) -> Callable[[], tuple[float, str]]:
    def read() -> tuple[float, str]:
        samples, worker = scrape(proc)
        return samples.get(key, 0.0), worker

    return read


def stream(base: str, text: str, request_id: str) -> int:
    """A pcm stream read to its end: its status, or -1 when it broke."""
    body = {
        "model": "tts-1",
        "input": text,
        "voice": "alloy",
        "response_format": "pcm",
        "stream_format": "audio",
    }
    try:
        with httpx.stream("POST", base + SPEECH, json=body, headers={"X-Request-Id": request_id},
                          timeout=TIMEOUT) as response:  # fmt: skip
            for _chunk in response.iter_bytes():
                pass
            return response.status_code
    except httpx.HTTPError:
        return -1


def test_requests_over_both_workers_count_once_whoever_is_scraped(sim2: ServerProcess):
    base = sim2.base_url
    before = metric(sim2, SPOKEN)()[0]
    made, served = 0, served_by(sim2)
    for round_ in range(10):  # rounds of 16 requests, each on a connection of its own, until both answered
        with ThreadPoolExecutor(8) as pool:
            texts = [f"Round {round_} connection {i}." for i in range(16)]
            answers = list(pool.map(lambda t: speak(base, t, response_format="pcm"), texts))
        assert all(a.status_code == 200 and a.content for a in answers), [a.text for a in answers]
        made += len(answers)
        now = served_by(sim2)
        if made >= 32 and all(now.get(w, 0) > served.get(w, 0) for w in ("0", "1")):
            break
    else:
        pytest.fail(f"the requests never reached both workers: {served_by(sim2)}")
    seen_by_both(metric(sim2, SPOKEN), before + made, timeout=30)
    samples, _worker = scrape(sim2)
    assert samples[TIMED] >= before + made  # the histogram too (and every earlier test's requests)
    assert samples[("voxport_audio_seconds_total", ())] > 0
    assert samples[("voxport_capacity", (("limit", "max_concurrent"),))] == 16


def test_in_flight_and_cancelled_are_summed(sim2: ServerProcess):
    base = sim2.base_url
    cancelled_before = metric(sim2, CANCELLED)()[0]
    ids = [f"long-{uuid.uuid4().hex[:8]}-{i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(stream, base, f"{LONG * 4} {i}.", ids[i]) for i in range(6)]
        seen_by_both(metric(sim2, IN_FLIGHT), 6)
        seen_by_both(metric(sim2, GENERATING), 6)  # the engine host's global count
        seen_by_both(lambda: (lambda h: (h[0]["requests_in_flight"], h[1]))(health(sim2)), 6)
        for request_id in ids:
            answer = httpx.post(base + SPEECH + "/cancel", json={"request_id": request_id}, timeout=30)
            assert answer.status_code == 200 and answer.json()["cancelled"], answer.text
        assert all(f.result() == 200 for f in running)
    seen_by_both(metric(sim2, IN_FLIGHT), 0)
    seen_by_both(metric(sim2, CANCELLED), cancelled_before + 6)
    seen_by_both(lambda: (lambda h: (h[0]["requests_cancelled"], h[1]))(health(sim2)), cancelled_before + 6)


def kill_worker_0_mid_stream(proc: ServerProcess) -> tuple[float, list[int]]:
    """Worker 0 answers a request, then is killed with eight long streams in flight over both workers:
    (the speech counter just before the streams, each stream's outcome)."""
    base, victim = proc.base_url, pid_of(proc, "worker 0")
    answered = served_by(proc).get("0", 0)
    for i in range(40):  # until this worker 0 has answered (its answers must stay in the totals)
        assert speak(base, f"Before the kill {victim} {i}.", response_format="pcm").status_code == 200
        if served_by(proc).get("0", 0) > answered:
            break
    spoken = metric(proc, SPOKEN)()[0]
    with ThreadPoolExecutor(8) as pool:
        running = [
            pool.submit(stream, base, f"{LONG * 4} {victim} {i}.", f"kill-{victim}-{i}") for i in range(8)
        ]
        wait_for(lambda: metric(proc, IN_FLIGHT)()[0] == 8, timeout=60, every=0.05)
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in running]
    wait_for(lambda: pid_of(proc, "worker 0") != victim, timeout=60)
    wait_for(lambda: f"worker w0-{victim} gone" in log_of(proc), timeout=60)
    return spoken, results


def test_a_killed_worker_leaves_the_sums_not_the_totals(sim2: ServerProcess):
    for _attempt in range(4):  # until the kill catches worker 0 with streams in flight
        spoken, results = kill_worker_0_mid_stream(sim2)
        if -1 in results:
            break
    else:
        pytest.fail("the kill never caught streams on worker 0")
    # The dead worker's requests in flight leave the sum (its live gauge file is dropped)...
    seen_by_both(metric(sim2, IN_FLIGHT), 0)
    # ...but what it answered stays counted: the survivors' finished streams join the earlier total.
    finished = results.count(200)
    assert finished + results.count(-1) == 8, results
    wait_for(lambda: metric(sim2, SPOKEN)()[0] == spoken + finished, timeout=30)
    assert metric(sim2, SPOKEN)()[0] == spoken + finished  # and no more
