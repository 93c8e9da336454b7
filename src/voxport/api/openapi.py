"""The OpenAPI document, complete: the error envelope as a component and the statuses each route really
answers, request schemas for the bodies our own parsers read (JSON, forms with recordings), and no
FastAPI-made 422 (validation failures are answered 400).

Routes declare what they answer with `errors(...)` (a router: what its access check answers) and what they
read with `json_request`, `speech_request` or `voice_upload_request`; `install_openapi` finishes the
document: request models into `components` (their `$defs` too), 422s out, HEAD answers without a body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from voxport.api.field_docs import describe
from voxport.protocol import SpeechCreateParams

_ERRORS: dict[int, str] = {
    400: "Invalid request: `param` names the field at fault (`invalid_request_error`).",
    401: "Missing or wrong API key (only when the server has API keys); `WWW-Authenticate: Bearer`.",
    403: "Not allowed: an admin route without the admin key (or from off-loopback), or a refused action.",
    404: "What the request names does not exist.",
    408: "The request body stopped arriving (`--body-read-timeout-s`); the connection is closed.",
    409: "It clashes with the server's state: a name taken, the voice library full.",
    413: "The body or upload is over its limit; the connection is closed.",
    416: "The `Range` asks for bytes past the end (`Content-Range: bytes */<size>` says the size).",
    429: "Every generation slot and queue place is taken: retry after `Retry-After` seconds.",
    499: "Cancelled through `POST /v1/audio/speech/cancel` (a buffered request).",
    503: "The engine (or ffmpeg) cannot serve now: retry after `Retry-After` seconds.",
    504: "The request ran past `--request-timeout-s`.",
}
# What reading a body can answer, whatever the route: invalid or wrong content type, stalled, too large.
BODY_ERRORS = (400, 408, 413)
_BINARY = {"type": "string", "format": "binary"}
_SCHEMAS = "#/components/schemas/"
_components: dict[str, type[BaseModel]] = {}


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: every non-2xx answer has this body."""

    error: ErrorObject


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: each status with the envelope as its (JSON) body, whatever the
    route's own media type."""
    content = {"application/json": {"schema": _ref(ErrorResponse)}}
    return {status: {"description": _ERRORS[status], "content": content} for status in statuses}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    _components[model.__name__] = model
    return {"$ref": _SCHEMAS + model.__name__}


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A `$ref` to `model` (a response body), its schema put in `components`."""
    return _ref(model)


def _body(content: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": content}}


def json_request(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra=` for a route whose body is `json_body(model)`."""
    return _body({"application/json": {"schema": _ref(model)}})


def _speech_form(with_files: bool) -> dict[str, Any]:
    """SpeechCreateParams as form fields: `voice` by id only, and a recording to clone with its transcript."""
    schema = SpeechCreateParams.model_json_schema(ref_template=_SCHEMAS + "{model}")
    properties = dict(schema["properties"])
    properties["voice"] = {"type": "string", "minLength": 1, "title": "Voice"}
    properties.pop("dialogue")  # a list of objects: JSON only
    if with_files:
        text = "The recording's transcript (only with a recording)."
        properties |= {
            "custom_voice_file": {**_BINARY, "description": "A recording to clone for this request only."},
            "speaker_wav": {**_BINARY, "description": "The same as `custom_voice_file`."},
            "prompt_text": {"type": "string", "maxLength": 1000, "description": text},
        }
    return {"type": "object", "properties": properties, "required": schema["required"],
            "additionalProperties": False}  # fmt: skip


def speech_request() -> dict[str, Any]:
    """JSON; or a form with the same fields (values as strings, converted leniently) plus a recording."""
    return _body({
        "application/json": {"schema": _ref(SpeechCreateParams)},
        "multipart/form-data": {"schema": _speech_form(with_files=True)},
        "application/x-www-form-urlencoded": {"schema": _speech_form(with_files=False)},
    })  # fmt: skip


def voice_upload_request() -> dict[str, Any]:
    properties = {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "consent": {"type": "string", "description": "A consent id (`cons_...`, from "
                    "/v1/audio/voice_consents), or truthy (`true`, `yes`, `1`, ...): you have the speaker's "
                    "permission."},
        "audio_sample": {**_BINARY, "description": "The recording, 1 to 30 s."},
        "file": {**_BINARY, "description": "The same as `audio_sample`."},
        "prompt_text": {"type": "string", "description": "The recording's transcript."},
    }  # fmt: skip
    schema = {"type": "object", "properties": properties, "required": ["name", "consent"]}
    return _body({"multipart/form-data": {"schema": schema}})


def consent_request() -> dict[str, Any]:
    properties = {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "language": {"type": "string", "description": "The recording's language, BCP 47 (`en`, `en-US`)."},
        "recording": {**_BINARY, "description": "The speaker saying they consent, 1 to 30 s."},
    }
    schema = {"type": "object", "properties": properties, "required": ["name", "language", "recording"]}
    return _body({"multipart/form-data": {"schema": schema}})


def _complete(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model in _components.items():
        model_schema = model.model_json_schema(ref_template=_SCHEMAS + "{model}")
        components.update(model_schema.pop("$defs", {}))
        components[name] = model_schema
    for operations in schema["paths"].values():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)
            operation["responses"] = dict(sorted(responses.items()))
            if method == "head":  # never a body
                for response in responses.values():
                    response.pop("content", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    describe(schema)


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _complete(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
