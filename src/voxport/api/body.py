"""Request bodies: a JSON object validated by a protocol model, or a form (multipart or urlencoded) with
the same fields plus a recording. Each parser is a dependency that answers 400/413 naming the field."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, UploadFile
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from voxport.api.deps import SettingsDep
from voxport.api.errors import validation_error
from voxport.config import Settings
from voxport.errors import VoxportError, invalid
from voxport.protocol import (
    PromptText,
    SpeechCreateParams,
    VoiceConsentCreateParams,
    VoiceCreateParams,
    VoiceUpload,
)

M = TypeVar("M", bound=BaseModel)
_SPEECH_FILES = ("custom_voice_file", "speaker_wav")  # the first one present wins
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    # No Content-Type at all is read as JSON: a client that says nothing has said nothing wrong.
    return media_type in ("", "application/json") or media_type.endswith("+json")


def _is_form(request: Request) -> bool:
    return _media_type(request) in _FORMS


def _wrong_media_type(media_type: str, accepted: str) -> VoxportError:
    message = f"Content-Type '{media_type}' is not accepted here; send {accepted}."
    return invalid(message, None, "unsupported_media_type")


async def _refuse_json_as_form(request: Request) -> None:
    """`curl -d '{...}'` without a content type sends the JSON form-encoded: say so, not "missing model"."""
    if _media_type(request) == "application/x-www-form-urlencoded":
        raw = (await request.body()).lstrip()  # Starlette keeps it: the form parser reads it again
        if raw.startswith((b"{", b"[")):
            message = "The body looks like JSON but was sent form-encoded"
            raise invalid(f"{message}: send `Content-Type: application/json`.", None, "invalid_body")


def json_body(model: type[M]) -> Callable[[Request], Coroutine[Any, Any, M]]:
    """A dependency: the body as a JSON object validated strictly by `model` (no coercion of strings or
    numbers into booleans or integers). JSON nested too deep or with a huge number is invalid JSON."""

    async def parse(request: Request) -> M:
        await _refuse_json_as_form(request)
        if not _is_json(_media_type(request)):
            raise _wrong_media_type(_media_type(request), "`Content-Type: application/json`")
        raw = await request.body()
        if not raw.strip():
            raise invalid("The request body is empty; send a JSON object.", None, "invalid_body")
        try:  # a large body (a batch: up to tens of MiB) is parsed off the event loop
            data = from_json(raw, allow_inf_nan=False) if len(raw) < 2**20 else await asyncio.to_thread(
                from_json, raw, allow_inf_nan=False)  # fmt: skip
        except ValueError as exc:  # also: nesting deeper than 200, a number beyond 4300 digits
            raise invalid(f"The request body is not valid JSON: {exc}.", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise invalid("The request body must be a JSON object.", None, "invalid_body")
        return _validate(model, data, strict=True)

    return parse


def query(model: type[M]) -> Callable[[Request], Coroutine[Any, Any, M]]:
    """A dependency: the query string validated by `model` (400 naming the parameter)."""

    async def parse(request: Request) -> M:
        return _validate(model, dict(request.query_params))

    return parse


def _validate(model: type[M], data: dict[str, Any], strict: bool = False) -> M:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _too_large(settings: Settings, what: str, param: str | None = None) -> VoxportError:
    message = f"{what} exceeds the {settings.max_upload_mb:g} MiB upload limit."
    return VoxportError("too_large", message, param=param, code="file_too_large")


async def _form(request: Request, settings: Settings) -> tuple[dict[str, str], dict[str, UploadFile], int]:
    cap = int(settings.max_upload_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + 2**20:  # refused before it is read
        raise _too_large(settings, "The request body")
    try:
        form = await request.form(max_files=4, max_fields=40)
    except Exception as exc:  # malformed multipart
        raise invalid(f"The multipart body cannot be parsed: {exc}.", None, "invalid_body") from None
    fields: dict[str, str] = {}
    files: dict[str, UploadFile] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile) or hasattr(value, "read"):
            files[name] = value  # type: ignore[assignment]
        else:
            fields[name] = value
    return fields, files, cap


async def _read(files: dict[str, UploadFile], param: str, cap: int, settings: Settings,
                transcript: str | None) -> VoiceUpload:  # fmt: skip
    data = await files[param].read(cap + 1)
    if len(data) > cap:
        raise _too_large(settings, f"'{param}'", param)
    if not data:
        raise invalid(f"'{param}' is empty.", param, "invalid_audio")
    return VoiceUpload(data, transcript, param)


_speech_json = json_body(SpeechCreateParams)


@dataclass(frozen=True)
class SpeechBody:
    params: SpeechCreateParams
    upload: VoiceUpload | None = None  # a recording to clone for this request only


async def _speech_body(request: Request) -> SpeechBody:
    # No sub-dependency: this runs on every speech request, cache hits included, and each one costs.
    if not _is_form(request):
        if not _is_json(_media_type(request)):
            raise _wrong_media_type(_media_type(request), "application/json, or multipart/form-data")
        return SpeechBody(await _speech_json(request))
    settings: Settings = request.app.state.settings
    await _refuse_json_as_form(request)
    fields, files, cap = await _form(request, settings)
    transcript = _validate(PromptText, {"prompt_text": fields.pop("prompt_text", None)}).prompt_text or None
    unknown = sorted(set(files) - set(_SPEECH_FILES))
    if unknown:
        raise invalid(f"Unrecognized file field '{unknown[0]}'.", unknown[0], "unknown_parameter")
    params = _validate(SpeechCreateParams, fields)
    param = next((n for n in _SPEECH_FILES if n in files), None)
    if param is None:
        if transcript:
            raise invalid("'prompt_text' needs a recording in 'custom_voice_file'.", "prompt_text")
        return SpeechBody(params)
    return SpeechBody(params, await _read(files, param, cap, settings, transcript))


@dataclass(frozen=True)
class VoiceForm:
    params: VoiceCreateParams
    upload: VoiceUpload


async def _voice_form(request: Request, settings: SettingsDep) -> VoiceForm:
    """Multipart: VoiceCreateParams' fields (the checks the JSON route shares) and audio_sample (or file)."""
    if not _is_form(request):
        raise invalid(
            "Send multipart/form-data with 'name', 'audio_sample' and 'consent'.", None, "invalid_body"
        )
    fields, files, cap = await _form(request, settings)
    params = _validate(VoiceCreateParams, fields)
    param = next((n for n in ("audio_sample", "file") if n in files), None)
    if param is None:
        raise invalid("Missing required file: 'audio_sample'.", "audio_sample", "missing_required_parameter")
    return VoiceForm(params, await _read(files, param, cap, settings, params.prompt_text or None))


@dataclass(frozen=True)
class ConsentForm:
    params: VoiceConsentCreateParams
    upload: VoiceUpload


async def _consent_form(request: Request, settings: SettingsDep) -> ConsentForm:
    """Multipart: name, language, and the consent recording in `recording`."""
    if not _is_form(request):
        message = "Send multipart/form-data with 'name', 'language' and 'recording'."
        raise invalid(message, None, "invalid_body")
    fields, files, cap = await _form(request, settings)
    params = _validate(VoiceConsentCreateParams, fields)
    if "recording" not in files:
        raise invalid("Missing required file: 'recording'.", "recording", "missing_required_parameter")
    return ConsentForm(params, await _read(files, "recording", cap, settings, None))


SpeechBodyDep = Annotated[SpeechBody, Depends(_speech_body)]
VoiceFormDep = Annotated[VoiceForm, Depends(_voice_form)]
ConsentFormDep = Annotated[ConsentForm, Depends(_consent_form)]
