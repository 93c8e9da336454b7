"""Start-up survives bad files (issue 29, item 8): an undecodable library recording, a library voice or a
consent whose JSON is nested past the parser's depth, a job row that does not parse, and a cache entry that
is a directory are skipped, logged once and named in /health's `skipped`; everything else serves. A cache
entry that turns into a directory or a header nested too deep is a miss and is replaced, never a 500, and
/admin/cache/clear never follows a symlinked cache subdirectory out of the data dir. Real server processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MAX_LENGTH, ServerProcess
from tests.test_voices import audio_file

NESTED = b"[" * 100_000 + b"]" * 100_000
BAD_VOICE = "voice_00000000000000aa"
NESTED_VOICE = "voice_00000000000000bb"
BAD_CONSENT = "cons_000000000000000000000000"
BAD_JOB = "speechjob_000000000000000000000000"
DIR_ENTRY = "ab" + "0" * 30 + ".audio"


def start(tiny_model: Path, data: Path) -> ServerProcess:
    proc = ServerProcess(["--model", str(tiny_model), "--data-dir", str(data), "--max-length",
                          str(TEST_MAX_LENGTH), "--design-clip-seconds", "1"])  # fmt: skip
    try:
        proc.wait_ready()
    except (RuntimeError, TimeoutError) as exc:
        out = proc.stop()
        pytest.fail(f"the server did not start ({exc}):\n{out[-4000:]}")
    return proc


def seed(data: Path, outside: Path) -> None:
    library = data / "voices" / "library"
    for voice_id, meta, audio in (
        (BAD_VOICE, None, b"RIFF this is not audio"),
        (NESTED_VOICE, NESTED, audio_file("wav")),
    ):
        folder = library / voice_id
        folder.mkdir(parents=True)
        (folder / "audio.wav").write_bytes(audio)
        default = {"id": voice_id, "name": "Broken", "key": voice_id, "transcript": None, "duration": 2.0,
                   "created": 1.0, "consent": None}  # fmt: skip
        (folder / "voice.json").write_bytes(meta or json.dumps(default).encode())
    consents = data / "voices" / "consents"
    consents.mkdir(parents=True)
    (consents / f"{BAD_CONSENT}.json").write_bytes(NESTED)
    jobs = data / "jobs"
    jobs.mkdir(parents=True)
    with sqlite3.connect(jobs / "jobs.sqlite3") as db:  # the store adds its tables and keeps this row
        db.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
                   "scope TEXT NOT NULL, idempotency_key TEXT, batch_id TEXT, status TEXT NOT NULL, "
                   "created_at REAL NOT NULL, started_at REAL, finished_at REAL, expires_at REAL, "
                   "request TEXT NOT NULL, metadata TEXT, webhook_url TEXT, segments TEXT, "
                   "segments_done INTEGER NOT NULL DEFAULT 0, segments_total INTEGER NOT NULL DEFAULT 0, "
                   "audio_seconds REAL NOT NULL DEFAULT 0, segments_generated INTEGER NOT NULL DEFAULT 0, "
                   "error TEXT, result TEXT)")  # fmt: skip
        db.execute("INSERT INTO jobs (id, scope, status, created_at, request) VALUES (?, '', 'queued', 1, ?)",
                   (BAD_JOB, "{not json"))  # fmt: skip
    (data / "cache" / "ab" / DIR_ENTRY).mkdir(parents=True)
    (outside / "zz" / "kept").mkdir(parents=True)
    (outside / "zz" / ("zz" + "0" * 30 + ".audio")).write_bytes(b"not the cache's to remove")
    (data / "cache" / "zz").symlink_to(outside / "zz", target_is_directory=True)


def speak(proc: ServerProcess, text: str) -> httpx.Response:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav", "stream": False}
    return httpx.post(f"{proc.base_url}/v1/audio/speech", json=body, timeout=120)


def entries(data: Path) -> list[Path]:
    return [
        p for d in (data / "cache").iterdir() if not d.is_symlink() for p in d.glob("*.audio") if p.is_file()
    ]


def test_bad_files_are_skipped_and_named_and_everything_else_serves(tiny_model: Path, tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    seed(data, outside)
    proc = start(tiny_model, data)
    try:
        health = httpx.get(f"{proc.base_url}/health", timeout=10).json()
        assert health["ready"] is True
        skipped = {(s["kind"], s["name"]) for s in health["skipped"]}
        assert {("voice", BAD_VOICE), ("voice", NESTED_VOICE), ("consent", BAD_CONSENT),
                ("cache", DIR_ENTRY)} <= skipped  # fmt: skip
        assert not any("/" in name for _, name in skipped)  # names, never server paths
        first = speak(proc, "The server serves.")
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        voices = httpx.get(f"{proc.base_url}/v1/audio/voices", timeout=10).json()["voices"]
        assert "alloy" in {v["id"] for v in voices} and BAD_VOICE not in {v["id"] for v in voices}
        consents = httpx.get(f"{proc.base_url}/v1/audio/voice_consents", timeout=10)
        assert consents.status_code == 200 and consents.json()["data"] == []
        listed = httpx.get(f"{proc.base_url}/v1/audio/speech/jobs", timeout=10)
        assert listed.status_code == 200 and BAD_JOB not in {j["id"] for j in listed.json()["data"]}
        assert httpx.get(f"{proc.base_url}/v1/audio/speech/jobs/{BAD_JOB}", timeout=10).status_code == 404
        later = httpx.get(f"{proc.base_url}/health", timeout=10).json()["skipped"]
        assert ("job", BAD_JOB) in {(s["kind"], s["name"]) for s in later}
        cleared = httpx.post(f"{proc.base_url}/admin/cache/clear", timeout=30)
        assert cleared.status_code == 200
        assert (outside / "zz" / ("zz" + "0" * 30 + ".audio")).exists()  # the symlink was not followed
        assert (outside / "zz" / "kept").is_dir()
        assert speak(proc, "The server serves.").headers["x-cache"] == "MISS"  # cleared
    finally:
        out = proc.stop()
    assert out.count(BAD_CONSENT) == 1  # logged once
    assert "Traceback" not in out


@pytest.mark.parametrize("damage", ["directory", "nested header"])
def test_a_damaged_cache_entry_is_a_miss_and_is_replaced(
    tiny_model: Path, tmp_path: Path, damage: str
) -> None:
    data, text = tmp_path / "data", "An entry that will be damaged."
    proc = start(tiny_model, data)
    try:
        assert speak(proc, text).headers["x-cache"] == "MISS"
    finally:
        proc.stop()
    [entry] = entries(data)
    entry.unlink()
    if damage == "directory":
        (entry / "inner").mkdir(parents=True)
    else:
        header = b'{"length": 0, "md5": "", "x": ' + NESTED + b"}"
        entry.write_bytes(b"VXPCACH1" + len(header).to_bytes(4, "little") + header)
    proc = start(tiny_model, data)
    try:
        missed = speak(proc, text)
        assert missed.status_code == 200 and missed.headers["x-cache"] == "MISS", missed.text
        assert speak(proc, text).headers["x-cache"] == "HIT"
        assert entry.is_file()
    finally:
        proc.stop()
