"""What a new user meets first: the README's own Python example, the API pages (/docs, /redoc) and the
OpenAPI document they show, and the server's start-up output."""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import pytest

from tests.audio_check import decode
from tests.conftest import ServerProcess
from tests.test_playground import _browser

ROOT = Path(__file__).resolve().parents[1]


def _readme_python() -> str:
    return (ROOT / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_example_writes_a_wav_of_its_real_length(
    server: ServerProcess, tmp_path: Path
) -> None:
    snippet = _readme_python()
    assert "http://127.0.0.1:8000/v1" in snippet and 'write_to_file("hello.wav")' in snippet
    script = snippet.replace("http://127.0.0.1:8000", server.base_url)  # the fixture's port; nothing else
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=300)
    data = (tmp_path / "hello.wav").read_bytes()
    with wave.open(str(tmp_path / "hello.wav")) as w:
        frames, rate, width = w.getnframes(), w.getframerate(), w.getsampwidth()
        assert len(w.readframes(frames)) == frames * width  # the header's count is what the file holds
    assert frames > 0 and len(data) == 44 + frames * width
    decoded = decode(data, "wav")  # ffmpeg reads the samples themselves
    assert decoded.samples.size == frames and decoded.sample_rate == rate


def _walk(schema: dict, components: dict, where: str, seen: set[str]) -> list[str]:
    """Request fields without a description, below `schema`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return []
        seen.add(name)
        schema, where = components[name], name
    missing = []
    nested = [*schema.get("anyOf", []), *schema.get("oneOf", []), *schema.get("allOf", [])]
    nested += [schema[k] for k in ("items", "additionalProperties") if isinstance(schema.get(k), dict)]
    for prop, sub in schema.get("properties", {}).items():
        if not sub.get("description"):
            missing.append(f"{where}.{prop}")
        nested.append(sub)
    for sub in nested:
        missing += _walk(sub, components, where, seen)
    return missing


async def test_every_request_field_and_parameter_is_described(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    components = spec["components"]["schemas"]
    missing, fields = [], 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                fields += 1
                if not parameter.get("description"):
                    missing.append(f"{method.upper()} {path}: parameter {parameter['name']}")
            for content_type, content in operation.get("requestBody", {}).get("content", {}).items():
                where = f"{method.upper()} {path} ({content_type})"
                fields += len(content["schema"].get("properties", {}))
                missing += _walk(content["schema"], components, where, set())
    assert fields > 50  # the walk reached the routes' bodies and parameters
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_load_nothing_from_another_host(
    server: ServerProcess, tmp_path: Path, page: str
) -> None:
    requested: list[str] = []
    with _browser(tmp_path) as context:
        tab = context.new_page()
        tab.on("request", lambda request: requested.append(request.url))
        tab.goto(f"{server.base_url}{page}", wait_until="networkidle", timeout=120_000)
        # Rendered from the document: the speech route's summary is on the page.
        tab.get_by_text("/v1/audio/speech/cancel").first.wait_for(timeout=120_000)
        tab.wait_for_load_state("networkidle", timeout=60_000)
    assert any(url.endswith("/openapi.json") for url in requested)
    elsewhere = [
        url for url in requested if not re.match(rf"({re.escape(server.base_url)}/|data:|blob:)", url)
    ]
    assert not elsewhere, elsewhere


# With --workers (VOXPORT_TEST_WORKERS=2) a worker's lines name it after the logger: "[worker 1]".
_OUR_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+( \[worker \d+\])?: ."
)


def test_start_up_output_is_voxports_own_lines(server: ServerProcess) -> None:
    output = server.output()
    assert " ready: model " in output
    start_up = output.split(" ready: model ", 1)[0].splitlines()[:-1]  # up to the line saying it is ready
    assert len(start_up) >= 3  # the engine's and the voices' lines
    foreign = [line for line in start_up if not _OUR_LINE.match(line)]
    assert not foreign, "\n".join(foreign)  # no bare prints (voxcpm's), warnings or uvicorn's own format


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [({"input": ""}, "input", "at least 1 character, not 0"),
     ({"dialogue": []}, "dialogue", "at least 1 item"),
     ({"instructions": "x" * 4097}, "instructions", "at most 4096 characters")],
)  # fmt: skip
async def test_length_errors_speak_of_the_fields_own_type(
    http: httpx.AsyncClient, fields: dict, param: str, words: str
) -> None:
    body = {"model": "tts-1", "input": "Hi.", **fields}
    if "dialogue" in fields:
        del body["input"]
    error = (await http.post("/v1/audio/speech", json=body)).json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert words in error["message"]


def test_doc_commands_work_after_the_readme_set_up() -> None:
    """`voxport` is in .venv/bin, not on PATH: command blocks say `scripts/dev serve`, not `voxport serve`."""
    bare = re.compile(r"^(\w+=\S+ )*voxport \w")
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = page.read_text().split("```")[1::2]  # the fenced blocks' contents
        found += [
            f"{page.name}: {line}"
            for block in blocks
            for line in block.splitlines()
            if bare.match(line.strip())
        ]
    assert not found, "\n".join(found)


async def test_the_voices_page_shows_the_fields_the_server_returns(http: httpx.AsyncClient) -> None:
    page = (ROOT / "docs" / "voices.md").read_text()
    listing = page.split("`GET /v1/voices`, richer:", 1)[1]
    example, prose = listing.split("```json\n", 1)[1].split("```", 1)
    voice = (await http.get("/v1/voices")).json()["data"][0]
    documented = {"id"} | set(re.findall(r'"(\w+)":', example.split('{"id"')[1]))  # its first voice
    assert documented == set(voice)
    assert set(re.findall(r'"(\w+)":', page.split("A voice object carries", 1)[1].split("```", 2)[1])) == set(
        voice
    )
    named = set(
        re.findall(r"`(\w+)` is", prose.strip().split("\n\n", 1)[0])
    )  # "`kind` is ...; `prompt` is ..."
    assert named and named <= set(voice), named - set(voice)
    simple = (await http.get("/v1/audio/voices")).json()["voices"][0]
    shown = set(re.findall(r'"(\w+)":', page.split("`GET /v1/audio/voices`", 1)[1].split("```")[1]))
    assert {"voices"} | set(simple) == shown


def test_the_first_normalize_request_wait_is_documented() -> None:
    """The normaliser is built on first use, not at start (docs/api.md says so, and what it costs)."""
    row = next(
        line
        for line in (ROOT / "docs" / "api.md").read_text().splitlines()
        if line.startswith("| `normalize`")
    )
    assert "The first such request after a start also builds voxcpm's normaliser" in row
    assert (
        "building voxcpm's text normaliser" in (ROOT / "src" / "voxport" / "engine" / "compat.py").read_text()
    )
