"""Single flight across `--workers` without Redis: identical concurrent buffered requests that land on
different workers generate once (the engine host says who produces; the others read the shared disk
cache). On real processes with the reference engine on the tiny checkpoint; and the host's bookkeeping
(voxport.topology.flight.Leads) when a holder finishes or its worker dies."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess
from tests.test_topology import SPEECH, TIMEOUT, log_of, start
from voxport.topology import wire
from voxport.topology.flight import Leads


@pytest.fixture(scope="module")
def reference2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("flight-ref")
    proc = start(["--model", str(tiny_model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH)])
    yield proc
    proc.stop()


def workers_of(proc: ServerProcess, prefix: str) -> dict[str, str]:
    """request id -> the worker that answered it (from the access log)."""
    pattern = rf"\[worker (\d)\]: request_id=({re.escape(prefix)}\S*) "
    return {request: worker for worker, request in re.findall(pattern, log_of(proc))}


def identical_at_once(base: str, text: str, prefix: str, n: int = 6) -> list[httpx.Response]:
    """`n` identical buffered requests at once, each on a connection of its own."""
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav", "stream": False}

    def one(i: int) -> httpx.Response:
        with httpx.Client(timeout=TIMEOUT) as client:  # a new connection: the kernel picks the worker
            return client.post(base + SPEECH, json=body, headers={"X-Request-Id": f"{prefix}-{i}"})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_identical_requests_on_both_workers_generate_once(reference2: ServerProcess):
    base = reference2.base_url
    for round_ in range(8):  # until one round's requests landed on both workers
        prefix = f"flight{round_}"
        answers = identical_at_once(base, f"Only one worker makes this, round {round_}.", prefix)
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        caches = sorted(a.headers["x-cache"] for a in answers)
        assert caches == ["HIT"] * 5 + ["MISS"], caches  # generated once, whichever worker asked
        assert len({a.content[44:] for a in answers}) == 1  # the same samples for all
        if set(workers_of(reference2, prefix).values()) == {"0", "1"}:
            break
    else:
        pytest.fail("no round reached both workers")


def test_a_request_after_the_leader_is_a_plain_hit(reference2: ServerProcess):
    body = {"model": "tts-1", "input": "Asked once, then again.", "voice": "alloy", "response_format": "wav",
            "stream": False}  # fmt: skip
    first = httpx.post(reference2.base_url + SPEECH, json=body, timeout=TIMEOUT)
    again = [httpx.post(reference2.base_url + SPEECH, json=body, timeout=TIMEOUT) for _ in range(4)]
    assert first.headers["x-cache"] == "MISS"
    assert [a.headers["x-cache"] for a in again] == ["HIT"] * 4


class _Sent(list):
    def __call__(self, identity: bytes, message: object) -> None:
        self.append((identity, message))


def test_host_leads_one_holder_per_key_and_releases_the_waiters():
    sent = _Sent()
    leads = Leads(sent)
    leads.handle(b"a", wire.Claim(1, "e", "k"))
    leads.handle(b"b", wire.Claim(7, "e", "k"))
    leads.handle(b"c", wire.Claim(9, "e", "k"))
    assert sent == [(b"a", wire.Claimed(1, True))]  # b and c wait
    leads.handle(b"b", wire.Done("k"))  # not the holder's: ignored
    assert len(sent) == 1
    leads.handle(b"a", wire.Done("k"))
    assert sent[1:] == [(b"b", wire.Claimed(7, False)), (b"c", wire.Claimed(9, False))]
    leads.handle(b"c", wire.Claim(10, "e", "k"))  # nothing in the cache: c claims again, and leads
    assert sent[-1] == (b"c", wire.Claimed(10, True))


def test_a_holder_whose_worker_dies_releases_its_waiters():
    sent = _Sent()
    leads = Leads(sent)
    leads.handle(b"a", wire.Claim(1, "e", "k"))
    leads.handle(b"a", wire.Claim(2, "e", "other"))
    leads.handle(b"b", wire.Claim(3, "e", "k"))
    leads.handle(b"a", wire.Claim(4, "e", "x"))
    leads.handle(b"b", wire.Claim(5, "e", "x"))
    leads.handle(b"c", wire.Claim(6, "e", "x"))
    del sent[:]
    leads.drop(b"b")  # b waited on k and x: it waits no more
    assert sent == [] and leads.waiting == {"x": [(b"c", 6)]}
    leads.drop(b"a")
    assert sent == [(b"c", wire.Claimed(6, False))]
    assert leads.holders == {} and leads.waiting == {}
