"""Replicas behind the shipped deploy/haproxy.cfg (docs/scaling.md), all real: Debian's HAProxy and
`voxport serve` processes on loopback (tests/haproxy.py, tests/conftest.py ServerProcess).

The sim engine carries the load (GPU-rate batching, no weights); the tiny checkpoint proves that real
speech passes through unchanged."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.audio_check import decode
from tests.conftest import SERVER_START_TIMEOUT, STEP_SECONDS, TEST_MAX_LENGTH, ServerProcess
from tests.haproxy import HAProxy, Nginx, haproxy_binary

PCM_BYTES_PER_STEP = int(STEP_SECONDS * 24000) * 2  # 24 kHz s16le
DRAIN_S = 5  # longer than deploy/haproxy.cfg takes to see a failing /ready (inter 1 s x fall 2)


def _sim_replica(data: Path, *extra: str) -> ServerProcess:
    return ServerProcess(["--engine", "sim", "--data-dir", str(data), "--design-clip-seconds", "1",
                          "--log-level", "warning", "--drain-s", str(DRAIN_S), "--segment-max-chars", "4096",
                          *extra])  # fmt: skip


class Cluster:
    """Two replicas and HAProxy; `replicas[name]` by HAProxy's server name."""

    def __init__(self, replicas: list[ServerProcess], start_timeout: float = SERVER_START_TIMEOUT):
        self.replicas = dict(zip(("replica1", "replica2"), replicas, strict=True))
        for replica in replicas:
            replica.wait_ready(start_timeout)
        self.lb = HAProxy([f"127.0.0.1:{r.port}" for r in replicas])
        self.lb.wait_for({"replica1": "UP", "replica2": "UP"})

    def stop(self) -> None:
        self.lb.stop()
        for replica in self.replicas.values():
            if replica.proc.poll() is None:
                replica.stop()
            else:
                replica.log.close()


@pytest.fixture
def sim_cluster(tmp_path: Path) -> Iterator[Cluster]:
    haproxy_binary()  # skip (or fail in CI) before anything starts
    replicas = [_sim_replica(tmp_path / f"r{i}") for i in (1, 2)]
    cluster = None
    try:
        cluster = Cluster(replicas)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            for replica in replicas:
                replica.stop()


