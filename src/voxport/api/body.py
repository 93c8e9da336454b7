"""Request bodies: a JSON object validated by a protocol model, or a form (multipart or urlencoded) with
the same fields plus a recording. Each parser is a dependency that answers 400/413 naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, UploadFile
from pydantic import BaseModel, ValidationError

from voxport.api.deps import SettingsDep
from voxport.api.errors import validation_error
from voxport.config import Settings
from voxport.errors import VoxportError, invalid
from voxport.protocol import SpeechCreateParams, VoiceUpload

M = TypeVar("M", bound=BaseModel)
_SPEECH_FILES = ("custom_voice_file", "speaker_wav")  # the first one present wins
_TRUTHY = {"1", "true", "yes", "on", "y", "t"}


def json_body(model: type[M]) -> Callable[[Request], Coroutine[Any, Any, M]]:
    """A dependency: the body as a JSON object validated by `model`."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        if not raw.strip():
            raise invalid("The request body is empty; send a JSON object.", None, "invalid_body")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise invalid(f"The request body is not valid JSON: {exc}.", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise invalid("The request body must be a JSON object.", None, "invalid_body")
        return _validate(model, data)

    return parse


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _is_form(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))


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


@dataclass(frozen=True)
class SpeechBody:
    params: SpeechCreateParams
    upload: VoiceUpload | None = None  # a recording to clone for this request only


async def _speech_body(request: Request, settings: SettingsDep) -> SpeechBody:
    if not _is_form(request):
        return SpeechBody(await json_body(SpeechCreateParams)(request))
    fields, files, cap = await _form(request, settings)
    transcript = fields.pop("prompt_text", None) or None
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
    name: str
    upload: VoiceUpload


async def _voice_form(request: Request, settings: SettingsDep) -> VoiceForm:
    """Multipart: name, audio_sample (or file), optional prompt_text, consent (required, truthy)."""
    if not _is_form(request):
        raise invalid(
            "Send multipart/form-data with 'name', 'audio_sample' and 'consent'.", None, "invalid_body"
        )
    fields, files, cap = await _form(request, settings)
    name = fields.get("name", "").strip()
    if not name or len(name) > 100:
        raise invalid("'name' is required (1 to 100 characters).", "name")
    if fields.get("consent", "").strip().lower() not in _TRUTHY:
        raise invalid(
            "'consent' must be true: confirm you have the speaker's permission.",
            "consent",
            "consent_required",
        )
    param = next((n for n in ("audio_sample", "file") if n in files), None)
    if param is None:
        raise invalid("Missing required file: 'audio_sample'.", "audio_sample", "missing_required_parameter")
    transcript = fields.get("prompt_text", "").strip() or None
    return VoiceForm(name, await _read(files, param, cap, settings, transcript))


SpeechBodyDep = Annotated[SpeechBody, Depends(_speech_body)]
VoiceFormDep = Annotated[VoiceForm, Depends(_voice_form)]
