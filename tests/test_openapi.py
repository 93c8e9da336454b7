"""The OpenAPI document is complete and resolvable, and /docs and /redoc work with no network."""

from __future__ import annotations

import json
import re
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture(scope="module")
async def spec(http: httpx.AsyncClient) -> dict:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(spec: dict):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield f"{method.upper()} {path}", operation


def _refs(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


async def test_every_reference_resolves_inside_the_document(spec: dict) -> None:
    refs = _refs(spec)
    assert "#/components/schemas/VoiceID" in refs  # once `#/$defs/VoiceID`, which resolved nowhere
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"], ref


async def test_no_phantom_422(spec: dict) -> None:
    assert "422" not in json.dumps([op["responses"] for _, op in _operations(spec)])
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_the_error_envelope_is_a_component(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorResponse"]["required"] == ["error"]
    assert set(schemas["ErrorObject"]["properties"]) == {"message", "type", "param", "code"}


EXPECTED_ERRORS = {
    "POST /v1/audio/speech": {400, 401, 404, 408, 413, 429, 499, 503, 504},
    "POST /v1/audio/speech/stream": {400, 401, 404, 408, 413, 429, 499, 503, 504},
    "POST /v1/audio/speech/cancel": {400, 401, 404, 408, 413},
    "GET /v1/audio/voices": {401},
    "POST /v1/audio/voices": {400, 401, 408, 409, 413, 503},
    "GET /v1/voices": {401},
    "POST /v1/voices": {400, 401, 403, 408, 409, 413, 503},
    "DELETE /v1/audio/voices/{voice_id}": {401, 403, 404, 503},
    "POST /v1/audio/voice_consents": {400, 401, 408, 413, 503},
    "GET /v1/audio/voice_consents": {400, 401},
    "GET /v1/audio/voice_consents/{consent_id}": {401, 404},
    "POST /v1/audio/voice_consents/{consent_id}": {400, 401, 404, 408, 413, 503},
    "DELETE /v1/audio/voice_consents/{consent_id}": {401, 403, 404, 503},
    "GET /v1/audio/voice_aliases": {401, 403},
    "PUT /v1/audio/voice_aliases/{name}": {400, 401, 403, 408, 409, 413},
    "DELETE /v1/audio/voice_aliases/{name}": {401, 403, 404},
    "POST /v1/audio/speech/jobs": {400, 401, 404, 408, 409, 413, 429, 503, 504},
    "GET /v1/audio/speech/jobs": {400, 401, 503},
    "GET /v1/audio/speech/jobs/{job_id}": {401, 404, 503},
    "GET /v1/audio/speech/jobs/{job_id}/content": {400, 401, 404, 409, 416, 503},
    "HEAD /v1/audio/speech/jobs/{job_id}/content": {400, 401, 404, 409, 416, 503},
    "GET /v1/audio/speech/jobs/{job_id}/captions": {400, 401, 404, 409, 503},
    "POST /v1/audio/speech/jobs/{job_id}/cancel": {401, 404, 409, 503},
    "DELETE /v1/audio/speech/jobs/{job_id}": {401, 404, 409, 503},
    "POST /v1/audio/speech/batches": {400, 401, 404, 408, 409, 413, 429, 503, 504},
    "GET /v1/audio/speech/batches/{batch_id}": {401, 404, 503},
    "GET /v1/models": {401},
    "GET /v1/models/{model_id}": {401, 404},
    "GET /health": set(),
    "HEAD /health": set(),
    "GET /ready": {503},
    "GET /metrics": {401},
    "POST /admin/reload-voices": {400, 401, 403, 503},
    "POST /admin/cache/clear": {401, 403},
    "GET /v1/audio/pronunciation_dictionaries": {401, 403},
    "PUT /v1/audio/pronunciation_dictionaries/{name}": {400, 401, 403, 408, 413},
    "GET /v1/audio/pronunciation_dictionaries/{name}": {401, 403, 404},
    "DELETE /v1/audio/pronunciation_dictionaries/{name}": {401, 403, 404},
}


async def test_each_route_documents_the_errors_it_answers(spec: dict) -> None:
    documented = {}
    for name, operation in _operations(spec):
        errors = {int(s): r for s, r in operation["responses"].items() if int(s) >= 400}
        for response in errors.values() if not name.startswith("HEAD ") else ():  # HEAD: headers alone
            assert response["content"]["application/json"]["schema"] == ENVELOPE, name
        documented[name] = set(errors)
    assert documented == EXPECTED_ERRORS


async def test_request_bodies_are_described(spec: dict) -> None:
    paths = spec["paths"]
    for path in ("/v1/audio/speech", "/v1/audio/speech/stream"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/SpeechCreateParams"}
        form = content["multipart/form-data"]["schema"]["properties"]
        assert {"model", "input", "custom_voice_file", "speaker_wav", "prompt_text"} <= set(form)
        assert form["custom_voice_file"]["format"] == "binary"
    upload = paths["/v1/audio/voices"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"name", "consent", "audio_sample"} <= set(upload["properties"])
    json_routes = (("/v1/audio/speech/cancel", "SpeechCancelParams"), ("/v1/voices", "VoiceFromPathParams"))
    for path, model in json_routes:
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}


async def test_metrics_are_text_plain(spec: dict, http: httpx.AsyncClient) -> None:
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert (await http.get("/metrics")).headers["content-type"].startswith("text/plain")


async def test_operation_ids_are_unique(spec: dict) -> None:
    ids = [operation["operationId"] for _, operation in _operations(spec)]
    assert len(ids) == len(set(ids))


_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_and_their_assets_are_served_locally(http: httpx.AsyncClient, page: str) -> None:
    response = await http.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = [a or b for a, b in _URL.findall(html)]
    assert len(urls) >= 3, html  # the script, the favicon, the document (and Swagger's stylesheet)
    assert not re.search(r"https?://|//cdn", html), "the page names another host"
    for url in urls:
        absolute = urljoin(f"http://voxport.test{page}", url)
        assert urlsplit(absolute).netloc == "voxport.test", url
        asset = await http.get(absolute)
        assert asset.status_code == 200, url
        assert asset.content
    if page == "/docs":
        assert '"validatorUrl": null' in html  # else Swagger UI loads a badge from validator.swagger.io