def _speech(text: str, steps: int, **extra) -> dict:
    """A pcm request for exactly `steps` of audio: the sim engine stops at max_length, or earlier for a
    short text, so the text is padded to allow it (one segment: no sentence ends, --segment-max-chars)."""
    text = " ".join([text, *["speech"] * (steps // 8 + 3)])
    return {"model": "tts-1", "input": text, "max_length": steps, "response_format": "pcm", "cache": False,
            **extra}  # fmt: skip


def test_sigterm_alone_drains_before_the_listener_closes(tmp_path: Path) -> None:
    """No balancer: what a replica does on SIGTERM with --drain-s, seen from outside."""
    replica = _sim_replica(tmp_path)
    replica.wait_ready()
    assert httpx.get(f"{replica.base_url}/ready").status_code == 200
    replica.proc.send_signal(signal.SIGTERM)
    ready = httpx.get(f"{replica.base_url}/ready")  # answered: the listener is still open
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
    health = httpx.get(f"{replica.base_url}/health").json()
    assert (health["draining"], health["ready"], health["routing"]["accepts_requests"]) == (
        True,
        False,
        False,
    )
    # Still serving while it drains: a request that reaches it now (before the balancer noticed) succeeds.
    response = httpx.post(f"{replica.base_url}/v1/audio/speech", json=_speech("Late", 5), timeout=60)
    assert response.status_code == 200 and len(response.content) == 5 * PCM_BYTES_PER_STEP
    replica.proc.wait(timeout=60)
    output = replica.output()
    replica.log.close()
    assert replica.proc.returncode == 0, output
    assert "Traceback" not in output


def test_tiny_checkpoint_speech_reaches_both_replicas_through_haproxy(
    tiny_model: Path, tmp_path: Path
) -> None:
    haproxy_binary()
    args = ["--model", str(tiny_model), "--max-length", str(TEST_MAX_LENGTH), "--design-clip-seconds", "1"]
    replicas = [ServerProcess([*args, "--data-dir", str(tmp_path / f"r{i}")]) for i in (1, 2)]
    cluster = None
    try:
        # Two checkpoint servers starting at once on a small machine: more than one's usual allowance.
        cluster = Cluster(replicas, start_timeout=2 * SERVER_START_TIMEOUT)
        client = openai.OpenAI(api_key="unused", base_url=f"{cluster.lb.base_url}/v1", max_retries=0)
        served = Counter()
        for i in range(4):
            raw = client.audio.speech.with_raw_response.create(
                model="tts-1",
                voice="alloy",
                input=f"Through the balancer, number {i}.",
                response_format="wav",
            )
            served[raw.headers["x-voxport-replica"]] += 1
            audio = decode(raw.content, "wav")
            assert audio.duration == pytest.approx(TEST_MAX_LENGTH * STEP_SECONDS, abs=1e-3)
            assert raw.headers["x-cache"] == "MISS"
        # Least connections, requests one at a time: ties go round robin, so each replica gets two.
        assert served == {"replica1": 2, "replica2": 2}
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            for replica in replicas:
                replica.stop()


def _unbuffered_stream(base_url: str, replica_named: Callable[[str], ServerProcess]) -> None:
    steps = 600  # seconds of generation at the sim engine's rate
    with httpx.stream("POST", f"{base_url}/v1/audio/speech", json=_speech("Long", steps),
                      timeout=120) as response:  # fmt: skip
        assert response.status_code == 200
        replica = replica_named(response.headers["x-voxport-replica"])
        chunks = response.iter_raw()
        first = next(chunks)
        # The first audio is here while the replica is still generating the rest: HAProxy passed it on
        # instead of waiting for the whole body.
        health = httpx.get(f"{replica.base_url}/health", timeout=10).json()
        assert health["requests_generating"] == 1
        assert 0 < len(first) < steps * PCM_BYTES_PER_STEP
        total = len(first) + sum(len(chunk) for chunk in chunks)
    assert total == steps * PCM_BYTES_PER_STEP


def test_a_stream_passes_through_haproxy_unbuffered(sim_cluster: Cluster) -> None:
    _unbuffered_stream(sim_cluster.lb.base_url, sim_cluster.replicas.__getitem__)


def test_nginx_spreads_requests_and_passes_streams_unbuffered(tmp_path: Path) -> None:
    replicas = [_sim_replica(tmp_path / f"r{i}") for i in (1, 2)]
    nginx = None
    try:
        for replica in replicas:
            replica.wait_ready()
        by_address = {f"127.0.0.1:{r.port}": r for r in replicas}
        nginx = Nginx(list(by_address), tmp_path / "nginx")
        served = Counter()
        for i in range(4):
            response = httpx.post(
                f"{nginx.base_url}/v1/audio/speech", json=_speech(f"Via nginx {i}", 5), timeout=60
            )
            assert response.status_code == 200 and len(response.content) == 5 * PCM_BYTES_PER_STEP
            served[response.headers["x-voxport-replica"]] += 1
        assert set(served) == set(by_address)
        _unbuffered_stream(nginx.base_url, by_address.__getitem__)
    finally:
        if nginx is not None:
            nginx.stop()
        for replica in replicas:
            replica.stop()


@pytest.mark.timeout(1200)  # its own bounds add up to more than the default
def test_sigterm_takes_a_replica_out_of_rotation_while_its_stream_finishes(sim_cluster: Cluster) -> None:
    lb, steps = sim_cluster.lb, 1000  # the stream outlasts the drain: it is still running at the shutdown
    stream: dict = {}
    started = threading.Event()

    def read_stream() -> None:
        try:
            with httpx.stream("POST", f"{lb.base_url}/v1/audio/speech", json=_speech("Keep going", steps),
                              timeout=120) as response:  # fmt: skip
                stream["status"], stream["replica"] = (
                    response.status_code,
                    response.headers["x-voxport-replica"],
                )
                stream["bytes"] = 0
                for chunk in response.iter_raw():
                    stream["bytes"] += len(chunk)
                    started.set()
        finally:
            started.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert started.wait(60) and stream.get("status") == 200
    victim_name = stream["replica"]
    survivor_name = next(name for name in sim_cluster.replicas if name != victim_name)
    victim = sim_cluster.replicas[victim_name]
    victim.proc.send_signal(signal.SIGTERM)
    # Short requests through the balancer, one after another, all through the drain and the shutdown.
    results, down_seen, alive_when_down = [], False, None
    deadline = time.monotonic() + 300
    while victim.proc.poll() is None or len(results) < 5:
        assert time.monotonic() < deadline, f"the drained replica still runs at 300 s ({len(results)} sent)"
        if not down_seen and lb.states()[victim_name] == "DOWN":
            down_seen, alive_when_down = True, victim.proc.poll() is None
        response = httpx.post(f"{lb.base_url}/v1/audio/speech", json=_speech("Meanwhile", 3), timeout=60)
        results.append((down_seen, response.status_code, response.headers.get("x-voxport-replica")))
    reader.join(120)
    victim.proc.wait(timeout=60)
    assert [status for _, status, _ in results] == [200] * len(results)
    # Once HAProxy had taken it out, nothing more went to the stopping replica...
    assert {replica for down, _, replica in results if down} == {survivor_name}
    # ... and it was taken out because /ready failed while it was still running (a layer-7 503), not
    # because its port had closed.
    assert alive_when_down is True
    assert f"Server voxport/{victim_name} is DOWN, reason: Layer7 wrong status, code: 503" in lb.output()
    assert stream["bytes"] == steps * PCM_BYTES_PER_STEP  # the in-flight stream finished whole
    assert victim.proc.returncode == 0, victim.output()
    assert lb.states()[survivor_name] == "UP"


def test_kill_9_during_a_burst_fails_only_the_requests_on_that_replica(sim_cluster: Cluster) -> None:
    """Clients of the killed replica get an error status or a closed connection, never a hang (their
    client timeout would show it); everyone else gets whole audio. Run with -s to see the count."""
    lb, victim_name, steps, total, at_once = sim_cluster.lb, "replica1", 200, 80, 24
    victim = sim_cluster.replicas[victim_name]
    expected = steps * PCM_BYTES_PER_STEP

    async def burst() -> tuple[list[tuple[str, str | None]], int]:
        limit = asyncio.Semaphore(at_once)
        limits = httpx.Limits(max_connections=at_once + 4)
        victim_streaming = asyncio.Event()  # a stream from the victim is part way through its body
        async with httpx.AsyncClient(timeout=httpx.Timeout(60), limits=limits) as http:

            async def one(i: int) -> tuple[str, str | None]:
                body = _speech(f"Burst {i}", steps, stream=i % 2 == 0)  # half streamed, half whole
                replica, size = None, 0
                async with limit:
                    try:
                        async with http.stream(
                            "POST", f"{lb.base_url}/v1/audio/speech", json=body
                        ) as response:
                            replica = response.headers.get("x-voxport-replica")
                            async for chunk in response.aiter_raw():
                                size += len(chunk)
                                if replica == victim_name and response.status_code == 200:
                                    victim_streaming.set()
                            if response.status_code != 200:
                                return f"status {response.status_code}", replica
                            return ("ok" if size == expected else f"short body {size}"), replica
                    except httpx.TimeoutException:
                        return "hang", replica
                    except (httpx.RemoteProtocolError, httpx.ReadError):
                        return "closed", replica

            async def kill_mid_stream() -> int:
                await victim_streaming.wait()
                in_flight = (await http.get(f"{victim.base_url}/health")).json()["requests_in_flight"]
                victim.proc.kill()
                return in_flight

            killer = asyncio.create_task(kill_mid_stream())
            results = await asyncio.gather(*(one(i) for i in range(total)))
            return list(results), await killer

    results, in_flight_at_kill = asyncio.run(burst())
    outcomes = Counter(outcome for outcome, _ in results)
    failed = [(outcome, replica) for outcome, replica in results if outcome != "ok"]
    print(f"\nkill -9 during a burst of {total} ({at_once} at once): {len(failed)} failed "
          f"({dict(outcomes)}); the killed replica had {in_flight_at_kill} in flight")  # fmt: skip
    assert "hang" not in outcomes
    assert failed, "the killed replica was serving requests: some must have failed"
    # Every failure was on the killed replica (HAProxy names it even on its own 502)...
    assert {replica for _, replica in failed} == {victim_name}, failed
    # A stream cut part way is a closed connection (HAProxy ends its chunked body unfinished); a request
    # that had had no answer yet is HAProxy's 502.
    assert "closed" in outcomes and {outcome for outcome, _ in failed} <= {"closed", "status 502"}, failed
    # ... and every request the survivor served came out whole.
    survivor_name = next(name for name in sim_cluster.replicas if name != victim_name)
    assert {o for o, r in results if r == survivor_name} == {"ok"}
    assert lb.states() == {victim_name: "DOWN", survivor_name: "UP"}
