"""voices.json is validated at start-up; a bad entry stops it with a message naming entry and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_voices import OPENAI_VOICES  # noqa: E402
from voxport.config import DEFAULT_VOICES_DIR, DEFAULT_VOICES_FILE
from voxport.voices import VoicesFileError, load_voices_file


def test_shipped_file_has_openai_voices_with_distinct_designs() -> None:
    voices = load_voices_file(DEFAULT_VOICES_FILE, DEFAULT_VOICES_DIR)
    assert list(voices) == OPENAI_VOICES
    assert len({v.description for v in voices.values()}) == len(voices)
    assert len({v.seed for v in voices.values()}) == len(voices)


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "voices.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"voices": [{"id": "a", "description": "calm", "seed": 1}, {"id": "b", "seed": 2}]},
            "voice #2 ('b'), field 'description'",
        ),
        ({"voices": [{"id": "a", "description": "calm", "seed": -1}]}, "voice #1 ('a'), field 'seed'"),
        ({"voices": [{"id": "a", "description": "calm (very)", "seed": 1}]}, "field 'description'"),
        ({"voices": [{"id": "../x", "description": "calm", "seed": 1}]}, "field 'id'"),
        ({"voices": [{"id": "a", "description": "calm", "seed": 1, "colour": "red"}]}, "field 'colour'"),
        (
            {
                "voices": [
                    {"id": "a", "description": "x", "seed": 1},
                    {"id": "a", "description": "y", "seed": 2},
                ]
            },
            "listed twice",
        ),
        ({"voices": []}, "field 'voices'"),
        ("{broken", "cannot be read"),
    ],
)
def test_invalid_files_are_named(tmp_path: Path, data, expected: str) -> None:
    with pytest.raises(VoicesFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_voices_file(_write(tmp_path, data), tmp_path)


def test_serve_refuses_to_start_on_a_bad_voices_file(tiny_model: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, {"voices": [{"id": "alloy", "description": "calm"}]})
    result = subprocess.run(
        [sys.executable, "-m", "voxport", "serve", "--model", str(tiny_model), "--voices-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "voice #1 ('alloy'), field 'seed'" in result.stderr


def test_serve_refuses_a_default_voice_that_does_not_exist(tiny_model: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voxport", "serve", "--model", str(tiny_model), "--default-voice", "zelda"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "default voice 'zelda'" in result.stderr
