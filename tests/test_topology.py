"""`voxport serve --workers 2`: one engine host and two HTTP workers on one port, as real processes.

Speech from both workers (the reference engine on the tiny checkpoint, and the sim engine under many
connections), a worker killed mid-stream (its slots freed, the other worker's streams finish, a new worker
in its place), SIGTERM draining both workers, an engine host killed and restarted, and what is kept on disk
(library voices, aliases, pronunciation dictionaries) set through one worker and used through the other,
on HTTP, the speech WebSocket and Wyoming (worker 0's alone)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import websockets
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from tests.audio_check import decode
from tests.conftest import TEST_MAX_LENGTH, ServerProcess, free_port
from tests.test_voices import audio_file

TIMEOUT = 120
SPEECH = "/v1/audio/speech"
SPEECH_LINE = r"request_id=\S+ method=POST route=/v1/audio/speech "
LONG = "This sentence goes on for quite a while so that the stream lasts. " * 2


def start(args: list[str], workers: int = 2) -> ServerProcess:
    proc = ServerProcess(["--workers", str(workers), *args])
    try:
        proc.wait_ready()
        wait_for(
            lambda: len(set(re.findall(r"\[worker (\d+)\]: voxport \S+ ready", log_of(proc)))) == workers
        )
    except BaseException:
        print(proc.stop())
        raise
    return proc


def wait_for(condition, timeout: float = TIMEOUT, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise TimeoutError("condition not met in time")


def log_of(proc: ServerProcess) -> str:
    """The server's log so far, read through a file description of its own: ServerProcess.output seeks
    the one the server processes write through, and a write racing that seek lands at the start."""
    with open(f"/proc/self/fd/{proc.log.fileno()}", "rb") as log:
        return log.read().decode(errors="replace")


def served_by(proc: ServerProcess) -> dict[str, int]:
    """Speech requests answered, per worker (from the access log)."""
    counts: dict[str, int] = {}
    for worker in re.findall(
        r"\[worker (\d+)\]: request_id=\S+ method=POST route=/v1/audio/speech", log_of(proc)
    ):
        counts[worker] = counts.get(worker, 0) + 1
    return counts


def pid_of(proc: ServerProcess, what: str) -> int:
    """The newest pid the supervisor logged for `what` ("worker 0", "engine host")."""
    return int(re.findall(rf"{what} started \(pid (\d+)\)", log_of(proc))[-1])


def speak(base: str, text: str, **fields) -> httpx.Response:
    body = {"model": "tts-1", "input": text, "voice": "alloy", **fields}
    return httpx.post(base + SPEECH, json=body, timeout=TIMEOUT)


def stream_pcm(base: str, text: str) -> tuple[int, int, str | None]:
    """(status, bytes received, error): a raw pcm stream read to its end or to its break."""
    body = {
        "model": "tts-1",
        "input": text,
        "voice": "alloy",
        "response_format": "pcm",
        "stream_format": "audio",
    }
    received = 0
    try:
        with httpx.stream("POST", base + SPEECH, json=body, timeout=TIMEOUT) as response:
            for chunk in response.iter_bytes():
                received += len(chunk)
            return response.status_code, received, None
    except httpx.HTTPError as exc:
        return -1, received, type(exc).__name__


@pytest.fixture(scope="module")
def reference2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("topology-ref")
    wyoming_port = free_port()
    proc = start(["--model", str(tiny_model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH),
                  "--design-clip-seconds", "1", "--max-user-voices", "2",
                  "--wyoming-port", str(wyoming_port)])  # fmt: skip
    proc.wyoming_port = wyoming_port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def until_both(proc: ServerProcess, request, pattern: str = SPEECH_LINE) -> None:
    """`request(i)`, 4 at once, until both workers have logged `pattern` since the call (every request
    must succeed; it asserts that itself)."""
    before = Counter(re.findall(rf"\[worker (\d+)\]: {pattern}", log_of(proc)))
    for round_ in range(10):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(request, range(4 * round_, 4 * round_ + 4)))
        now: Counter[str] = Counter()
        for _ in range(50):  # a socket's line is written as it closes: give the log a moment
            now = Counter(re.findall(rf"\[worker (\d+)\]: {pattern}", log_of(proc)))
            if all(now[w] > before[w] for w in ("0", "1")):
                return
            time.sleep(0.1)
    pytest.fail(f"one worker never answered: {dict(before)} -> {dict(now)}")


def test_an_alias_and_a_dictionary_set_through_one_worker_hold_on_both(reference2: ServerProcess):
    base = reference2.base_url
    alias = httpx.put(base + "/v1/audio/voice_aliases/both-workers", json={"voice": "nova"}, timeout=TIMEOUT)
    assert alias.status_code == 200, alias.text
    entries = {"scope": "global", "entries": {"nginx": "engine ex"}}
    terms = httpx.put(base + "/v1/audio/pronunciation_dictionaries/both-terms", json=entries, timeout=TIMEOUT)
    assert terms.status_code == 200, terms.text

    def request(i: int) -> None:
        answer = speak(base, f"Restart nginx {i}.", voice="both-workers", response_format="pcm",
                       pronunciation_dictionaries=["both-terms"])  # fmt: skip
        assert answer.status_code == 200 and answer.content, answer.text

    until_both(reference2, request)
    # Gone from both, once deleted through either.
    assert httpx.delete(base + "/v1/audio/voice_aliases/both-workers", timeout=TIMEOUT).status_code == 200
    listed = [httpx.get(base + "/v1/audio/voice_aliases", timeout=10).json() for _ in range(6)]
    assert not any("both-workers" in str(answers) for answers in listed), listed


def test_the_speech_socket_speaks_through_both_workers(reference2: ServerProcess):
    """The agents' WebSocket, end to end on each worker: a context spoken in full."""
    url = f"ws://127.0.0.1:{reference2.port}/v1/audio/speech/ws"

    async def one_context(i: int) -> None:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"context_id": "c", "text": f"Socket number {i}.", "voice": "alloy",
                                      "response_format": "pcm", "close": True}))  # fmt: skip
            audio = b""
            while (event := json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))["type"] != "done":
                assert event["type"] in ("audio", "segment"), event
                audio += base64.b64decode(event.get("audio", ""))
        assert len(audio) > 0 and len(audio) % 2 == 0

    until_both(reference2, lambda i: asyncio.run(one_context(i)), r"socket_id=\S+ route=/v1/audio/speech/ws")


