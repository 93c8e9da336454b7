"""The documentation stays true to the code: every setting is documented with its flag and variable, and
every speech request field (and what a timed answer carries) in docs/api.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voxport.cli import build_parser
from voxport.config import Settings
from voxport.protocol import DialogueTurn, SpeechAudioSegmentEvent, SpeechCreateParams, SpeechTimedAudio

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert f"`--{name.replace('_', '-')}" in text
    assert f"`VOXPORT_{name.upper()}`" in text


def test_every_setting_is_a_flag() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    assert {f"--{n.replace('_', '-')}" for n in Settings.model_fields} <= flags


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["scripts/dev serve", "scripts/dev test"]
    assert "scripts/dev test" in (ROOT / ".ci" / "run").read_text()


_SPEECH_FIELDS = [
    (model.__name__, name)
    for model in (SpeechCreateParams, DialogueTurn, SpeechTimedAudio, SpeechAudioSegmentEvent)
    for name in model.model_fields
]


@pytest.mark.parametrize(("model", "name"), _SPEECH_FIELDS, ids=[f"{m}.{n}" for m, n in _SPEECH_FIELDS])
def test_every_speech_field_is_in_the_api_docs(model: str, name: str) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    assert f"`{name}`" in text or f'"{name}":' in text, f"{model}.{name} is not in docs/api.md"


def test_the_suites_ci_runs_against_two_workers_are_the_ones_the_docs_name() -> None:
    run = (ROOT / ".ci" / "run").read_text().split("VOXPORT_TEST_WORKERS=2 scripts/dev test", 1)[1]
    in_ci = re.findall(r"tests/test_\w+\.py", run.split("\n#", 1)[0])
    docs = (ROOT / "docs" / "configuration.md").read_text()
    named = docs.split("The suites run against two workers:", 1)[1].split("(about", 1)[0]
    assert sorted(in_ci) == sorted(re.findall(r"tests/test_\w+\.py", named))
    assert all((ROOT / suite).is_file() for suite in in_ci)
