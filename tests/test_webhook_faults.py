"""Issue 29, item 1: no webhook URL, stored or submitted, makes the dispatcher spin. A URL that cannot be
sent is refused at submission (400 naming the field); one already in the store (an older server took it)
is recorded as a failed attempt, and any other failure of an attempt waits its backoff; an unexpected
error is logged once per cause."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess
from tests.webhook_receiver import Receiver
from voxport.jobs.store import JobStore
from voxport.jobs.webhooks import Allowlist, WebhookDispatcher, WebhookSender, WebhookURLError, check_url

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LONG_LABEL = "a" * 70 + ".example.com"
BAD_URLS = ["http://127.0.0.1:{port}/café", f"http://{LONG_LABEL}/hook", "http://ex ample.com/",
            "http://bücher.example/", "http://a..b.example/", "http://" + "abc." * 70 + "com/"]  # fmt: skip
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def serve(model: Path, data: Path) -> ServerProcess:
    return ServerProcess(["--model", str(model), "--data-dir", str(data), "--max-length",
                          str(TEST_MAX_LENGTH), "--webhook-secret", SECRET, "--webhook-allow-hosts",
                          "127.0.0.1"])  # fmt: skip


@pytest.mark.parametrize("url", BAD_URLS)
def test_unsendable_urls_are_refused_by_validation(url: str) -> None:
    with pytest.raises(WebhookURLError):
        check_url(url.format(port=8080), Allowlist.parse(["127.0.0.1"]))


def test_valid_names_still_pass() -> None:
    for url in ["https://xn--bcher-kva.example/hook", "http://a-b.c_d.example:8080/x?y=%C3%A9",
                "https://" + "a" * 63 + ".example.com/", "http://example.com./"]:  # fmt: skip
        check_url(url, Allowlist())


async def test_any_exception_in_send_is_an_attempt_with_backoff(tmp_path: Path, caplog) -> None:
    """A sender that raises every time: each attempt is recorded with its backoff, and logged once."""

    class Exploding(WebhookSender):
        async def send(self, msg_id: str, url: str, payload: str):
            raise RuntimeError("unexpected")

    store = JobStore(tmp_path / "jobs")
    await store.open()
    sender = Exploding(SECRET, Allowlist(), timeout_s=5)
    dispatcher = WebhookDispatcher(store, sender, retry_s=600)
    with caplog.at_level(logging.DEBUG, logger="voxport.webhooks"):
        dispatcher.start()
        await dispatcher.enqueue("speechjob_x", "speech.job.succeeded", "https://example.com/hook", {})
        await asyncio.sleep(3.5)  # attempts at 0 s, 1 s, 3 s at most
        await dispatcher.close()
    (row,) = await store.deliveries("speechjob_x")
    await store.close()
    assert 1 <= row.attempts <= 3 and row.status == "pending" and "RuntimeError" in row.last_error
    assert row.next_attempt_at > time.time()
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(logged) == 1, [r.getMessage() for r in logged]


async def _store_deliveries(data: Path, urls: list[str]) -> None:
    """Deliveries as an older server would have stored them, before URLs were validated."""
    store = JobStore(data / "jobs")
    await store.open()
    for i, url in enumerate(urls):
        await store.enqueue_delivery(f"speechjob_old{i}", "speech.job.succeeded", url, "{}")
    await store.close()


def test_a_stored_unsendable_url_costs_no_cpu(tiny_model: Path, tmp_path: Path) -> None:
    with Receiver() as receiver:
        urls = [u.format(port=receiver.port) for u in BAD_URLS]
        asyncio.run(_store_deliveries(tmp_path, urls))
        server = serve(tiny_model, tmp_path)
        try:
            server.wait_ready()
            time.sleep(2)  # every stored delivery has had its attempt
            before = cpu_seconds(server.proc.pid)
            time.sleep(10)
            spent = cpu_seconds(server.proc.pid) - before
            # Submitting such a URL now: 400, naming the field.
            with httpx.Client(base_url=server.base_url, timeout=60) as api:
                for url in urls:
                    answer = api.post(
                        "/v1/audio/speech/jobs",
                        json={"model": "tts-1", "voice": "alloy", "input": "Hello.", "webhook_url": url},
                    )
                    assert answer.status_code == 400, (url, answer.text)
                    assert answer.json()["error"]["param"] == "webhook_url"
                assert api.get("/health").json()["ready"]
        finally:
            log = server.stop()
        assert receiver.received == []
    assert spent < 3, f"{spent:.1f} CPU-seconds in 10 s"
    assert log.count("Traceback") <= 1
    rows = asyncio.run(_read(tmp_path))
    assert all(row.status == "failed" and row.attempts == 1 for row in rows), rows


async def _read(data: Path) -> list:
    store = JobStore(data / "jobs")
    await store.open()
    try:
        return await store.deliveries()
    finally:
        await store.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _job_with_webhook(api: httpx.Client, url: str, text: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav", "webhook_url": url}
    answer = api.post("/v1/audio/speech/jobs", json=body)
    assert answer.status_code == 202, answer.text


def test_a_gigabyte_webhook_answer_is_not_read(tiny_model: Path, tmp_path: Path) -> None:
    """Issue 29, item 5: the receiver's answer is read up to a small cap, then the connection dropped."""
    server = serve(tiny_model, tmp_path)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=60) as api, Receiver() as warm, \
                Receiver(status=200, answer_bytes=2**30) as huge:  # fmt: skip
            _job_with_webhook(api, warm.url, "Warm up.")  # everything a job uses, loaded first
            deadline = time.monotonic() + 120
            while not warm.accepted() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert warm.accepted()
            before = rss_bytes(server.proc.pid)
            _job_with_webhook(api, huge.url, "Warm up.")  # the same text: the cache answers, no new work
            assert huge.done.wait(120), "the answer never ended"
            time.sleep(1)
            grown = rss_bytes(server.proc.pid) - before
            assert len(huge.received) == 1 and huge.streamed < 256 * 2**20, huge.streamed
        assert grown < 150 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
    finally:
        server.stop()