def test_wyoming_is_served_once_by_worker_0_and_speaks(reference2: ServerProcess):
    """One Wyoming server (worker 0's; worker 1 does not bind the port), which knows what was set through
    either worker."""
    assert re.findall(r"\[worker (\d+)\]: Wyoming server on tcp://", log_of(reference2)) == ["0"]
    base = reference2.base_url

    async def session() -> None:
        async with AsyncTcpClient("127.0.0.1", reference2.wyoming_port) as client:  # type: ignore[attr-defined]
            for i in range(4):  # through fresh HTTP connections: either worker
                alias = httpx.put(f"{base}/v1/audio/voice_aliases/wyoming-{i}", json={"voice": "nova"},
                                  timeout=TIMEOUT)  # fmt: skip
                assert alias.status_code == 200, alias.text
                await client.write_event(Describe().event())
                info = Info.from_event(await asyncio.wait_for(client.read_event(), TIMEOUT))
                assert f"wyoming-{i}" in [voice.name for voice in info.tts[0].voices]
            await client.write_event(Synthesize("Hello there.", voice=SynthesizeVoice("wyoming-0")).event())
            start = AudioStart.from_event(await asyncio.wait_for(client.read_event(), TIMEOUT))
            audio = b""
            while not AudioStop.is_type((event := await asyncio.wait_for(client.read_event(), TIMEOUT)).type):
                audio += AudioChunk.from_event(event).audio
            assert start.width == 2 and len(audio) > 0

    asyncio.run(session())


def test_reference_engine_speaks_through_both_workers(reference2: ServerProcess):
    base = reference2.base_url
    with ThreadPoolExecutor(6) as pool:
        buffered = list(pool.map(lambda i: speak(base, f"Worker test number {i}.", response_format="wav"),
                                 range(6)))  # fmt: skip
    for response in buffered:
        assert response.status_code == 200, response.text
        audio = decode(response.content, "wav")
        assert audio.duration > 0.1
    status, received, error = stream_pcm(base, "A streamed sentence. And a second one.")
    assert (status, error) == (200, None)
    assert received > 0 and received % 2 == 0
    # Identical requests again: cache hits, from either worker, the same bytes.
    again = speak(base, "Worker test number 0.", response_format="wav")
    assert again.headers["x-cache"] == "HIT"
    assert again.content[44:] == buffered[0].content[44:]  # the samples (a hit's header has real sizes)
    both_serve(reference2, lambda i: speak(base, f"Worker test number {i % 6}.", response_format="wav"))


