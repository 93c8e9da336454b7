"""Shaping the text and the level of speech, through a real `voxport serve` on the tiny checkpoint: the
pronunciation lexicon (server file, reload, per-request entries, cache key), loudness (buffered and held
for a stream), `language` (validation, segmentation, cache key), and OpenAI's current model and voice names.

The tiny checkpoint never stops by itself: every segment runs to `max_length` steps, so the number of
segments a text was cut into shows in the audio's length. The text the engine received shows in
`usage.input_tokens` of the SSE `speech.audio.done` event: the real tokenizer's count of it."""

from __future__ import annotations

import base64
import io
import json
import typing
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pyloudnorm
import pytest
import soundfile
from openai.types.audio import speech_create_params

from tests.conftest import TEST_MAX_LENGTH, ServerProcess, tiny_server

SPEECH = {"model": "tts-1", "voice": "alloy", "max_length": 4}


@pytest.fixture(scope="module")
def lexicon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lexicon") / "lexicon.json"
    path.write_text(json.dumps({"zyx": "zed why ex"}))
    return path


@pytest.fixture(scope="module")
def shaping(
    tiny_model: Path, lexicon: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with tiny_server(
        tiny_model, tmp_path_factory.mktemp("shaping-data"), "--lexicon-file", str(lexicon)
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(shaping: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shaping.base_url, timeout=120) as client:
        yield client


def _sse(http: httpx.Client, **fields: object) -> tuple[str, dict]:
    """(X-Cache, usage) of an SSE speech request."""
    response = http.post("/v1/audio/speech", json={**SPEECH, "stream_format": "sse", **fields})
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    return response.headers["x-cache"], events[-1]["usage"]


def _error(response: httpx.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    return error["message"]


# -- the lexicon ----------------------------------------------------------------------------------------


def test_a_lexicon_change_changes_the_text_the_engine_reads_and_misses_the_cache(
    http: httpx.Client, lexicon: Path
) -> None:
    text = "Please say zyx twice: Zyx."
    first_cache, first = _sse(http, input=text)
    assert first_cache == "MISS"
    assert _sse(http, input=text) == ("HIT", first)
    lexicon.write_text(json.dumps({"zyx": "zed why ex, the last three letters of the alphabet backwards"}))
    reloaded = http.post("/admin/reload-voices")
    assert reloaded.status_code == 200 and reloaded.json()["lexicon"] == 1
    cache, changed = _sse(http, input=text)
    assert cache == "MISS"
    assert changed["input_tokens"] > first["input_tokens"]
    # A text the entry does not touch keeps its cache entry across the change.
    lexicon.write_text(json.dumps({"zyx": "zed why ex"}))
    assert http.post("/admin/reload-voices").status_code == 200
    assert _sse(http, input=text) == ("HIT", first)


def test_a_bad_lexicon_file_is_refused_and_the_old_one_stays(http: httpx.Client, lexicon: Path) -> None:
    before = _sse(http, input="Only zyx.")
    lexicon.write_text(json.dumps({"zyx": ""}))
    try:
        refused = http.post("/admin/reload-voices")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_lexicon_file"
        assert _sse(http, input="Only zyx.") == ("HIT", before[1])
    finally:
        lexicon.write_text(json.dumps({"zyx": "zed why ex"}))
        assert http.post("/admin/reload-voices").status_code == 200


def test_request_pronunciations_override_the_server_lexicon(http: httpx.Client) -> None:
    _, plain = _sse(http, input="Say zyx and qwv.")
    cache, own = _sse(http, input="Say zyx and qwv.",
                      pronunciations={"qwv": "queue double-you vee, spelled out slowly"})  # fmt: skip
    assert cache == "MISS" and own["input_tokens"] > plain["input_tokens"]
    cache, shorter = _sse(http, input="Say zyx and qwv.", pronunciations={"zyx": "z"})
    assert cache == "MISS" and shorter["input_tokens"] < plain["input_tokens"]


@pytest.mark.parametrize(
    "pronunciations",
    [
        {"word": ""},
        {"": "x"},
        {" word": "x"},
        {"word": "a\x00b"},
        {"w" * 101: "x"},
        {f"w{i}": "x" for i in range(101)},
        ["word", "x"],
        {"word": 5},
    ],
)
def test_bad_pronunciations_are_a_400_naming_the_field(http: httpx.Client, pronunciations: object) -> None:
    _error(http.post("/v1/audio/speech", json={**SPEECH, "input": "Hi.", "pronunciations": pronunciations}),
           "pronunciations")  # fmt: skip


# -- language -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["xx", "eng", "", "english", "xx-US", 7])
def test_a_bad_language_is_a_400_naming_it(http: httpx.Client, language: object) -> None:
    response = http.post("/v1/audio/speech", json={**SPEECH, "input": "Hi.", "language": language})
    message = _error(response, "language")
    if isinstance(language, str):
        assert response.json()["error"]["code"] == "unsupported_language"
        assert "zh" in message and "en" in message  # the codes it could have used


@pytest.mark.parametrize(
    ("tag", "code"), [("EN", "en"), ("en-US", "en"), ("zh-CN", "zh"), ("ZH_hant_TW", "zh")]
)
def test_a_language_tag_in_any_case_is_its_language(http: httpx.Client, tag: str, code: str) -> None:
    text = {"zh": "你好!今天天气很好!", "en": "Hello. How are you."}[code]
    assert _steps(http, input=text, language=tag) == pytest.approx(_steps(http, input=text, language=code))


def _steps(http: httpx.Client, **fields: object) -> float:
    """Seconds of streamed pcm a request makes."""
    response = http.post("/v1/audio/speech", json={**SPEECH, "response_format": "pcm", "cache": False,
                                                   "stream": True, **fields})  # fmt: skip
    assert response.status_code == 200, response.text
    return len(response.content) / 2 / int(response.headers["x-sample-rate"])


@pytest.mark.parametrize(
    ("language", "text"),
    [("hi", "नमस्ते। आप कैसे हैं।"), ("zh", "你好!今天天气很好!")],
)
def test_language_selects_the_sentence_marks(http: httpx.Client, language: str, text: str) -> None:
    # Streamed: one segment per sentence, each 4 steps of 0.16 s on this checkpoint.
    assert _steps(http, input=text) == pytest.approx(0.64, abs=0.02)
    assert _steps(http, input=text, language=language) == pytest.approx(1.28 - 0.01, abs=0.02)


def test_language_joins_hard_wrapped_cjk_lines(http: httpx.Client) -> None:
    text = "今天天气\n很好。"
    assert _steps(http, input=text) == pytest.approx(1.27, abs=0.02)  # the line break ends a sentence
    assert _steps(http, input=text, language="zh") == pytest.approx(0.64, abs=0.02)


def test_language_is_in_the_cache_key(http: httpx.Client) -> None:
    assert _sse(http, input="Language key.")[0] == "MISS"
    assert _sse(http, input="Language key.", language="en")[0] == "MISS"
    assert _sse(http, input="Language key.", language="en")[0] == "HIT"


# -- loudness -------------------------------------------------------------------------------------------


def _lufs(response: httpx.Response) -> float:
    if response.headers["content-type"] == "audio/pcm":
        audio = np.frombuffer(response.content, "<i2") / 32768
        rate = int(response.headers["x-sample-rate"])
    else:
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float64")
    return pyloudnorm.Meter(rate).integrated_loudness(audio)


@pytest.mark.parametrize(("target", "response_format"), [(-30.0, "wav"), (-16.0, "wav"), (-20.0, "pcm")])
def test_buffered_audio_is_served_at_the_target_loudness(
    http: httpx.Client, target: float, response_format: str
) -> None:
    # pcm is 24 kHz: measured as served, after resampling (this checkpoint's noise loses 16 LU to it).
    body = {**SPEECH, "input": "How loud is this?", "response_format": response_format, "stream": False,
            "max_length": TEST_MAX_LENGTH}  # fmt: skip
    plain = http.post("/v1/audio/speech", json=body)
    loud = http.post("/v1/audio/speech", json={**body, "loudness": target})
    assert loud.status_code == 200 and loud.headers["x-cache"] == "MISS"  # its own cache entry
    assert abs(_lufs(loud) - target) <= 1.0
    assert len(loud.content) == len(plain.content)


def test_a_stream_holds_one_gain_from_its_first_chunk_to_its_last(http: httpx.Client) -> None:
    body = {**SPEECH, "input": "One. Two. Three.", "response_format": "pcm", "stream": True, "cache": False,
            "seed": 7}  # fmt: skip
    plain = np.frombuffer(http.post("/v1/audio/speech", json=body).content, "<i2").astype(np.float64)
    # A target below this checkpoint's level (about -28 LUFS at 24 kHz): a gain under 1, so nothing clips.
    loud = np.frombuffer(http.post("/v1/audio/speech", json={**body, "loudness": -36}).content, "<i2")
    assert len(plain) == len(loud) > 0
    # Where the quieter one is not near silence, every sample is the same multiple of the plain one.
    usable = np.abs(loud) > 150
    ratios = loud[usable] / plain[usable]
    assert usable.sum() > 100
    third = len(ratios) // 3
    assert abs(np.median(ratios) - 1.0) > 0.05  # a gain was applied
    assert np.median(ratios[:third]) == pytest.approx(np.median(ratios[-third:]), rel=0.01)
    assert np.percentile(np.abs(ratios / np.median(ratios) - 1), 95) < 0.02


@pytest.mark.parametrize("loudness", [-4, -51, "loud", True])
def test_a_bad_loudness_is_a_400_naming_it(http: httpx.Client, loudness: object) -> None:
    _error(http.post("/v1/audio/speech", json={**SPEECH, "input": "Hi.", "loudness": loudness}), "loudness")


# -- OpenAI's current names -----------------------------------------------------------------------------


def test_openai_current_models_and_voices_work_out_of_the_box(shaping: ServerProcess) -> None:
    client = openai.OpenAI(api_key="unused", base_url=f"{shaping.base_url}/v1", max_retries=0)
    listed = {model.id for model in client.models.list()}
    sdk_models = set(typing.get_args(openai.types.audio.SpeechModel))
    assert {"gpt-4o-mini-tts-2025-03-20", "gpt-4o-mini-tts-2025-12-15", *sdk_models} <= listed
    for model in ("gpt-4o-mini-tts-2025-03-20", "gpt-4o-mini-tts-2025-12-15"):
        audio = client.audio.speech.create(model=model, voice="cedar", input="Hi.", response_format="wav",
                                           extra_body={"max_length": 2})  # fmt: skip
        assert audio.content[:4] == b"RIFF"
    # Every voice name the SDK documents is a voice this server has.
    sdk_voices = {v for arg in typing.get_args(speech_create_params.Voice) for v in typing.get_args(arg)}
    served = {v["id"] for v in httpx.get(f"{shaping.base_url}/v1/audio/voices").json()["voices"]}
    assert len(sdk_voices) >= 13 and sdk_voices <= served


def test_sse_audio_at_a_loudness_decodes(http: httpx.Client) -> None:
    response = http.post("/v1/audio/speech", json={**SPEECH, "input": "Stream.", "stream_format": "sse",
                                                   "response_format": "pcm", "loudness": -18})  # fmt: skip
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(c["audio"]) for c in chunks if c["type"] == "speech.audio.delta")
    assert len(audio) == 2 * 15360  # 4 steps of 0.16 s at 24 kHz, 2 bytes a sample


def test_a_job_checks_its_language_too(http: httpx.Client) -> None:
    job = {**SPEECH, "input": "A job. With two sentences.", "response_format": "wav"}
    _error(http.post("/v1/audio/speech/jobs", json={**job, "language": "xx"}), "language")
    _error(http.post("/v1/audio/speech/jobs", json={**job, "pronunciations": {"a": ""}}), "pronunciations")