def test_hanging_receivers_do_not_delay_another_jobs_webhook(tiny_model: Path, tmp_path: Path) -> None:
    """Issue 29, item 9: deliveries to different receivers run at once (bounded): 16 receivers that hang
    hold back only their own deliveries, not another job's."""
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path), "--max-length",
                            str(TEST_MAX_LENGTH), "--webhook-secret", SECRET, "--webhook-allow-hosts",
                            "127.0.0.1", "--webhook-timeout-s", "90"])  # fmt: skip
    hanging = [Receiver(hang_s=60) for _ in range(16)]
    try:
        server.wait_ready()
        for receiver in hanging:
            receiver.__enter__()
        with httpx.Client(base_url=server.base_url, timeout=60) as api, Receiver() as other:
            for receiver in hanging:
                _job_with_webhook(api, receiver.url, "Hang on.")
            deadline = time.monotonic() + 240
            while sum(len(r.received) for r in hanging) < 16 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert sum(len(r.received) for r in hanging) == 16  # all 16 attempts at once
            answer = api.post(
                "/v1/audio/speech/jobs",
                json={"model": "tts-1", "voice": "alloy", "input": "Another job.", "webhook_url": other.url},
            )
            job_id = answer.json()["id"]
            while time.monotonic() < deadline:
                job = api.get(f"/v1/audio/speech/jobs/{job_id}").json()
                if job["status"] == "succeeded":
                    break
                time.sleep(0.1)
            finished = time.monotonic()
            while not other.accepted() and time.monotonic() - finished < 30:
                time.sleep(0.05)
            delay = time.monotonic() - finished
        assert other.accepted(), "the other job's webhook never came"
        assert delay < 5, f"the other job's webhook came {delay:.1f} s after it finished"
    finally:
        server.stop()
        for receiver in hanging:
            receiver.__exit__(None, None, None)
