"""The playground (docs/playground.md): served by voxport itself, offline, and usable in a real browser.

The browser test drives Debian's Chromium (/usr/bin/chromium) with Playwright against a real `voxport serve`
on the tiny checkpoint. Without Chromium it skips, unless VOXPORT_REQUIRE_BROWSER is set (CI sets it), where
it fails instead: a missing browser must never pass for a working page."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, ServerProcess, make_settings, tiny_server
from voxport.app import create_app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
# Every generation on the tiny checkpoint runs to --max-length: one sentence lasts exactly this long.
SENTENCE_SECONDS = TEST_MAX_LENGTH * STEP_SECONDS


async def _get(app, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get(path, **kwargs)


@pytest.mark.parametrize("path", ["/", "/playground"])
async def test_the_page_needs_no_key_but_the_api_does(tiny_model: Path, tmp_path: Path, path: str) -> None:
    app = create_app(make_settings(tiny_model, tmp_path, api_keys=["secret"]))
    page = await _get(app, path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/playground/playground.js", "/playground/playground.css"):
        assert (await _get(app, asset)).status_code == 200
        assert asset in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    assert (await _get(app, "/v1/voices")).status_code == 401


@pytest.mark.parametrize("path", ["/", "/playground", "/playground/playground.js"])
async def test_no_playground_answers_404_in_the_openai_envelope(
    tiny_model: Path, tmp_path: Path, path: str
) -> None:
    app = create_app(make_settings(tiny_model, tmp_path, playground=False))
    resp = await _get(app, path)
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "--no-playground" in resp.json()["error"]["message"]


def test_the_page_ships_as_package_data() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"static/*"' in pyproject
    static = ROOT / "src" / "voxport" / "static"
    assert {p.name for p in static.iterdir()} >= {"playground.html", "playground.js", "playground.css"}


def _browser_or_skip():
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is not installed (apt-get install chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            missing = "the playwright package is not installed (the dev extra)"
    if missing and os.environ.get("VOXPORT_REQUIRE_BROWSER"):
        pytest.fail(f"VOXPORT_REQUIRE_BROWSER is set but {missing}")
    if missing:
        pytest.skip(f"browser test needs Chromium and playwright: {missing}")
    return sync_playwright


@pytest.fixture(scope="module")
def pg_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with tiny_server(tiny_model, tmp_path_factory.mktemp("playground-data")) as proc:
        yield proc


def _speak(page) -> dict:
    page.evaluate("window.voxport.last = null")
    page.get_by_role("button", name="Speak", exact=True).click()
    page.wait_for_function("window.voxport.last !== null", timeout=120_000)
    return page.evaluate("window.voxport.last")


def _assert_one_sentence(last: dict) -> None:
    assert last["format"] == "pcm" and last["sampleRate"] == 24000
    assert last["seconds"] == pytest.approx(SENTENCE_SECONDS, abs=0.02)
    assert last["scheduledSamples"] == last["samples"]  # all of it went through the Web Audio graph
    assert last["decodedSamples"] == last["samples"]  # and the downloadable WAV decodes to the same
    assert 0 < last["ttfa"] <= last["elapsed"] and last["rtf"] > 0


@contextmanager
def _browser(tmp_path: Path, extra_args: tuple[str, ...] = (), **options) -> Iterator:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args],
            headless=True,
            bypass_csp=True,  # Playwright's wait_for_function evaluates strings; the page itself never does
            **options,
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


def test_the_playground_in_a_browser(pg_server: ServerProcess, tmp_path: Path) -> None:
    tone = tmp_path / "tone.wav"
    t = np.arange(3 * 24000) / 24000
    sf.write(tone, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000)
    requests: list[str] = []
    with _browser(tmp_path, viewport={"width": 1100, "height": 900}) as browser:
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: d.accept())
        page.goto(f"{pg_server.base_url}/playground")
        page.wait_for_function("document.querySelectorAll('#voice option').length > 0")
        assert "alloy" in page.locator("#voice").inner_text()
        assert "a neutral, clear adult voice" in page.locator("#voice-desc").inner_text()  # alloy

        page.select_option("#voice", "echo")
        page.fill("#input", "The quick brown fox jumps over the lazy dog.")
        _assert_one_sentence(_speak(page))
        assert page.locator("#history li").count() == 1
        assert "RTF" in page.locator("#history li").first.inner_text()

        page.fill("#clone-name", "tone")
        page.set_input_files("#clone-file", str(tone))
        page.fill("#clone-text", "A steady tone.")
        page.check("#clone-consent")
        page.get_by_role("button", name="Save voice").click()
        picked = "document.querySelector('#voice option:checked').textContent === 'tone (yours)'"
        page.wait_for_function(picked, timeout=60_000)
        cloned = page.eval_on_selector("#voice", "el => el.value")
        assert cloned.startswith("voice_")
        assert not page.locator("#delete-voice").is_disabled()
        _assert_one_sentence(_speak(page))
        assert page.locator("#history li").count() == 2
        assert page.locator("#history a[download]").first.get_attribute("download").endswith(".wav")

        page.select_option("#response_format", "wav")  # streamed whole, played in an audio element
        wav = _speak(page)
        assert wav["decodedSeconds"] == pytest.approx(SENTENCE_SECONDS, abs=0.02)
        assert wav["samples"] == wav["decodedSamples"] and wav["scheduledSamples"] is None
        page.select_option("#response_format", "pcm")

        page.fill("#speed", "9")
        page.get_by_role("button", name="Speak", exact=True).click()
        error = page.locator('[data-param="speed"] .err')
        error.wait_for(state="visible")
        assert "speed" in error.inner_text().lower()
        assert page.locator("#speed").get_attribute("aria-invalid") == "true"
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        if os.environ.get("VOXPORT_UPDATE_SCREENSHOT"):  # refresh the one the docs show
            shutil.copy(tmp_path / "playground.png", ROOT / "docs" / "playground.png")

        page.locator("#delete-voice").click()
        page.wait_for_function(f"!document.querySelector('#voice option[value={cloned}]')")
    foreign = [u for u in requests if not u.startswith(pg_server.base_url) and urlsplit(u).scheme not in
               ("blob", "data")]  # fmt: skip
    assert requests and foreign == []


def test_a_text_too_long_for_one_request_runs_as_a_job(tiny_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path / "data"),
                            "--max-length", str(TEST_MAX_LENGTH), "--max-input-chars", "100"])  # fmt: skip
    try:
        server.wait_ready()
        with _browser(tmp_path) as context:
            page = context.new_page()
            page.goto(f"{server.base_url}/playground")
            page.wait_for_function("document.querySelectorAll('#voice option').length > 0")
            text = ("This is the first sentence of a text that is too long for one request. "
                    "And this second sentence makes the whole text longer than the limit.")  # fmt: skip
            assert len(text) > 100
            page.fill("#input", text)
            page.select_option("#response_format", "wav")
            page.evaluate("window.voxport.job = null")
            page.get_by_role("button", name="Speak", exact=True).click()
            page.wait_for_function("window.voxport.job && window.voxport.job.status === 'succeeded'",
                                   timeout=120_000)  # fmt: skip
            job = page.evaluate("window.voxport.job")
            assert job["progress"]["segments_done"] == job["progress"]["segments_total"] == 2
            progress = page.locator("#history .job-progress").first.inner_text()
            assert job["id"] in progress and "succeeded" in progress
            page.locator("#history a[download]").first.wait_for()
            assert page.locator("#history audio").count() >= 1
    finally:
        server.stop()


def test_a_phone_with_a_key_records_a_voice(tiny_model: Path, tmp_path: Path) -> None:
    _browser_or_skip()
    server = ServerProcess(["--model", str(tiny_model), "--data-dir", str(tmp_path / "data"),
                            "--max-length", str(TEST_MAX_LENGTH), "--api-keys", "secret"])  # fmt: skip
    sent: list[tuple[str, str | None]] = []
    try:
        server.wait_ready()
        # A fake microphone (Chromium's beep) that needs no permission prompt, for the recording.
        fake_mic = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
        phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
        with _browser(tmp_path, fake_mic, **phone) as ctx:
            page = ctx.new_page()
            page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
            page.goto(server.base_url + "/")
            page.locator("#key-section").wait_for(state="visible")
            assert page.evaluate("document.activeElement.id") == "api-key"  # focus moves to the key field
            page.keyboard.type("secret")
            page.keyboard.press("Enter")
            page.wait_for_function("document.querySelectorAll('#voice option').length > 0")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways
            page.fill("#input", "Hi.")
            last = _speak(page)
            assert last["seconds"] == pytest.approx(SENTENCE_SECONDS, abs=0.02)
            assert page.evaluate("sessionStorage.getItem('voxport.apiKey')") == "secret"

            page.get_by_role("button", name="Record from microphone").click()
            page.get_by_role("button", name="Stop recording").wait_for()
            page.wait_for_timeout(2500)
            page.get_by_role("button", name="Stop recording").click()
            page.locator("#recorded").wait_for(state="visible")
            page.fill("#clone-name", "mic")
            page.check("#clone-consent")
            page.get_by_role("button", name="Save voice").click()
            picked = "document.querySelector('#voice option:checked').textContent === 'mic (yours)'"
            page.wait_for_function(picked, timeout=60_000)
    finally:
        server.stop()
    api = [(url, auth) for url, auth in sent if "/v1/" in url]
    keyed = api[[auth for _, auth in api].index("Bearer secret") :]
    assert keyed and all(auth == "Bearer secret" for _, auth in keyed)
    assert any(url.endswith("/v1/audio/speech/stream") for url, _ in keyed)


def test_a_missing_browser_skips_only_when_not_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("VOXPORT_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium is not installed"):
        _browser_or_skip()
    monkeypatch.setenv("VOXPORT_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="VOXPORT_REQUIRE_BROWSER is set"):
        _browser_or_skip()
