"""Strict parsing through HTTP: each case here once got a 500, a silent coercion, or a misleading 400."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from voxport.app import create_app

SPEECH = {"model": "tts-1", "input": "Hello.", "response_format": "pcm", "cache": False}


def _error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.fixture(scope="module")
async def paths_app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server that reads recordings from a directory (POST /v1/voices), where NUL once reached open()."""
    allowed = tmp_path_factory.mktemp("allowed")
    settings = make_settings(tiny_model, tmp_path_factory.mktemp("data"), allowed_prompt_dir=allowed)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://voxport.test") as client:
            yield client


# -- content types -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml"])
@pytest.mark.parametrize("route", ["/v1/audio/speech", "/v1/audio/speech/stream", "/v1/audio/speech/cancel"])
async def test_json_under_another_content_type_is_refused_naming_it(
    http: httpx.AsyncClient, route: str, content_type: str
) -> None:
    body = json.dumps({**SPEECH} if "cancel" not in route else {"request_id": "r1"})
    error = _error(await http.post(route, content=body, headers={"content-type": content_type}))
    assert error["code"] == "unsupported_media_type"
    assert content_type in error["message"] and "application/json" in error["message"]


async def test_json_sent_form_encoded_says_send_the_json_content_type(http: httpx.AsyncClient) -> None:
    """What `curl -d '{...}'` without `-H content-type` sends."""
    body = json.dumps(SPEECH)
    for route in ("/v1/audio/speech", "/v1/audio/speech/cancel"):
        response = await http.post(
            route, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        error = _error(response)
        assert "Content-Type: application/json" in error["message"]
        assert "Missing required parameter" not in error["message"]


async def test_json_with_parameters_or_without_a_content_type_is_json(http: httpx.AsyncClient) -> None:
    for headers in ({"content-type": "application/json; charset=utf-8"}, {}):
        response = await http.post("/v1/audio/speech", content=json.dumps(SPEECH), headers=headers)
        assert response.status_code == 200, response.text


# -- values --------------------------------------------------------------------------------------------


async def test_an_empty_voice_is_refused_naming_voice(http: httpx.AsyncClient) -> None:
    for voice in ("", {"id": ""}):
        response = await http.post("/v1/audio/speech", json={**SPEECH, "voice": voice})
        assert _error(response)["param"] == "voice"


@pytest.mark.parametrize(
    "field,value",
    [("normalize", 0), ("stream", "yes"), ("cache", "false"), ("seed", "5"), ("seed", 5.0),
     ("max_length", True), ("speed", "1.0"), ("sample_rate", "24000")],
)  # fmt: skip
async def test_json_types_are_not_coerced(http: httpx.AsyncClient, field: str, value) -> None:
    error = _error(await http.post("/v1/audio/speech", json={**SPEECH, field: value}))
    assert error["param"] == field


async def test_form_fields_are_strings_and_keep_lax_conversion(http: httpx.AsyncClient) -> None:
    form = {k: str(v).lower() for k, v in SPEECH.items()} | {"seed": "5", "normalize": "0", "stream": "no"}
    response = await http.post("/v1/audio/speech", data=form)
    assert response.status_code == 200, response.text


async def test_json_nested_too_deep_is_a_400_naming_the_body(http: httpx.AsyncClient) -> None:
    deep = '{"model": "tts-1", "input": "x", "voice": ' + "[" * 5000 + "]" * 5000 + "}"
    error = _error(await http.post("/v1/audio/speech", content=deep))
    assert error["code"] == "invalid_json" and error["param"] is None
    assert "body" in error["message"]


async def test_a_5000_digit_integer_is_a_400_naming_the_body(http: httpx.AsyncClient) -> None:
    for route, field in (("/v1/audio/speech", "seed"), ("/v1/audio/speech/cancel", "request_id")):
        raw = f'{{"model": "tts-1", "input": "x", "{field}": {"9" * 5000}}}'
        error = _error(await http.post(route, content=raw, headers={"content-type": "application/json"}))
        assert error["code"] == "invalid_json" and "body" in error["message"]


async def test_nan_and_infinity_are_not_json(http: httpx.AsyncClient) -> None:
    raw = '{"model": "tts-1", "input": "x", "cfg_value": NaN}'
    assert _error(await http.post("/v1/audio/speech", content=raw))["code"] == "invalid_json"


# -- control characters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [("input", "a\x00b"), ("input", "a\x07b"), ("instructions", "calm\x1b[31m"), ("model", "tts-1\x00"),
     ("voice", "alloy\x00"), ("voice", {"id": "al\nloy"})],
)  # fmt: skip
async def test_control_characters_are_refused_per_field(http: httpx.AsyncClient, field: str, value) -> None:
    error = _error(await http.post("/v1/audio/speech", json={**SPEECH, field: value}))
    assert error["param"] == field and "control character" in error["message"]


async def test_text_may_hold_tabs_and_line_breaks(http: httpx.AsyncClient) -> None:
    body = {**SPEECH, "input": "One line.\r\nAnother\tline.", "instructions": "calm\nslow"}
    assert (await http.post("/v1/audio/speech", json=body)).status_code == 200


async def test_a_nul_in_a_form_field_is_refused(http: httpx.AsyncClient) -> None:
    files = {"audio_sample": ("a.wav", b"RIFF")}
    response = await http.post("/v1/audio/voices", data={"name": "a\x00b", "consent": "true"}, files=files)
    assert _error(response)["param"] == "name"
    form = {**{k: str(v).lower() for k, v in SPEECH.items()}, "prompt_text": "a\x00b"}
    response = await http.post("/v1/audio/speech", data=form, files={"custom_voice_file": ("a.wav", b"RIFF")})
    assert _error(response)["param"] == "prompt_text"


@pytest.mark.parametrize("field", ["prompt_wav_path", "voice_name", "prompt_text"])
async def test_a_nul_in_a_voice_from_path_is_a_400(paths_app: httpx.AsyncClient, field: str) -> None:
    body = {"voice_name": "me", "prompt_wav_path": "me.wav", "prompt_text": "A tone."}
    response = await paths_app.post("/v1/voices", json={**body, field: "me\x00.wav"})
    assert _error(response)["param"] == field


async def test_a_cancel_id_with_a_control_character_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/audio/speech/cancel", json={"request_id": "r\x00"})
    assert _error(response)["param"] == "request_id"


# -- methods -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,allow",
    [("PUT", "/v1/audio/voices", "GET, POST"), ("DELETE", "/v1/voices", "GET, POST"),
     ("GET", "/v1/audio/speech", "POST"), ("GET", "/v1/audio/voices/x", "DELETE"),
     ("POST", "/health", "GET, HEAD")],
)  # fmt: skip
async def test_405_lists_every_method_of_the_path(http: httpx.AsyncClient, method, path, allow) -> None:
    response = await http.request(method, path)
    assert _error(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"] == allow
