"""`voxport bench`: a sweep against a real server and the raw engine end to end, and its parts alone."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import STEP_SECONDS, ServerProcess, free_port
from tests.gates import PACKAGES, missing
from voxport.bench import (
    PROMPTS,
    RTF_DEFINITION,
    LoadPlan,
    RequestResult,
    RequestSpec,
    ServerTarget,
    main,
    run_level,
    summarise,
    sweep,
    write_plot,
)
from voxport.text import segment

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
BENCH_MAX_LENGTH = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_main(argv: list[str]) -> int:
    """main() in its own thread: its asyncio.run must not touch the event loop pytest-asyncio keeps here."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(main, argv).result(timeout=600)


@pytest.mark.timeout(1200)  # run_main's own bound is 600 s
def test_end_to_end_against_server_and_engine(
    server: ServerProcess, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--url",
        server.base_url,
        "--concurrency",
        "1,2",
        "--requests",
        "4",
        "--max-length",
        str(BENCH_MAX_LENGTH),
        "--repeat-fraction",
        "0.5",
        "--engine-model",
        str(tiny_model),
        "--device",
        "cpu",
        "--design-clip-seconds",
        "1",  # as the test server's
        "--out",
        str(tmp_path),
    ]
    assert run_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| server | 1 |" in printed and "| engine | 2 |" in printed
    assert RTF_DEFINITION in printed

    report = json.loads((tmp_path / "bench.json").read_text())
    # The raw engine does the server's work: it clones the same designed voice.
    assert report["engine_info"]["voice"]["id"] == "alloy"
    assert report["engine_info"]["voice"]["prompt_positions"] > 2
    assert report["settings"]["max_length"] == BENCH_MAX_LENGTH
    assert report["settings"]["concurrency"] == [1, 2]
    assert report["machine"]["cpu_count"] and report["machine"]["voxport"]
    assert report["server_info"]["ready"] is True
    assert report["engine_info"]["name"] == "reference"
    expected = BENCH_MAX_LENGTH * STEP_SECONDS
    for side in ("server", "engine"):
        levels = report["levels"][side]
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        for lv in levels:
            assert lv["requests"] == lv["completed"] == 4
            assert lv["errors"] == lv["rejected"] == 0
            assert lv["audio_s_per_s"] > 0 and lv["requests_per_s"] > 0 and lv["rtf"] > 0
            assert lv["first_audio_ms"]["p50"] is not None and lv["total_ms"]["p95"] is not None
            # pcm at 24 kHz, counted from the body's bytes: exactly max_length steps of 0.16 s.
            assert lv["audio_s"]["min"] == pytest.approx(expected, abs=1e-3)
            assert lv["audio_s"]["max"] == pytest.approx(expected, abs=1e-3)
            assert len(lv["results"]) == 4
    server_levels = report["levels"]["server"]
    assert all(lv["rss_before_bytes"] and lv["rss_after_bytes"] for lv in server_levels)
    # Level 2 can repeat what level 1 completed, so its two repeats are certain to be served from cache.
    assert server_levels[1]["repeats"] == 2
    assert server_levels[1]["cache_hits"] >= 1
    hits = [r for lv in server_levels for r in lv["results"] if r["cache"] == "HIT"]
    assert hits and all(r["repeat"] for r in hits)
    fresh_seeds = [r["seed"] for lv in server_levels for r in lv["results"] if not r["repeat"]]
    assert len(fresh_seeds) == len(set(fresh_seeds))

    assert not (tmp_path / "levels.partial.jsonl").exists()  # replaced by the full report

    markdown = (tmp_path / "bench.md").read_text()
    assert (
        "| side | concurrency |" in markdown and "| server | 2 |" in markdown and "| engine | 1 |" in markdown
    )
    assert RTF_DEFINITION in markdown and server.base_url in markdown
    png = tmp_path / "bench.png"
    if HAVE_MATPLOTLIB:
        assert png.read_bytes()[:8] == PNG_MAGIC
    else:
        assert not png.exists()


def test_unreachable_server_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_main(["--url", f"http://127.0.0.1:{free_port()}", "--concurrency", "1", "--requests", "1"]) == 2
    )
    assert "no answer" in capsys.readouterr().err