def test_a_voice_uploaded_through_one_worker_speaks_through_both(reference2: ServerProcess):
    base = reference2.base_url

    def upload(name: str) -> httpx.Response:
        files = {"audio_sample": ("a.wav", audio_file("wav"))}
        return httpx.post(base + "/v1/audio/voices", data={"name": name, "consent": "true"}, files=files,
                          timeout=TIMEOUT)  # fmt: skip

    created = upload("shared-one")
    assert created.status_code == 201, created.text
    voice = created.json()["id"]
    before = served_by(reference2)
    for round_ in range(10):  # until both workers have spoken with it
        with ThreadPoolExecutor(4) as pool:
            texts = [f"Round {round_} line {i}." for i in range(4)]
            answers = list(pool.map(lambda t: speak(base, t, voice=voice, response_format="pcm"), texts))
        assert all(a.status_code == 200 and a.content for a in answers), [a.text for a in answers]
        now = served_by(reference2)
        if all(now.get(w, 0) > before.get(w, 0) for w in ("0", "1")):
            break
    else:
        pytest.fail("one worker never served the uploaded voice")
    # The library's cap (2) holds for both workers together.
    assert upload("shared-two").status_code == 201
    for i in range(6):
        full = upload(f"shared-more-{i}")
        assert full.status_code == 409 and full.json()["error"]["code"] == "library_full", full.text
    listed = [httpx.get(base + "/v1/audio/voices", timeout=10).json()["voices"] for _ in range(4)]
    assert all({"shared-one", "shared-two"} <= {v["name"] for v in voices} for voices in listed)


def both_serve(proc: ServerProcess, request) -> None:
    """Requests, a round of 8 at once at a time, until both workers have answered some."""
    for _round in range(10):
        if set(served_by(proc)) == {"0", "1"}:
            return
        with ThreadPoolExecutor(8) as pool:
            assert all(r.status_code == 200 for r in pool.map(request, range(8)))
    assert set(served_by(proc)) == {"0", "1"}, log_of(proc)[-4000:]


@pytest.fixture(scope="module")
def sim2(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("topology-sim")
    proc = start(["--engine", "sim", "--data-dir", str(data), "--sim-step-ms", "40", "--max-concurrent", "8",
                  "--max-queue", "0", "--drain-s", "0"])  # fmt: skip
    yield proc
    proc.stop()


def health(base: str) -> dict:
    return httpx.get(base + "/health", timeout=10).json()


def test_sim_many_connections_reach_both_workers(sim2: ServerProcess):
    base = sim2.base_url
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: stream_pcm(base, f"Connection {i} says hello."), range(16)))
    assert all(r[0] == 200 and r[2] is None and r[1] > 0 for r in results), results
    # The same text twice gives the same length (the sim's length follows the text).
    assert results[0][1] == stream_pcm(base, "Connection 0 says hello.")[1]
    both_serve(sim2, lambda i: speak(base, f"Connection {i} says hello.", response_format="pcm"))


def test_admission_is_global(sim2: ServerProcess):
    """8 slots, no queue, for both workers together: the ninth concurrent stream is refused."""
    base = sim2.base_url
    with ThreadPoolExecutor(8) as pool:
        running = [pool.submit(stream_pcm, base, f"{LONG} {i}.") for i in range(8)]
        wait_for(lambda: health(base)["requests_generating"] == 8, timeout=30)
        refused = [speak(base, f"One more {i}.", response_format="pcm") for i in range(4)]
        assert all(r.status_code == 429 for r in refused), [r.status_code for r in refused]
        assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
        assert all(f.result()[0] == 200 for f in running)
    wait_for(lambda: health(base)["requests_generating"] == 0, timeout=30)


def kill_worker_0_mid_stream(proc: ServerProcess) -> tuple[int, list[tuple[int, int, str | None]]]:
    """Eight long streams, worker 0 killed while they run: (streams it had, every stream's outcome)."""
    base, victim = proc.base_url, pid_of(proc, "worker 0")
    started = log_of(proc).count("[worker 0]: voxport")
    with ThreadPoolExecutor(8) as pool:
        running = [pool.submit(stream_pcm, base, f"{LONG} {victim} {i}.") for i in range(8)]
        wait_for(lambda: health(base)["requests_generating"] == 8, timeout=30)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: re.search(rf"worker w0-{victim} gone", log_of(proc)) is not None, timeout=30)
        cancelled = int(
            re.search(rf"worker w0-{victim} gone: (\d+) streams cancelled", log_of(proc)).group(1)
        )
        # Its slots are freed at once (a generous bound): the survivors' streams are still running.
        wait_for(lambda: health(base)["requests_generating"] <= 8 - cancelled, timeout=10, every=0.05)
        results = [f.result() for f in running]
    # A new worker 0 takes the dead one's place.
    wait_for(lambda: pid_of(proc, "worker 0") != victim, timeout=30)
    wait_for(lambda: log_of(proc).count("[worker 0]: voxport") > started, timeout=TIMEOUT)
    return cancelled, results


