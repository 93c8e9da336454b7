"""Every curl line in the README and docs/ runs against a real server and gets a 2xx.

A command is taken from a ```sh block up to its first pipe (players such as ffplay are not run); its
`@file` uploads are given a real recording, and its host is the test server's.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)


def curl_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in _BLOCK.findall(doc.read_text()):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                if line.startswith("curl "):
                    found.append((f"{doc.name}: {line[:60]}", line))
    return found


COMMANDS = curl_commands()


def test_the_docs_have_curl_examples() -> None:
    assert len(COMMANDS) >= 4


def _runnable(command: str, base_url: str) -> list[str]:
    words = shlex.split(command)
    if "|" in words:
        words = words[: words.index("|")]
    words = [re.sub(r"^https?://(127\.0\.0\.1|localhost|HOST):8000", base_url, w) for w in words]
    return [*words, "-sS", "-w", "\n%{http_code}"]


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=[name for name, _ in COMMANDS])
def test_curl_example_runs(command: str, server, tmp_path: Path) -> None:
    for name in re.findall(r"=@([\w.-]+)", command):  # a 3 s recording for every upload
        t = np.arange(3 * 16000) / 16000
        sf.write(tmp_path / name, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    words = _runnable(command, server.base_url)
    done = subprocess.run(words, cwd=tmp_path, capture_output=True, timeout=120)
    status = done.stdout.rsplit(b"\n", 1)[-1].decode()
    assert done.returncode == 0, done.stderr.decode()
    assert status.startswith("2"), (status, done.stdout[-500:])
    for out in (w for i, w in enumerate(words) if i and words[i - 1] == "-o"):
        assert (tmp_path / out).stat().st_size > 0