def test_bad_flags_are_refused() -> None:
    for argv in (["--concurrency", "0,4"], ["--concurrency", "a"], ["--repeat-fraction", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_prompts_are_single_distinct_sentences() -> None:
    assert len(PROMPTS) == len(set(PROMPTS)) >= 16
    for prompt in PROMPTS:
        assert segment(prompt, 300, pack=False) == [prompt]


def test_plan_spreads_repeats_and_only_repeats_completed_requests() -> None:
    plan = LoadPlan(nonce=7, repeat_fraction=0.25)
    assert [plan.repeat_due(i) for i in range(8)] == [False, False, False, True] * 2
    assert sum(LoadPlan(1, 0.1).repeat_due(i) for i in range(10)) == 1
    assert not any(LoadPlan(1, 0.0).repeat_due(i) for i in range(50))
    assert all(LoadPlan(1, 1.0).repeat_due(i) for i in range(50))

    plan = LoadPlan(nonce=100, repeat_fraction=1.0)
    first = plan.next(0)
    assert not first.repeat  # nothing has completed yet: a due repeat goes out fresh
    second = plan.next(1)
    assert not second.repeat and second.seed != first.seed
    plan.completed(first)
    again = plan.next(2)
    assert again.repeat and (again.text, again.seed) == (first.text, first.seed)


def _result(index: int, status: int | None, total: float, audio: float | None, **kw: Any) -> RequestResult:
    return RequestResult(
        index, 0, index, False, status=status, total_s=total, audio_s=audio, first_audio_s=total / 2, **kw
    )


def test_summary_figures() -> None:
    results = [
        _result(0, 200, 1.0, 2.0, cache="MISS"),
        _result(1, 200, 3.0, 2.0, cache="HIT"),
        _result(2, 429, 0.1, None),
        _result(3, 500, 0.1, None),
        _result(4, None, 0.1, None, error="ConnectError: refused"),
    ]
    stats = summarise(4, results, wall_s=2.0, error_samples=[])
    assert (stats.completed, stats.errors, stats.rejected) == (2, 2, 1)
    assert stats.errors_by_status == {"500": 1, "ConnectError": 1}
    assert stats.cache == {"HIT": 1, "MISS": 1} and stats.cache_hits == 1
    assert stats.requests_per_s == pytest.approx(1.0)
    assert stats.audio_s_per_s == pytest.approx(2.0)
    assert stats.rtf == pytest.approx((1.0 / 2.0 + 3.0 / 2.0) / 2)
    assert stats.total_ms["p50"] == pytest.approx(2000.0)
    assert stats.total_ms["p95"] == pytest.approx(2900.0)


def _args(**overrides: Any) -> argparse.Namespace:
    values = {
        "url": "http://bench.test",
        "model": "tts-1",
        "voice": "alloy",
        "format": "pcm",
        "sample_rate": 24000,
        "max_length": 4,
        "stream_route": True,
    }
    return argparse.Namespace(**{**values, **overrides})


async def test_statuses_are_counted_and_error_samples_kept() -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        status = (200, 429, 500, 200)[len(seen) - 1]
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "no"}})
        return httpx.Response(
            200, content=b"\0\0" * 2400, headers={"X-Sample-Rate": "24000", "X-Cache": "MISS"}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://bench.test") as http:
        target = ServerTarget(http, _args(stream_route=False), "run")
        stats = await run_level(target, LoadPlan(1, 0.0), concurrency=1, requests=4, timeout=30)
    assert all(body["stream"] is True and body["max_length"] == 4 for body in seen)
    assert (stats.completed, stats.rejected, stats.errors) == (2, 1, 1)
    assert stats.errors_by_status == {"500": 1}
    assert stats.audio_s["mean"] == pytest.approx(0.1)
    [sample] = stats.error_samples
    assert sample["status"] == 500 and '"no"' in sample["response_body"]
    assert sample["request"]["body"]["input"] == seen[2]["input"]


class _Stuck:
    name = "stuck"

    async def before_level(self) -> dict[str, Any]:
        return {}

    def describe(self, spec: RequestSpec) -> dict[str, Any]:
        return {"text": spec.text}

    async def send(self, spec: RequestSpec, result: RequestResult) -> None:
        result.status = 200  # headers came, then the body stalled
        result.first_audio_s = 0.001
        result.bytes = 2
        await asyncio.Event().wait()

    async def after_level(self, before: dict[str, Any]) -> dict[str, Any]:
        return {"rss_before_bytes": None, "rss_after_bytes": None, "peak_gpu_bytes": None}

    async def gpu_memory(self) -> int | None:
        return None


async def test_a_level_never_hangs() -> None:
    stats = await run_level(_Stuck(), LoadPlan(1, 0.0), concurrency=2, requests=3, timeout=0.05)
    assert (stats.completed, stats.errors) == (0, 3)
    assert stats.errors_by_status == {"timeout": 3}
    # What had arrived before the timeout is kept: a stalled body is told apart from no answer at all.
    assert all(r["status"] == 200 and r["bytes"] == 2 for r in stats.results)
    assert stats.error_samples[0]["request"] == {"text": PROMPTS[0]}


def test_plot_is_a_png(tmp_path: Path) -> None:
    if not HAVE_MATPLOTLIB:
        missing(PACKAGES, "matplotlib is not installed (the dev extra installs it)")
    level = {"concurrency": 1, "audio_s_per_s": 1.0, "first_audio_ms": {"p50": 10.0}}
    levels = {"server": [level, {**level, "concurrency": 4}], "engine": None}
    assert write_plot(tmp_path / "bench.png", levels) is None
    assert (tmp_path / "bench.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_without_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # matplotlib hidden, installed or not: a None in sys.modules makes find_spec and import both fail.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = write_plot(tmp_path / "bench.png", {"server": [], "engine": None})
    assert message and "matplotlib" in message
    assert not (tmp_path / "bench.png").exists()


async def test_levels_are_kept_as_they_complete(tmp_path: Path) -> None:
    # A sweep cut short still leaves the levels it finished, one JSON line each.
    args = argparse.Namespace(repeat_fraction=0.0, requests=2, timeout=0.05, out=str(tmp_path))
    levels = await sweep(_Stuck(), [1, 2], args, nonce=1, progress=lambda message: None)
    lines = [json.loads(line) for line in (tmp_path / "levels.partial.jsonl").read_text().splitlines()]
    assert [(line["side"], line["concurrency"], line["errors"]) for line in lines] == [
        ("stuck", 1, 2),
        ("stuck", 2, 2),
    ]
    assert lines[1] == {"side": "stuck", **asdict(levels[1])}


@pytest.mark.timeout(1200)  # run_main's own bound is 600 s
@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
def test_sim_engine_end_to_end_with_a_spawned_server(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One command: a `voxport serve --engine sim` the bench starts itself, and the same sim engine in
    the bench's process, compared level by level. Fields only; no timing is asserted."""
    argv = ["--engine", "sim", "--spawn-server", "--sim-step-ms", "2", "--sim-step-ms-per-seq", "0.01",
            "--concurrency", "1,4", "--requests", "4", "--max-length", str(BENCH_MAX_LENGTH),
            "--format", fmt, "--out", str(tmp_path),
            "--server-arg=--log-level", "--server-arg=info"]  # fmt: skip
    assert run_main(argv) == 0
    assert "server / engine" in capsys.readouterr().out

    report = json.loads((tmp_path / "bench.json").read_text())
    settings = report["settings"]
    assert settings["spawn_server"] is True and settings["engine"] == "sim"
    assert (settings["sim_step_ms"], settings["sim_step_ms_per_seq"]) == (2.0, 0.01)
    command = settings["server_command"]
    assert command[command.index("--engine") + 1] == "sim"
    assert command[command.index("--sim-step-ms") + 1] == "2.0"
    assert report["server_info"]["engine"] == "sim" and report["engine_info"]["name"] == "sim"
    expected = BENCH_MAX_LENGTH * STEP_SECONDS
    for side in ("server", "engine"):
        for lv in report["levels"][side]:
            assert lv["completed"] == 4 and lv["errors"] == lv["rejected"] == 0
            assert set(lv["first_audio_ms"]) == {"p50", "p95", "p99"}
            # mp3 is counted from its frame headers: the encoder's delay and padding add a frame or two.
            assert lv["audio_s"]["min"] == pytest.approx(expected, abs=0.1)
    for lv in report["levels"]["server"]:
        assert lv["server_cpu_s"] is not None and lv["server_children_cpu_s"] is not None
    comparison = report["comparison"]
    assert [c["concurrency"] for c in comparison] == [1, 4]
    for c in comparison:
        assert c["ratio"] > 0 and c["server_audio_s_per_s"] > 0 and c["engine_audio_s_per_s"] > 0
        assert c["first_audio_overhead_ms"]["p50"] is not None
        assert c["first_audio_overhead_ms"]["p99"] is not None
        assert c["errors"] == c["rejected"] == 0
        assert c["cpu_ms_per_audio_s"] is not None and c["rss_after_bytes"]
    assert "server / engine" in (tmp_path / "bench.md").read_text()
    # The spawned server's own output (at info, as asked above) lands in --out.
    assert "Application startup" in (tmp_path / "server.log").read_text()