def test_worker_killed_mid_stream(sim2: ServerProcess):
    base = sim2.base_url
    for _attempt in range(4):  # until the kill catches streams on both workers
        cancelled, results = kill_worker_0_mid_stream(sim2)
        finished = [r for r in results if r[0] == 200 and r[2] is None]
        broken = [r for r in results if r[2] is not None]
        assert len(finished) + len(broken) == 8, results
        assert len(broken) == cancelled, (results, cancelled)
        assert all(r[1] > 0 for r in finished)
        if cancelled and finished:
            break
    else:
        pytest.fail("the kill never caught streams on both workers")
    wait_for(lambda: health(base)["requests_generating"] == 0, timeout=30)
    before = served_by(sim2).get("0", 0)
    with ThreadPoolExecutor(8) as pool:
        assert all(r[0] == 200 for r in pool.map(lambda i: stream_pcm(base, f"After {i}."), range(16)))
    assert served_by(sim2).get("0", 0) > before  # the new worker 0 serves


def test_engine_host_killed_then_back(sim2: ServerProcess):
    base = sim2.base_url
    host = pid_of(sim2, "engine host")
    os.kill(host, signal.SIGKILL)
    wait_for(lambda: httpx.get(base + "/ready", timeout=10).status_code == 503, timeout=30, every=0.05)
    while (response := speak(base, "While the engine is away.", response_format="pcm")).status_code == 200:
        pass  # answered before this worker noticed; the next one must not be
    assert response.status_code == 503, response.text
    wait_for(lambda: pid_of(sim2, "engine host") != host, timeout=30)
    # Back: both workers ready again (every /ready answers 200), and voices speak on the new host.
    wait_for(lambda: all(httpx.get(base + "/ready", timeout=10).status_code == 200 for _ in range(6)))
    after = speak(base, "The engine is back.", response_format="pcm")
    assert after.status_code == 200 and len(after.content) > 0, after.text


def test_sigterm_drains_both_workers(tmp_path: Path):
    proc = start(["--engine", "sim", "--data-dir", str(tmp_path), "--sim-step-ms", "40", "--drain-s", "3"])
    try:
        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(stream_pcm, proc.base_url, LONG) for _ in range(4)]
            wait_for(lambda: health(proc.base_url)["requests_generating"] == 4, timeout=30)
            proc.proc.send_signal(signal.SIGTERM)
            # Draining: every worker answers /ready with 503 while it still serves.
            wait_for(lambda: all(httpx.get(proc.base_url + "/ready", timeout=10).status_code == 503
                                 for _ in range(6)), timeout=10, every=0.05)  # fmt: skip
            assert all(f.result()[0] == 200 and f.result()[2] is None for f in running)
        assert proc.proc.wait(timeout=60) == 0
    finally:
        out = proc.stop()
    assert "stopping 2 workers" in out


def test_cancel_by_request_id_reaches_the_worker_that_serves_it(sim2: ServerProcess):
    base = sim2.base_url
    body = {
        "model": "tts-1",
        "input": LONG,
        "voice": "alloy",
        "response_format": "pcm",
        "stream_format": "audio",
    }
    for i in range(8):
        headers = {"X-Request-Id": f"stream-{i}"}
        with httpx.stream("POST", base + SPEECH, json={**body, "input": f"{LONG} {i}"}, headers=headers,
                          timeout=TIMEOUT) as response:  # fmt: skip
            assert response.status_code == 200
            chunks = response.iter_bytes()
            next(chunks)
            answer = httpx.post(base + SPEECH + "/cancel", json={"request_id": f"stream-{i}"},
                                headers={"X-Request-Id": f"cancel-{i}"}, timeout=30)  # fmt: skip
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"request_id": f"stream-{i}", "cancelled": True}
            b"".join(chunks)  # the stream ends early, cleanly
    pattern = r"\[worker (\d)\]: request_id=((?:stream|cancel)-\d) "
    served = {request: worker for worker, request in re.findall(pattern, log_of(sim2))}
    crossed = [i for i in range(8) if served.get(f"stream-{i}") != served.get(f"cancel-{i}")]
    assert crossed, served  # at least one cancel answered by the other worker
